"""Image-classification recipe: a class-incremental stream over an image dataset, under FLOPs and byte budgets.

Runs with ``python recipes/image_classification.py --config ...``, ``accelerate launch recipes/image_classification.py
--config ...`` or ``hf-budgetcl run --config ...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..config import BudgetedCLConfig
from ..stream.orders import StreamOrder, build_stream
from ..utils.errors import ConfigError
from ..utils.validation import check_numbers
from .arguments import ConfigParser
from .dtype_field import check_torch_dtype, torch_dtype_field


@dataclass
class ModelArguments:
    RANGES: ClassVar[dict[str, str]] = {"image_size": ">= 1", "pad": ">= 0", "channels": ">= 1"}
    model_name_or_path: str = field(
        default="digits_resnet",
        metadata={
            "help": "A preset (cifar_resnet32, fmd5_resnet, digits_resnet, tiny_vit, tiny_resnet), a local "
            "checkpoint or a Hub model id."
        },
    )
    image_size: int | None = field(default=None, metadata={"help": "Resize images to this size (after padding)."})
    pad: int = field(default=0, metadata={"help": "Zero padding on each side (FM-D5: 2, 28 -> 32)."})
    channels: int | None = field(default=None, metadata={"help": "Repeat grey images to this many channels."})
    conv_init: str | None = field(
        default=None, metadata={"help": "CIFAR ResNet presets: default (PyTorch's) | kaiming_fan_out (the authors')."}
    )
    torch_dtype: str = torch_dtype_field(
        "the checkpoint's; a preset's float32",
        "; a preset is cast to it and trains in it (--bf16 true is mixed precision over float32 weights instead)",
    )

    def __post_init__(self):
        check_numbers(self, self.RANGES)
        check_torch_dtype(self.torch_dtype)
        if self.conv_init is not None:
            from ..models.cifar_resnet import CONV_INITS

            if self.conv_init not in CONV_INITS:
                raise ConfigError(f"conv_init: expected one of {', '.join(CONV_INITS)}, got {self.conv_init!r}")


@dataclass
class DataArguments:
    RANGES: ClassVar[dict[str, str]] = {"per_class_train": ">= 1", "per_class_test": ">= 1", "test_fraction": "(0, 1)"}
    dataset: str = field(
        default="digits",
        metadata={
            "help": "digits | tinted_digits (digits in colour, one tint per class) | fashion_mnist | a local "
            "imagefolder | a Hub image-classification dataset."
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "Directory of the Fashion-MNIST idx files."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration (load_dataset name)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split the stream is drawn from."})
    eval_split: str = field(
        default="test",
        metadata={"help": "Held-out split of the anytime evaluation.", "aliases": ["--test_split"]},
    )
    test_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this fraction of each class of the train split when the data has no eval_split "
            "(e.g. a flat <dir>/<class>/*.png imagefolder)."
        },
    )
    per_class_train: int | None = field(default=None, metadata={"help": "Keep the first n training images per class."})
    per_class_test: int | None = field(default=None, metadata={"help": "Keep the first n test images per class."})
    label_column: str = field(default="label", metadata={"help": "Label column of a generic dataset."})
    image_column: str | None = field(default=None, metadata={"help": "Image column of a generic dataset."})
    domain_column: str | None = field(default=None, metadata={"help": "Time/domain column for domain streams."})

    def __post_init__(self):
        check_numbers(self, self.RANGES)


def make_parser() -> ConfigParser:
    return ConfigParser((ModelArguments, DataArguments, BudgetedCLConfig))


def load_data(data_args: DataArguments, image_size: int | None = None):
    """Train and test splits; ``image_size`` resizes a generic dataset's images as they load (images of differing
    size are an error without it)."""
    from ..data.idx import load_fashion_mnist
    from ..data.image_datasets import load_digits_dataset, load_image_dataset
    from ..data.tinted_digits import load_tinted_digits_dataset

    if data_args.dataset == "fashion_mnist":
        return load_fashion_mnist(data_args.data_dir, data_args.per_class_train, data_args.per_class_test)
    if data_args.dataset == "digits":
        train, test = load_digits_dataset()
    elif data_args.dataset == "tinted_digits":
        train, test = load_tinted_digits_dataset()
    else:
        train, test = load_image_dataset(
            data_args.dataset,
            split_train=data_args.train_split,
            split_test=data_args.eval_split,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            test_fraction=data_args.test_fraction,
            dataset_config=data_args.dataset_config,
            image_size=image_size,
        )
    return first_per_class(train, data_args.per_class_train), first_per_class(test, data_args.per_class_test)


def check_classes_match(train, test) -> None:
    """Every class of the stream needs test images (else its accuracy is NaN), and the test split no others."""
    if test is None:
        return
    train_classes, test_classes = set(np.unique(train["label"]).tolist()), set(np.unique(test["label"]).tolist())
    if train_classes != test_classes:
        only_train, only_test = sorted(train_classes - test_classes), sorted(test_classes - train_classes)
        raise ConfigError(
            f"dataset: the train and test splits have different classes (only in train: {only_train}, only in "
            f"test: {only_test}); every streamed class needs test images"
        )


def first_per_class(dataset, n: int | None):
    """The first ``n`` rows of each class, in dataset order (all rows when ``n`` is None)."""
    if dataset is None or n is None:
        return dataset
    from ..data.image_rows import first_per_class_indices

    return dataset.select(first_per_class_indices(np.asarray(dataset["label"]), n))


def make_stream(config: BudgetedCLConfig, train, data_args: DataArguments) -> StreamOrder:
    labels = np.asarray(train["label"])
    if config.stream_file:
        return StreamOrder.from_json(config.stream_file, labels=labels)
    seed, params = config.stream_arguments()
    domains = None
    if config.stream == "domain":
        if not data_args.domain_column or data_args.domain_column not in train.column_names:
            raise ConfigError(
                f"domain_column: a domain stream needs a time/domain column, got {data_args.domain_column!r}"
            )
        domains = np.asarray(train[data_args.domain_column])
    return build_stream(config.stream, labels, seed, domains=domains, **params)


def main(model_args: ModelArguments, data_args: DataArguments, config: BudgetedCLConfig):
    from transformers import set_seed

    from ..data.image_collator import ImageCollator
    from ..data.image_processing import checkpoint_image_processor, collator_for_processor, image_processor_for
    from ..data.image_rows import ImageRows, sample_nbytes
    from ..models import PRESETS, build_image_classifier
    from ..training.trainer import BudgetedCLTrainer

    set_seed(config.seed)
    # An explicit image_size resizes at load (so images of differing size can stream), the padding kept outside it.
    load_size = model_args.image_size - 2 * model_args.pad if model_args.image_size else None
    if load_size is not None and load_size < 1:
        raise ConfigError(f"image_size: {model_args.image_size} leaves no pixel after pad {model_args.pad}")
    train, test = load_data(data_args, image_size=load_size)
    if "label" not in train.column_names:
        raise ConfigError(f"label_column: the dataset has no label column (columns: {', '.join(train.column_names)})")
    check_classes_match(train, test)
    train.info.dataset_name = data_args.dataset  # named in the model card and its model-index
    stream = make_stream(config, train, data_args)
    shape = np.asarray(train[0]["pixel_values"]).shape
    channels, height = shape[:2]
    image_size = model_args.image_size or height + 2 * model_args.pad
    names = getattr(train.features["label"], "names", None)  # class names (imagefolder: the folder names)
    num_labels = int(np.max(train["label"])) + 1
    # A checkpoint's own image processor decides size, channels and mean/std, and is saved unchanged.
    processor, processor_file = (None, None)
    if model_args.model_name_or_path not in PRESETS:
        processor, processor_file = checkpoint_image_processor(model_args.model_name_or_path)
    model_channels = model_args.channels or channels
    if processor is not None and model_args.channels is None:
        from transformers import AutoConfig

        model_channels = getattr(AutoConfig.from_pretrained(model_args.model_name_or_path), "num_channels", channels)
    model = build_image_classifier(
        model_args.model_name_or_path,
        num_labels=num_labels,
        num_channels=model_channels,
        image_size=image_size,
        label_names=names if names is not None and len(names) == num_labels else None,
        conv_init=model_args.conv_init,
        dtype=model_args.torch_dtype,
    )
    if processor is not None:
        collator = collator_for_processor(processor, shape, model_channels, pad=model_args.pad, dtype=model.dtype)
    else:
        collator = ImageCollator(
            pad=model_args.pad, resize=model_args.image_size, channels=model_args.channels, dtype=model.dtype
        )
        # saved next to the model, so AutoImageProcessor reproduces the collator's preprocessing
        processor = image_processor_for(collator, shape)
    trainer = BudgetedCLTrainer(
        model=model,
        args=config,
        train_dataset=ImageRows.from_dataset(train),  # in-memory rows: Arrow row reads cost as much as a step
        eval_dataset=test.with_format("numpy") if test is not None else None,
        stream=stream,
        sample_nbytes=sample_nbytes,
        data_collator=collator,
        processing_class=processor,
    )
    del train  # the trainer holds the same bytes in ImageRows: do not keep the Arrow copy through training
    if processor_file is not None:  # the checkpoint's own bytes, not a re-dump
        trainer.final_copies["preprocessor_config.json"] = processor_file
    trainer.run_arguments.record(model_args, data_args)  # a resume with another model or data refuses
    trainer.train()  # ends with the atomic finish: model, processor, results, card, stream.json
    return trainer


def run(argv: Sequence[str]):
    model_args, data_args, config = make_parser().parse_with_config(argv, ignore_keys=("recipe",))
    return main(model_args, data_args, config)
