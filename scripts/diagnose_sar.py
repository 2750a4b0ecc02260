#!/usr/bin/env python
"""What SAR's retrieval actually does during a run: one in-process ``hf-budgetcl run`` with SAR's draw observed.

Every ``--every`` retrievals after SAR's warm-up it records, from the state the draw used:

* how the own-count term ``(1 - S_ii) u_i`` and the class term ``sum_c S_{y_i c} U_c`` of ``c_hat_i`` compare (mean
  absolute size over slots), and the share of slots whose ``c_hat`` the reference clamp ``max(0, .)`` sets to 0;
* the diagonal and off-diagonal means of the class similarity ``S`` over the classes in memory;
* the effective number of slots the draw spreads over, ``exp(H(p)) / |M|`` (1 = uniform), for the batch's first
  pick (the batch is drawn without replacement);
* the share of the batch from the class introduced last (first arrival latest) against its share of memory (> 1: the
  draw favours it);
* the mean stream position of the drawn samples against that of memory (> 0: the draw favours recent samples).

    python scripts/diagnose_sar.py -- --config recipes/configs/fashion_mnist_er.yaml --method sar \
        --per_class_train 200 --per_class_test 100 --memory_size 200 --output_dir /tmp/diag_sar

Everything after ``--`` is passed to ``hf-budgetcl run`` (it must name ``--output_dir``). The observed run is one
process of the harness's ``run_grid`` (this script again, with ``--observe``), so a finished run with the same
arguments is reused; it leaves ``diagnose_sar.json`` (the records and the run's results) in its output directory.
Prints the table or, with ``--output docs/results/sar_diagnosis.md``, writes it next to its raw
``sar_diagnosis.json``; ``--table_only`` rebuilds it from that alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hf_budgetcl.compare.observed import observed_main
from hf_budgetcl.compare.tables import markdown_table

SCRIPT = "scripts/diagnose_sar.py"


def observe(records: list[dict], every: int):
    """Wrap ``SAR.retrieve`` so that every ``every``-th draw after warm-up is described in ``records``."""
    from hf_budgetcl.methods.retrieval_math import (
        effective_use_frequency,
        retrieval_probabilities,
    )
    from hf_budgetcl.methods.sar import SAR

    original = SAR.retrieve
    calls = {"n": 0}

    def retrieve(self, memory, n, rng, samples_seen):
        slots = original(self, memory, n, rng, samples_seen)
        calls["n"] += 1
        if samples_seen < self.warmup_samples or calls["n"] % every:
            return slots
        # retrieve() decays the counts before drawing and the sampler adds this draw's uses only afterwards
        # (on_retrieved): the state here is the one the draw used.
        y = np.asarray(memory.labels, dtype=np.int64)
        u = np.asarray(memory.use_counts, dtype=np.float64)
        U, S = self.class_counts, self.S
        own = (1.0 - np.diag(S)[y]) * u
        sim = (S @ U)[y]
        c_hat = effective_use_frequency(u, y, U, S, paper_compat=self.scale_by_memory)
        p = retrieval_probabilities(c_hat, self.temperature)
        entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
        arrival = SAR._arrival[np.asarray(memory.indices)]  # stream position of every stored sample
        present = np.unique(y)
        newest = present[np.argmax(SAR._first_arrival[present])]  # the class introduced last
        Sp = S[np.ix_(present, present)]
        off = Sp[~np.eye(len(Sp), dtype=bool)] if len(Sp) > 1 else np.zeros(1)
        records.append(
            {
                "samples_seen": int(samples_seen),
                "own_count_term": float(np.abs(own).mean()),
                "class_term": float(np.abs(sim).mean()),
                "clamped_share": float(np.mean((own + sim) < 0)) if self.scale_by_memory else float("nan"),
                "S_diag": float(np.diag(S)[present].mean()),
                "S_offdiag": float(off.mean()),
                "effective_slots": float(np.exp(entropy) / len(y)),
                "newest_class_lift": float(np.mean(y[slots] == newest) / max(np.mean(y == newest), 1e-9)),
                "recency_shift": float(np.mean(arrival[slots]) - np.mean(arrival)),
            }
        )
        return slots

    SAR.retrieve = retrieve


def observed_run(every: int, run_args: list[str]) -> None:
    """The ``--observe`` process: run ``hf-budgetcl run <run_args>`` here with SAR's draw observed."""
    records: list[dict] = []
    observe(records, every)

    from hf_budgetcl.methods.sar import SAR
    from hf_budgetcl.runs import image_classification

    # Stream position of every dataset index, for the recency column (set once the stream exists).
    make_stream = image_classification.make_stream

    def make_stream_and_positions(config, train, data_args):
        stream = make_stream(config, train, data_args)
        arrival = np.full(len(train), np.nan)
        arrival[np.asarray(stream.indices)] = np.arange(len(stream.indices))
        SAR._arrival = arrival
        labels = np.asarray(stream.labels)
        SAR._first_arrival = np.array([np.argmax(labels == c) for c in range(int(labels.max()) + 1)])
        return stream

    image_classification.make_stream = make_stream_and_positions
    trainer = image_classification.run(run_args)
    out = Path(trainer.args.output_dir)
    results = json.loads((out / "results.json").read_text())
    (out / "diagnose_sar.json").write_text(json.dumps({"records": records, "results": results}, indent=1))


def table(params: dict, runs: list[dict]) -> str:
    records, results = runs[0]["records"], runs[0]["results"]
    keys = list(records[0]) if records else []
    cells = [[f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in records]
    lines = [
        f"`{results['method']}` on a {results['stream']['kind'] if isinstance(results.get('stream'), dict) else ''} "
        f"stream, {results['memory_slots']} memory slots, batch {results['batch_size']}, seed {results['seed']}: "
        f"A_AUC {100 * results['A_auc']:.2f}, A_last {100 * results['A_last']:.2f}. One row every {params['every']} "
        "draws after SAR's warm-up; columns as in the script's docstring.",
        "",
        *markdown_table(keys, cells),
        "",
        f"Command: `{params['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    return observed_main(__doc__, SCRIPT, NAME, table, observed_run, every=25, every_help="describe every n-th draw")


NAME = "diagnose_sar.json"

if __name__ == "__main__":
    sys.exit(main())
