"""Small builders shared by the tests: tiny models from config and a fast digits trainer."""

from __future__ import annotations

import numpy as np

from hf_budgetcl.config import BudgetedCLConfig


def tiny_config(tmp_path, **overrides) -> BudgetedCLConfig:
    values = dict(
        output_dir=str(tmp_path / "out"),
        method="er",
        memory_size=60,
        per_device_train_batch_size=8,
        eval_period=100,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1000,
    )
    values.update(overrides)
    return BudgetedCLConfig(**values)


def digits_trainer(tmp_path, per_class_train=20, per_class_test=10, model="digits_resnet", n_tasks=5, **overrides):
    """A BudgetedCLTrainer on a small real-digits stream (per_class_train rows per class)."""
    from hf_budgetcl.data.image_collator import ImageCollator
    from hf_budgetcl.data.image_datasets import load_digits_dataset
    from hf_budgetcl.data.image_rows import ImageRows, sample_nbytes
    from hf_budgetcl.models import build_image_classifier
    from hf_budgetcl.runs.image_classification import first_per_class
    from hf_budgetcl.stream.orders import disjoint_stream
    from hf_budgetcl.training.trainer import BudgetedCLTrainer

    config = tiny_config(tmp_path, **overrides)
    train, test = load_digits_dataset()
    train = first_per_class(train, per_class_train).with_format("numpy")
    test = first_per_class(test, per_class_test).with_format("numpy")
    stream = disjoint_stream(np.asarray(train["label"]), n_tasks, seed=config.seed)
    model = build_image_classifier(model, num_labels=10, num_channels=1, image_size=8)
    return BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=ImageRows.from_dataset(train),
        eval_dataset=test,
        stream=stream,
        sample_nbytes=sample_nbytes,
        data_collator=ImageCollator(),
    )


class FakeMethodContext:
    """The parts of :class:`~hf_budgetcl.methods.context.MethodContext` a method unit test needs: one process, a
    bare model, charges recorded per item."""

    def __init__(self, model, record=None, memory=None):
        self.model, self.record, self.memory = model, record, memory
        self.world_size, self.rank = 1, 0
        self.charges: dict[str, float] = {}

    def gather(self, tensors):
        return tensors

    def charge(self, item: str, flops: float, on_every_rank: bool = False) -> None:
        self.charges[item] = self.charges.get(item, 0.0) + float(flops)

    def local_positions(self, local_rows: int) -> np.ndarray:
        return np.arange(local_rows)


def digits_run_args(per_class_train: int, per_class_test: int, *extra: str) -> list[str]:
    """``hf-budgetcl run`` arguments of a small, quiet digits_er run (evaluated every 40 samples), then ``extra``."""
    return [
        "--config",
        "recipes/configs/digits_er.yaml",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--per_class_train",
        str(per_class_train),
        "--per_class_test",
        str(per_class_test),
        "--eval_period",
        "40",
        "--logging_steps",
        "1000",
        *extra,
    ]
