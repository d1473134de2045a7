"""Quantizers of the XNOR-Net family, as Larq quantizers.

Each quantizer is a pure function with a ``tf.custom_gradient`` (the math of
docs/MATH.md §1–2) plus a thin Larq ``Quantizer`` subclass that holds its
arguments, so that string names work in any Larq layer::

    lq.layers.QuantConv2D(64, 3, kernel_quantizer="scaled_sign",
                          input_quantizer="stochastic_sign",
                          kernel_constraint="weight_clip")

and survive ``model.save`` / ``tf.keras.models.load_model``.
"""

from __future__ import annotations

import tensorflow as tf
from larq import math as lq_math
from larq import utils as lq_utils
from larq.quantizers import _BaseQuantizer

__all__ = [
    "BACKWARD_MODES",
    "ScaledSign",
    "StochasticSign",
    "scaled_sign",
    "stochastic_sign",
]

#: The three backward passes of the scaled sign (docs/MATH.md §1).
BACKWARD_MODES = ("paper", "exact", "ste")


def _check_backward(backward):
    if backward not in BACKWARD_MODES:
        raise ValueError(
            f"`backward` must be one of {BACKWARD_MODES}. Received: backward={backward!r}"
        )


def _check_clip_value(clip_value):
    if clip_value is not None and not clip_value > 0:
        raise ValueError(
            "`clip_value` must be a positive number, or None for no clipping. "
            f"Received: clip_value={clip_value!r}"
        )


def _check_float(x, name):
    """Quantizers binarize real values: integer or boolean tensors are refused."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"{name} needs floating-point inputs. Received: dtype={x.dtype.name}. Cast "
            "first, e.g. `tf.cast(x, 'float32')`, or add a Rescaling layer."
        )
    return x


def _straight_through_mask(x, clip_value):
    """1[|x| <= clip_value] in x's dtype (all ones without clipping)."""
    if clip_value is None:
        return tf.ones_like(x)
    return tf.cast(tf.abs(x) <= clip_value, x.dtype)


def _alpha_axes(rank: int, per_channel: bool):
    """Axes α is averaged over: all but the last (per output channel) or all."""
    if per_channel:
        if rank < 2:
            raise ValueError(
                "A per-channel scaled sign needs a kernel of rank >= 2 (the last "
                f"axis holds the output channels). Received a tensor of rank {rank}; "
                "use per_channel=False for a single scale."
            )
        return list(range(rank - 1))
    return list(range(rank))


def scaled_sign(
    x: tf.Tensor,
    per_channel: bool = True,
    backward: str = "paper",
    clip_value: float | None = 1.0,
) -> tf.Tensor:
    r"""XNOR-Net's binary weights with a scale: ``α · sign(x)``.

    ``α`` is the mean of ``|x|`` over every axis but the last (one scale per
    output channel) or, with ``per_channel=False``, over the whole tensor.

    Backward, with ``g`` the incoming gradient, ``n`` the number of elements one
    ``α`` averages and ``m = 1[|x| <= clip_value]``:

    - ``"paper"``: ``g · (1/n + α·m)`` (XNOR-Net, the equation after (4));
    - ``"exact"``: ``α·m·g + sign(x)/n · Σ g·sign(x)`` (autodiff through α);
    - ``"ste"``: ``α·m·g`` (α held constant, as Larq's magnitude_aware_sign).

    An all-zero kernel gives ``α = 0``, a zero output and finite gradients.
    """
    _check_backward(backward)
    _check_clip_value(clip_value)
    x = _check_float(x, "scaled_sign")
    axes = _alpha_axes(x.shape.rank, per_channel)

    @tf.custom_gradient
    def _call(x):
        alpha = tf.reduce_mean(tf.abs(x), axis=axes, keepdims=True)
        signs = lq_math.sign(x)

        def grad(dy):
            through = alpha * _straight_through_mask(x, clip_value) * dy
            if backward == "ste":
                return through
            n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
            if backward == "paper":
                return dy / n + through
            return through + signs / n * tf.reduce_sum(dy * signs, axis=axes, keepdims=True)

        return alpha * signs, grad

    return _call(x)


def stochastic_sign(
    x: tf.Tensor, clip_value: float | None = 1.0, seed: int | None = None
) -> tf.Tensor:
    r"""BNN's stochastic binarization (Courbariaux, Hubara et al. 2016, eq. 2).

    Returns ``+1`` with probability ``σ(x) = clip((x + 1) / 2, 0, 1)`` and ``-1``
    otherwise; the backward pass is the saturating straight-through estimator
    ``1[|x| <= clip_value] · g``. This is the *training* form: the quantizer
    class switches to the deterministic sign at inference.
    """
    _check_clip_value(clip_value)
    x = _check_float(x, "stochastic_sign")

    @tf.custom_gradient
    def _call(x):
        probability = tf.clip_by_value((x + 1.0) / 2.0, 0.0, 1.0)
        uniform = tf.random.uniform(tf.shape(x), dtype=x.dtype, seed=seed)
        # uniform < p is never true for p = 0 and always true for p = 1.
        outputs = tf.where(uniform < probability, 1.0, -1.0)

        def grad(dy):
            return _straight_through_mask(x, clip_value) * dy

        return tf.cast(outputs, x.dtype), grad

    return _call(x)


def _deterministic_sign(x, clip_value):
    x = _check_float(x, "StochasticSign")

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            return _straight_through_mask(x, clip_value) * dy

        return lq_math.sign(x), grad

    return _call(x)


@lq_utils.register_alias("scaled_sign")
@lq_utils.register_keras_custom_object
class ScaledSign(_BaseQuantizer):
    r"""XNOR-Net / Binary-Weight-Network weight quantizer ``α · sign(W)``.

    Arguments:
        per_channel: one ``α`` per output channel (the last axis, the paper's
            choice) if True, one ``α`` for the whole tensor if False.
        backward: ``"paper"`` (default), ``"exact"`` or ``"ste"``; see
            :func:`scaled_sign` and docs/MATH.md §1.
        clip_value: the straight-through estimator's clip ``c``; gradients of
            weights with ``|W| > c`` vanish (the α-part of ``paper``/``exact``
            excepted). ``None`` disables clipping.
        metrics: Larq metrics, e.g. ``["flip_ratio"]``.

    Use it with ``kernel_constraint="weight_clip"`` so that latent weights stay
    in ``[-1, 1]`` as the paper does.

    Reference: Rastegari et al., *XNOR-Net*, ECCV 2016,
    https://arxiv.org/abs/1603.05279
    """

    precision = 1

    def __init__(
        self,
        per_channel: bool = True,
        backward: str = "paper",
        clip_value: float | None = 1.0,
        **kwargs,
    ):
        _check_backward(backward)
        _check_clip_value(clip_value)
        self.per_channel = bool(per_channel)
        self.backward = backward
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def call(self, inputs):
        outputs = scaled_sign(
            inputs,
            per_channel=self.per_channel,
            backward=self.backward,
            clip_value=self.clip_value,
        )
        return super().call(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "per_channel": self.per_channel,
            "backward": self.backward,
            "clip_value": self.clip_value,
        }


@lq_utils.register_alias("stochastic_sign")
@lq_utils.register_keras_custom_object
class StochasticSign(_BaseQuantizer):
    r"""BNN's stochastic binarization while training, ``sign(x)`` otherwise.

    While training (``model.fit``, or ``training=True``) each value becomes
    ``+1`` with probability ``clip((x + 1) / 2, 0, 1)`` and ``-1`` otherwise; in
    ``predict``, ``evaluate``, export and any call without ``training=True`` it
    is the deterministic ``sign(x)`` (``sign(0) = +1``). The backward pass is the
    saturating straight-through estimator in both cases. Works as a kernel or
    an input quantizer.

    Arguments:
        clip_value: the straight-through estimator's clip; ``None`` for none.
        seed: an operation seed for the random draws. Together with
            ``tf.random.set_seed`` (or ``tf.keras.utils.set_random_seed``) it
            makes training runs repeat exactly.
        metrics: Larq metrics, e.g. ``["flip_ratio"]``.

    Reference: Courbariaux, Hubara et al., *Binarized Neural Networks*, 2016,
    https://arxiv.org/abs/1602.02830
    """

    precision = 1

    def __init__(self, clip_value: float | None = 1.0, seed: int | None = None, **kwargs):
        _check_clip_value(clip_value)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.clip_value = clip_value
        self.seed = seed
        super().__init__(**kwargs)

    def call(self, inputs, training=None):
        # Keras hands down the `training` flag of the enclosing layer call (also
        # when Larq reads a quantized kernel); None means inference.
        def train_branch():
            return stochastic_sign(inputs, clip_value=self.clip_value, seed=self.seed)

        def inference_branch():
            return _deterministic_sign(inputs, self.clip_value)

        if training is None or isinstance(training, bool):
            outputs = train_branch() if training else inference_branch()
        else:
            outputs = tf.cond(tf.cast(training, tf.bool), train_branch, inference_branch)
        return super().call(outputs)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value, "seed": self.seed}
