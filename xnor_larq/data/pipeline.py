"""Input pipelines that hold at scale: deterministic, sharded before decoding, resumable.

A *source* is a set of labelled images: arrays in memory (idx, CIFAR,
synthetic), image files (ImageNet folders) or TFRecord shards. From a source,
:func:`training_dataset` and :func:`evaluation_dataset` build ``tf.data``
pipelines with these properties:

- **The whole epoch is shuffled before anything is read.** Each epoch draws a
  permutation of all indices (``stateless_shuffle`` keyed on the seed and the
  epoch); a batch is as mixed as a random draw, whatever order the files are
  listed in. TFRecord shards are permuted per epoch and read through a
  shuffle buffer.
- **Global batches do not depend on the layout.** An epoch is ``steps`` rows
  of ``global_batch`` indices; input pipeline ``w`` of ``W`` (one per worker)
  takes its ``global_batch / W`` columns of every row and decodes only those,
  and the replicas of a worker take consecutive slices of them. One replica,
  two replicas or two workers see the same images at every step.
- **Deterministic augmentation.** Random crops and flips are stateless ops
  keyed on ``(seed, epoch, position in the epoch)``: the same command and seed
  give the same batches, in any thread order.
- **Resumable mid-epoch.** ``first_step`` starts the stream at any global step
  (epoch ``first_step // steps``, row ``first_step % steps``) without reading
  what came before.
- **Exact evaluation.** The evaluation set is padded to whole global batches
  with weight-0 elements (the dataset yields ``(image, label, weight)``), so
  every replica and worker runs the same number of steps and the weighted
  metrics count each real image exactly once.

Images leave the pipeline as ``uint8`` when ``uint8=True`` (a quarter of the
bytes to move to an accelerator; the model normalizes them on the device, see
:class:`xnor_larq.layers.InputNormalization`), else normalized ``float32``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

__all__ = [
    "ArraySource",
    "InputLayout",
    "Source",
    "element_seed",
    "evaluation_dataset",
    "layout_of",
    "training_dataset",
]


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Which input pipeline this is and how big its batches are."""

    num_pipelines: int = 1
    pipeline_id: int = 0
    replicas_per_pipeline: int = 1

    @property
    def num_replicas(self) -> int:
        return self.num_pipelines * self.replicas_per_pipeline


def layout_of(input_context: tf.distribute.InputContext | None) -> InputLayout:
    """The layout a ``distribute_datasets_from_function`` context describes."""
    if input_context is None:
        return InputLayout()
    return InputLayout(
        num_pipelines=input_context.num_input_pipelines,
        pipeline_id=input_context.input_pipeline_id,
        replicas_per_pipeline=input_context.num_replicas_in_sync
        // input_context.num_input_pipelines,
    )


def element_seed(seed, epoch, position):
    """The stateless seed of one element: ``(seed, epoch)`` folded with its position."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


@dataclasses.dataclass
class Source:
    """``size`` labelled images addressable by index.

    ``load(index)`` returns the raw element (a uint8 image, or encoded bytes);
    ``prepare(raw, training, seed)`` turns it into a uint8 ``(H, W, C)`` image of
    the model's input size (augmenting with the stateless ``seed`` when
    training). ``labels`` is an int64 array of the class of each index.
    """

    size: int
    labels: np.ndarray
    load: Callable
    prepare: Callable
    image_shape: tuple
    mean: np.ndarray
    std: np.ndarray
    description: str = ""

    def normalize(self, image):
        return (tf.cast(image, tf.float32) - self.mean) / self.std


def _check_batch(global_batch, layout: InputLayout, what):
    if global_batch % layout.num_replicas:
        raise ValueError(
            f"--batch-size {global_batch} ({what}) must divide by the {layout.num_replicas} "
            f"replicas in sync; use a multiple of {layout.num_replicas}."
        )


def _output(source, image, label, uint8, *extra):
    image = tf.ensure_shape(image, source.image_shape)
    if not uint8:
        image = source.normalize(image)
    return (image, label, *extra)


def training_dataset(
    source: Source,
    *,
    global_batch: int,
    steps_per_epoch: int,
    epochs: int,
    seed: int = 0,
    first_step: int = 0,
    layout: InputLayout | None = None,
    uint8: bool = False,
):
    """Batches of one replica for steps ``first_step`` … ``epochs·steps_per_epoch − 1``.

    ``global_batch`` is the batch of one step over all replicas; this pipeline
    yields ``global_batch / num_replicas`` images a batch (what
    ``distribute_datasets_from_function`` expects).
    """
    layout = layout or InputLayout()
    _check_batch(global_batch, layout, "the global batch")
    if steps_per_epoch * global_batch > source.size:
        raise ValueError(
            f"{steps_per_epoch} steps of {global_batch} images need more than the "
            f"{source.size} images of {source.description or 'the training set'}."
        )
    per_pipeline = global_batch // layout.num_pipelines
    per_replica = global_batch // layout.num_replicas
    first_epoch, first_row = divmod(int(first_step), int(steps_per_epoch))
    if first_epoch >= epochs:
        raise ValueError(f"first_step {first_step} is past the last of {epochs} epochs")
    size, steps = int(source.size), int(steps_per_epoch)
    column = layout.pipeline_id * per_pipeline
    seed = int(seed)

    def epoch_elements(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        rows = tf.reshape(order[: steps * global_batch], (steps, global_batch))
        mine = rows[:, column : column + per_pipeline]
        positions = tf.range(steps, dtype=tf.int64)[:, None] * global_batch + tf.range(
            column, column + per_pipeline, dtype=tf.int64
        )
        start = tf.where(epoch == first_epoch, tf.constant(first_row, tf.int64), 0)
        indices = tf.reshape(mine[start:], [-1])
        positions = tf.reshape(positions[start:], [-1])
        epochs_column = tf.fill(tf.shape(indices), epoch)
        return tf.data.Dataset.from_tensor_slices((indices, positions, epochs_column))

    def element(index, position, epoch):
        raw, label = source.load(index)
        image = source.prepare(raw, True, element_seed(seed, epoch, position))
        return _output(source, image, label, uint8)

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_elements)
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_steps(size: int, global_batch: int) -> int:
    return -(-int(size) // int(global_batch))


def evaluation_dataset(
    source: Source,
    *,
    global_batch: int,
    layout: InputLayout | None = None,
    uint8: bool = False,
):
    """``(image, label, weight)`` batches of one replica over the whole set, in order.

    The set is padded to whole global batches with weight-0 copies of its first
    image; weighted metrics (and the loss) then count every real image once.
    """
    layout = layout or InputLayout()
    _check_batch(global_batch, layout, "the evaluation batch")
    per_pipeline = global_batch // layout.num_pipelines
    per_replica = global_batch // layout.num_replicas
    steps = evaluation_steps(source.size, global_batch)
    padded = np.arange(steps * global_batch, dtype=np.int64).reshape(steps, global_batch)
    column = layout.pipeline_id * per_pipeline
    mine = padded[:, column : column + per_pipeline].reshape(-1)
    weights = (mine < source.size).astype(np.float32)
    indices = np.where(mine < source.size, mine, 0)

    def element(index, weight):
        raw, label = source.load(index)
        image = source.prepare(raw, False, None)
        return _output(source, image, label, uint8, weight)

    dataset = tf.data.Dataset.from_tensor_slices((indices, weights))
    dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# --- arrays in memory (idx, CIFAR, synthetic) --------------------------------

AUGMENTATIONS = ("shift", "crop_flip")


def ArraySource(images, labels, *, augment=None, description=""):  # noqa: N802 (a factory)
    """A :class:`Source` over uint8 NHWC arrays, normalized to [-1, 1].

    ``augment``: None, ``"shift"`` (pad 2, random crop) or ``"crop_flip"`` (pad
    4, random crop, horizontal flip: the CIFAR recipe).
    """
    if augment not in (None, *AUGMENTATIONS):
        raise ValueError(
            f"`augment` must be None or one of {AUGMENTATIONS}. Received: augment={augment!r}"
        )
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels, np.int64)
    shape = tuple(int(s) for s in images.shape[1:])
    pad = {"shift": 2, "crop_flip": 4}.get(augment, 0)
    # Eager tensors, captured by every pipeline that reads them.
    images_tensor, labels_tensor = tf.constant(images), tf.constant(labels)

    def load(index):
        return tf.gather(images_tensor, index), tf.gather(labels_tensor, index)

    def prepare(image, training, seed):
        if not (training and augment):
            return image
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        crop_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 2), axis=0
        )
        image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
        if augment == "crop_flip":
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image

    channels = shape[-1]
    return Source(
        size=len(images),
        labels=labels,
        load=load,
        prepare=prepare,
        image_shape=shape,
        mean=np.full(channels, 127.5, np.float32),
        std=np.full(channels, 127.5, np.float32),
        description=description,
    )
