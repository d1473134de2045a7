"""Training helpers: tf.data pipelines, optimizers, compile, fit and report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import larq as lq
import numpy as np
import tensorflow as tf


def image_pipeline(images, labels, *, batch_size, training, seed=None, augment=False):
    """Scale uint8 images to [-1, 1], add a channel axis if needed, batch, prefetch."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int64)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)

    def prepare(image, label):
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
        if training and augment:
            image = _random_shift(image, seed)
        return image, label

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def _random_shift(image, seed, pad=2):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], constant_values=-1.0)
    image = tf.image.random_crop(padded, shape, seed=seed)
    return tf.image.random_flip_left_right(image, seed=seed)


def make_optimizer(name: str, learning_rate, **kwargs):
    """Adam (the paper's choice), SGD with Nesterov momentum, or Larq's Bop."""
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "bop":
        return lq.optimizers.CaseOptimizer(
            (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop()),
            default_optimizer=tf.keras.optimizers.Adam(learning_rate),
        )
    raise ValueError(f"Unknown optimizer {name!r}. Choose one of: adam, sgd, bop")


def learning_rate_schedule(name: str, initial, total_steps: int):
    if name == "constant":
        return initial
    if name == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(initial, max(total_steps, 1))
    if name == "step":
        boundaries = [int(total_steps * 0.5), int(total_steps * 0.75)]
        return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [initial, initial * 0.1, initial * 0.01]
        )
    raise ValueError(f"Unknown schedule {name!r}. Choose one of: constant, cosine, step")


def model_report(model) -> dict:
    """Parameters, binarized-MAC ratio and size from ``lq.models.summary``'s profile."""
    profile = lq.models.ModelProfile(model)
    macs = profile.op_count("mac")
    binary_macs = profile.op_count("mac", 1)
    return {
        "parameters": int(model.count_params()),
        "binary_parameters": int(profile.weight_count(bitwidth=1)),
        "macs": int(macs),
        "binarized_mac_ratio": float(binary_macs / macs) if macs else 0.0,
        "model_size_bytes": float(profile.memory / 8),
        "float32_size_bytes": float(profile.fp_equivalent_memory / 8),
    }


def write_json(path, data):
    """Write atomically: a crash never leaves a half-written report."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
