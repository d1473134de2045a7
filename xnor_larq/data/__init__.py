"""Data sources, local files first, as batched ``tf.data`` pipelines.

``load_dataset(name, ...)`` returns a :class:`DataSpec` for every dataset the
training CLI knows: ``fashion_mnist``, ``mnist`` (idx .gz files), ``cifar10``,
``cifar100`` (python-pickle batches), ``imagenet`` (class folders or TFRecords)
and ``synthetic``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pipeline
from .cifar import load_cifar, read_batch
from .errors import CorruptDataError, DatasetNotFoundError
from .imagenet import (
    TFRecordShards,
    image_folder_dataset,
    imagenet_sources,
    load_imagenet,
    tfrecord_dataset,
)
from .mnist import load_idx_dataset, read_idx
from .pipeline import ArraySource, InputLayout, Source, layout_of
from .synthetic import synthetic_arrays

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")


def training_dataset(source, **kwargs):
    """:func:`pipeline.training_dataset` for any source (TFRecord shards stream)."""
    if isinstance(source, TFRecordShards):
        return source.training_dataset(**kwargs)
    return pipeline.training_dataset(source, **kwargs)


def evaluation_dataset(source, **kwargs):
    """:func:`pipeline.evaluation_dataset` for any source (TFRecord shards stream)."""
    if isinstance(source, TFRecordShards):
        return source.evaluation_dataset(**kwargs)
    return pipeline.evaluation_dataset(source, **kwargs)


def simple_training_dataset(source, *, batch_size, seed=0, uint8=False):
    """One epoch of ``(image, label)`` training batches of ``source``."""
    return training_dataset(
        source, global_batch=batch_size, steps_per_epoch=source.size // batch_size, epochs=1,
        seed=seed, uint8=uint8,
    )


def simple_evaluation_dataset(source, *, batch_size, uint8=False):
    """The whole of ``source`` as ``(image, label)`` batches, unpadded."""
    dataset = evaluation_dataset(source, global_batch=batch_size, uint8=uint8)
    dataset = dataset.unbatch().filter(lambda x, y, w: w > 0).map(lambda x, y, w: (x, y))
    return dataset.batch(batch_size)


def as_datasets(train_source, test_source, *, batch_size, eval_batch_size=None, seed=0):
    """One epoch of float ``(image, label)`` batches each: the simple view of two sources."""
    return (
        simple_training_dataset(train_source, batch_size=batch_size, seed=seed),
        simple_evaluation_dataset(test_source, batch_size=eval_batch_size or batch_size),
    )


@dataclass
class DataSpec:
    """A dataset's two splits as sources, plus what a model needs to know of them.

    ``train`` and ``test`` are one epoch of float ``(image, label)`` batches, for
    quick use with ``model.fit``; the training CLI builds its pipelines from
    ``train_source`` and ``test_source`` with :func:`training_dataset` and
    :func:`evaluation_dataset` (uint8, sharded, resumable).
    """

    train_source: object
    test_source: object
    num_classes: int
    input_shape: tuple
    batch_size: int = 128
    eval_batch_size: int | None = None
    seed: int = 0

    @property
    def train_size(self) -> int:
        return int(self.train_source.size)

    @property
    def test_size(self) -> int:
        return int(self.test_source.size)

    @property
    def mean(self):
        return self.train_source.mean

    @property
    def std(self):
        return self.train_source.std

    @property
    def train(self):
        return simple_training_dataset(
            self.train_source, batch_size=self.batch_size, seed=self.seed
        )

    @property
    def test(self):
        return simple_evaluation_dataset(
            self.test_source, batch_size=self.eval_batch_size or self.batch_size
        )


def load_dataset(
    name,
    *,
    data_dir=None,
    batch_size=128,
    eval_batch_size=None,
    seed=None,
    train_subset=0,
    augment=None,
    image_size=224,
    download=True,
    train_size=None,
):
    """Load ``name`` as a :class:`DataSpec`; errors name the places searched.

    ``augment``: None for the dataset's default (CIFAR: ``crop_flip``; ImageNet:
    ``inception``; the 28×28 sets: none), ``""`` or ``"none"`` for none, or a
    name (``shift``, ``crop_flip`` for arrays; ``inception`` for ImageNet).
    ``train_size``: TFRecord shards only, the number of training records (skips
    counting them).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}")
    if train_size is not None and name != "imagenet":
        raise ValueError(
            f"--train-size is for ImageNet TFRecord shards; {name} is counted when loaded. "
            "Drop --train-size."
        )
    common = dict(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed or 0)
    if name == "imagenet":
        train, test, classes = imagenet_sources(
            data_dir,
            image_size=image_size,
            augment=augment,
            train_subset=train_subset,
            train_size=train_size,
        )
        spec = DataSpec(train, test, classes, (image_size, image_size, 3), **common)
    else:
        if name in ("fashion_mnist", "mnist"):
            (x, y), (xt, yt) = load_idx_dataset(name, data_dir, download=download)
            default_augment, classes = None, 10
        elif name in ("cifar10", "cifar100"):
            (x, y), (xt, yt) = load_cifar(name, data_dir)
            default_augment, classes = "crop_flip", 10 if name == "cifar10" else 100
        else:
            (x, y), (xt, yt) = synthetic_arrays(num_train=2048, num_test=256, seed=seed or 0)
            default_augment, classes = None, 10
        if train_subset:
            x, y = x[:train_subset], y[:train_subset]
        if augment == "inception":
            raise ValueError(
                f"--augment inception is ImageNet's random-resized crop; for {name} use "
                "shift, crop_flip or none."
            )
        augment = default_augment if augment is None else (augment if augment != "none" else None)
        augment = augment or None
        train = ArraySource(x, y, augment=augment, description=f"{name} training set")
        test = ArraySource(xt, yt, description=f"{name} test set")
        spec = DataSpec(train, test, classes, train.image_shape, **common)
    if batch_size > spec.train_size:
        raise ValueError(
            f"--batch-size {batch_size} is larger than the {spec.train_size} training images "
            f"of {name}; lower it (or use more data)."
        )
    return spec


__all__ = [
    "DATASETS",
    "ArraySource",
    "InputLayout",
    "Source",
    "TFRecordShards",
    "as_datasets",
    "evaluation_dataset",
    "imagenet_sources",
    "layout_of",
    "pipeline",
    "training_dataset",
    "CorruptDataError",
    "DataSpec",
    "DatasetNotFoundError",
    "image_folder_dataset",
    "load_cifar",
    "load_dataset",
    "load_idx_dataset",
    "load_imagenet",
    "read_batch",
    "read_idx",
    "synthetic_arrays",
    "tfrecord_dataset",
]
