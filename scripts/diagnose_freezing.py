#!/usr/bin/env python
"""Why aL's freezing decisions are all or nothing: the criterion's terms on the real batches of one run.

One in-process ``hf-budgetcl run`` (a process of the harness's ``run_grid``, this script again with ``--observe``)
with :meth:`AdaptiveFreezingCallback.decide` observed: every step's informativeness ``s_b`` and decision ``n``; every
``--every`` steps (and the last) the Fisher traces ``F_i``, the measured backward saved per block ``BF_i`` and the
step's cost. From those the table gives, per block, ``F_j / BF_j``, ``I_n``, ``C_n = forward + BWD(n)`` and
``log(I_n / C_n)``, the prefixes the criterion can reach at all
(:func:`~hf_budgetcl.freezing.criterion.reachable_prefixes`), and the ``s_b`` below which it freezes everything.

    python scripts/diagnose_freezing.py --output docs/results/freezing_decisions.md -- \\
        --config recipes/configs/digits_er.yaml --model_name_or_path fmd5_resnet --freeze adaptive \\
        --output_dir out/diagnose_freezing/digits

Everything after ``--`` goes to ``hf-budgetcl run`` (it must name ``--output_dir``); ``--table_only`` rebuilds the
table from its raw JSON.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from hf_budgetcl.compare.observed import observed_main
from hf_budgetcl.compare.tables import markdown_table

SCRIPT = "scripts/diagnose_freezing.py"
NAME = "diagnose_freezing.json"


def observed_run(every: int, run_args: list[str]) -> None:
    from hf_budgetcl.cli import recipe_runner
    from hf_budgetcl.freezing import adaptive
    from hf_budgetcl.runs.yaml_config import recipe_of

    steps: list[dict] = []
    snapshots: list[dict] = []
    decide, informativeness = adaptive.AdaptiveFreezingCallback.decide, adaptive.batch_informativeness
    last_s_b = {}

    def observed_informativeness(*args, **kwargs):
        s_b, m = informativeness(*args, **kwargs)
        last_s_b["value"] = s_b
        return s_b, m

    def observed_decide(self, model, inputs, outputs, cost):
        n = decide(self, model, inputs, outputs, cost)
        steps.append({"step": self.steps, "n": n, "s_b": last_s_b.get("value", float("nan"))})
        if self.steps % every == 0:
            snapshots.append(
                {
                    "step": self.steps,
                    "fisher": self.fisher.tolist(),
                    "bwd_saved": list(cost.backward_saved_per_block),
                    "forward": cost.forward,
                    "backward_by_prefix": list(cost.backward_by_prefix),
                    "blocks": list(self.blocks.names),
                    "max_frozen": self.blocks.max_frozen,
                }
            )
        return n

    adaptive.batch_informativeness = observed_informativeness
    adaptive.AdaptiveFreezingCallback.decide = observed_decide
    trainer = recipe_runner(recipe_of(run_args))(run_args)  # either recipe: an image or a VLM stream
    out = Path(trainer.args.output_dir)
    results = json.loads((out / "results.json").read_text())
    settings = trainer.freezing.describe()
    (out / NAME).write_text(
        json.dumps({"steps": steps, "snapshots": snapshots, "results": results, "settings": settings}, indent=1)
    )


def table(params: dict, runs: list[dict]) -> str:
    from hf_budgetcl.freezing.criterion import reachable_prefixes

    run = runs[0]
    steps, snaps, results, settings = run["steps"], run["snapshots"], run["results"], run["settings"]
    hist = Counter(s["n"] for s in steps)
    last = snaps[-1]
    F, BF = np.array(last["fisher"]), np.array(last["bwd_saved"])
    bwd = np.array(last["backward_by_prefix"])
    L = F.size
    inform = np.concatenate([np.cumsum(F[::-1])[::-1], [0.0]])
    cost = last["forward"] + bwd
    top = last.get("max_frozen", L)  # L - 1 when no head trains
    # BFC_top = R* Q_top - s_b G_top > BFC_0 = 0: the s_b under which freezing all it can beats freezing nothing
    lost = F[:top].sum()  # 0 when nothing can be frozen
    threshold = np.max(inform[: top + 1] / cost[: top + 1]) * (bwd[0] - bwd[top]) / lost if lost > 0 else 0.0
    freeze_all, sub = ("freeze all", "L") if top == L else (f"freezing all {top} freezable blocks", str(top))
    lines = [
        f"`{results['method']}` with `--freeze adaptive` ({settings['mode']}; fisher_ema {settings['fisher_ema']}, "
        f"informativeness_ema {settings['informativeness_ema']}), seed {results['seed']}, {results['iterations']} "
        f"steps: A_AUC {100 * results['A_auc']:.2f}. Decisions (frozen blocks: steps): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(hist.items()))
        + ".",
        "",
        f"Per block at step {last['step']} (FLOPs of the batch as measured; I_n, C_n for the prefix n = the row's "
        "index frozen):",
        "",
    ]
    rows = [
        [
            n,
            last["blocks"][n]
            if n < L
            else ("(head only trains)" if last.get("max_frozen", L) == L else "(none trains)"),
            f"{F[n]:.4g}" if n < L else "",
            f"{BF[n] / 1e6:.2f}" if n < L else "",
            f"{1e9 * F[n] / BF[n]:.3g}" if n < L and BF[n] > 0 else "",
            f"{inform[n]:.4g}",
            f"{cost[n] / 1e6:.2f}",
            f"{np.log(inform[n] / cost[n]):.3f}" if inform[n] > 0 else "-inf",
        ]
        for n in range(L + 1)
    ]
    lines += markdown_table(
        ["n", "block", "F_n", "BF_n (MFLOPs)", "F_n / BF_n × 1e9", "I_n", "C_n (MFLOPs)", "log I_n/C_n"], rows
    )
    frozen = [s for s in steps if s["n"] > 0]
    sb = np.array([s["s_b"] for s in steps if np.isfinite(s["s_b"])])
    lines += [
        "",
        "Over the run, every " + str(params["every"]) + " steps:",
        "",
        *markdown_table(
            ["step", "argmax_n I_n/C_n", "reachable prefixes", "F_j / BF_j × 1e9 (j = 0..L-1)"],
            [
                [
                    s["step"],
                    int(
                        np.argmax(
                            np.concatenate([np.cumsum(np.array(s["fisher"])[::-1])[::-1], [0.0]])
                            / (s["forward"] + np.array(s["backward_by_prefix"]))
                        )
                    ),
                    ", ".join(map(str, reachable_prefixes(s["fisher"], s["bwd_saved"], s.get("max_frozen")))),
                    ", ".join(f"{1e9 * f / b:.3g}" for f, b in zip(s["fisher"], s["bwd_saved"])),
                ]
                for s in snaps
            ],
        ),
        "",
        f"At step {last['step']}, {freeze_all} beats freeze nothing when s_b < R* Q_{sub} / G_{sub} = {threshold:.3f}; "
        "s_b quantiles 5/25/50/75/95 %: "
        + ", ".join(f"{q:.3g}" for q in np.quantile(sb, [0.05, 0.25, 0.5, 0.75, 0.95]))
        + f"; s_b below the threshold on {100 * np.mean(sb < threshold):.1f}% of the steps; "
        f"{len(frozen)} of {len(steps)} steps frozen (warm-up and unfrozen refresh steps included).",
        "",
        f"Command: `{params['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    return observed_main(
        __doc__, SCRIPT, NAME, table, observed_run, every=200, every_help="keep the criterion's inputs every n steps"
    )


if __name__ == "__main__":
    sys.exit(main())
