"""The pieces of a training recipe that a saved model must carry: the planned
learning-rate schedule and the label-smoothed loss.

Both are registered Keras objects, so a ``model.keras`` compiled with them
loads without ``custom_objects`` (``import xnor_larq`` registers them).
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["SCHEDULES", "PlannedSchedule", "SparseCrossEntropy"]

SCHEDULES = ("cosine", "step", "constant")


@tf.keras.utils.register_keras_serializable("xnor_larq")
class PlannedSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """A schedule planned for exactly ``total_steps`` optimizer steps.

    Steps ``0 … warmup_steps − 1`` rise linearly to ``initial`` (step ``s`` gets
    ``initial · (s + 1) / warmup_steps``). The remaining steps follow ``kind``,
    with the schedule's final value exactly at the last step, ``total_steps − 1``:

    - ``cosine``: ``initial · ½(1 + cos(π t))``, ``t`` from 0 to 1, ending at 0;
    - ``step``: ``initial`` for the first half, ×0.1 to three quarters, ×0.01 after;
    - ``constant``: ``initial``.

    Steps past the plan keep the final value.
    """

    def __init__(self, kind, initial, total_steps, warmup_steps=0, name=None):
        if kind not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {SCHEDULES}. Received: {kind!r}")
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"`total_steps` must be a positive integer. Received: {total_steps!r}")
        if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
            raise ValueError(
                f"the warm-up ({warmup_steps} steps) must be shorter than the run "
                f"({total_steps} steps); lower --warmup-epochs."
            )
        self.kind = kind
        self.initial = float(initial)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.name = name

    def final_value(self) -> float:
        return {"cosine": 0.0, "step": self.initial * 0.01, "constant": self.initial}[self.kind]

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        initial = tf.constant(self.initial, tf.float32)
        decay_steps = max(self.total_steps - 1 - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = initial * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "step":
            decayed = initial * tf.where(
                progress < 0.5, 1.0, tf.where(progress < 0.75, 0.1, 0.01)
            )
        else:
            decayed = initial + 0.0 * step
        if not self.warmup_steps:
            return decayed
        warm = initial * (step + 1.0) / self.warmup_steps
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "kind": self.kind,
            "initial": self.initial,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }


@tf.keras.utils.register_keras_serializable("xnor_larq")
class SparseCrossEntropy(tf.keras.losses.Loss):
    """Cross-entropy of integer labels against probabilities, with label smoothing.

    With smoothing ``ε`` over ``C`` classes the target of the true class is
    ``1 − ε + ε/C`` and of every other ``ε/C`` (Szegedy et al. 2016); ``ε = 0`` is
    Keras's ``sparse_categorical_crossentropy``.
    """

    def __init__(self, label_smoothing=0.0, name="sparse_cross_entropy", **kwargs):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"--label-smoothing must be in [0, 1). Received: {label_smoothing!r}"
            )
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        targets = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return tf.keras.losses.categorical_crossentropy(
            targets, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
