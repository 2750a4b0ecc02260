"""Run a short SAR / aL-SAR stream on every rank and dump what each rank saw (tests/test_sar.py launches it).

Usage: torchrun --standalone --nproc_per_node 2 tests/ddp_scripts/sar_ranks.py METHOD[:FEATURES][,...] OUT_DIR
Runs the methods one after the other in the same processes (one start-up) and writes OUT_DIR/<name>/rank<r>.json
(FEATURES: SAR's similarity_features, e.g. ``alsar:conv``, written to OUT_DIR/alsar_conv):
per step the global batch record (slots, labels) and this rank's shard labels; at the end the memory use counts, the
method's class counts and S, the parameters and the FLOPs ledger.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from hf_budgetcl.config import BudgetedCLConfig
from hf_budgetcl.data.image_collator import ImageCollator
from hf_budgetcl.data.image_datasets import load_digits_dataset
from hf_budgetcl.data.image_rows import ImageRows, sample_nbytes
from hf_budgetcl.models import build_image_classifier
from hf_budgetcl.stream.orders import disjoint_stream
from hf_budgetcl.training.trainer import BudgetedCLTrainer


def first_per_class(ds, n: int):
    y = np.asarray(ds["label"])
    keep = np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)])
    return ds.select(np.sort(keep)).with_format("numpy")


class RecordingTrainer(BudgetedCLTrainer):
    steps: list[dict]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        r = self.current_record
        self.steps.append(
            {
                "slots": list(r.slots),
                "labels": list(r.labels),
                "shard": inputs["labels"].tolist(),
                "frozen": int(getattr(self.freezing, "last_frozen", 0)),
            }
        )
        return loss


def main(name: str, out_dir: str) -> None:
    method, _, features = name.partition(":")
    out_dir = os.path.join(out_dir, name.replace(":", "_"))
    train, test = load_digits_dataset()
    train, test = first_per_class(train, 10), first_per_class(test, 4)
    config = BudgetedCLConfig(
        output_dir=out_dir,
        method=method,
        memory_size=40,
        per_device_train_batch_size=4,
        eval_period=50,
        per_device_eval_batch_size=8,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        ddp_backend="gloo",
        logging_steps=1000,
        sar_warmup_samples=30,
        freeze_warmup_steps=5,
        fisher_update_every=3,
        seed=3,
        similarity_features=features or "head",
    )
    stream = disjoint_stream(np.asarray(train["label"]), 5, seed=3)
    model = build_image_classifier("digits_resnet", num_labels=10, num_channels=1, image_size=8)
    trainer = RecordingTrainer(
        model=model,
        args=config,
        train_dataset=ImageRows.from_dataset(train),
        eval_dataset=test,
        stream=stream,
        sample_nbytes=sample_nbytes,
        data_collator=ImageCollator(),
    )
    trainer.steps = []
    trainer.train()
    m = trainer.method
    params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    dump = {
        "rank": trainer.args.process_index,
        "world_size": trainer.world_size,
        "n_blocks": len(trainer.blocks),
        "steps": trainer.steps,
        "use_counts": list(trainer.memory.use_counts),
        "class_counts": m.class_counts.tolist(),
        "S": m.S.tolist(),
        "similarity_updates": m.similarity_updates,
        "params": params.tolist(),
        "flops_items": trainer.ledger.items,
        "A_auc": trainer.results["A_auc"],
    }
    with open(os.path.join(out_dir, f"rank{trainer.args.process_index}.json"), "w") as f:
        json.dump(dump, f)


if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        main(name, sys.argv[2])
