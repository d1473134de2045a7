"""Data sources, local files first, as batched ``tf.data`` pipelines.

``load_dataset(name, ...)`` returns a :class:`DataSpec` for every dataset the
training CLI knows: ``fashion_mnist``, ``mnist`` (idx .gz files), ``cifar10``,
``cifar100`` (python-pickle batches), ``imagenet`` (class folders or TFRecords)
and ``synthetic``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .cifar import load_cifar, read_batch
from .errors import CorruptDataError, DatasetNotFoundError
from .imagenet import image_folder_dataset, load_imagenet, tfrecord_dataset
from .mnist import load_idx_dataset, read_idx
from .synthetic import synthetic_arrays

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")


@dataclass
class DataSpec:
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    train_size: int | None  # None when unknown (streamed TFRecords)


def array_pipeline(images, labels, *, batch_size, training, seed=None, augment=None):
    """uint8 images → float in [-1, 1], NHWC; shuffle, augment, batch, prefetch.

    ``augment``: None, ``"shift"`` (pad 2, random crop) or ``"crop_flip"`` (pad
    4, random crop, horizontal flip: the CIFAR recipe).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int64)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    pad = {"shift": 2, "crop_flip": 4}.get(augment, 0)

    def prepare(image, label):
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        if training and augment:
            shape = tf.shape(image)
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.random_crop(image, shape, seed=seed)
            if augment == "crop_flip":
                image = tf.image.random_flip_left_right(image, seed=seed)
        return image, label

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


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
):
    """Load ``name`` as a :class:`DataSpec`; errors name the places searched."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}")
    eval_batch_size = eval_batch_size or batch_size
    if name == "imagenet":
        train, test, classes = load_imagenet(
            data_dir, image_size=image_size, batch_size=batch_size, seed=seed
        )
        return DataSpec(train, test, classes, (image_size, image_size, 3), None)
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
    if batch_size > len(x):
        raise ValueError(
            f"--batch-size {batch_size} is larger than the {len(x)} training images of "
            f"{name}; lower it (or use more data)."
        )
    augment = default_augment if augment is None else (augment or None)
    train = array_pipeline(x, y, batch_size=batch_size, training=True, seed=seed, augment=augment)
    test = array_pipeline(xt, yt, batch_size=eval_batch_size, training=False)
    shape = x.shape[1:] if x.ndim == 4 else (*x.shape[1:], 1)
    return DataSpec(train, test, classes, tuple(int(s) for s in shape), len(x))


__all__ = [
    "DATASETS",
    "CorruptDataError",
    "DataSpec",
    "DatasetNotFoundError",
    "array_pipeline",
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
