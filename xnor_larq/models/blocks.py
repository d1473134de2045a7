"""Building blocks in XNOR-Net's order (docs/MATH.md §4): BN → binarize → conv → pool."""

from __future__ import annotations

import contextvars
import functools

import larq as lq
import tensorflow as tf

from ..layers import InputNormalization, ScaledQuantConv2D, ScaledQuantDense
from ..modes import binary_layer_kwargs
from ..normalization import ShiftBatchNormalization

#: Larq's own XNOR-style layers (no K), the baseline a Larq user would pick.
LARQ_BASELINE = {
    "input_quantizer": "ste_sign",
    "kernel_quantizer": "magnitude_aware_sign",
    "kernel_constraint": "weight_clip",
}


def layer_kwargs(mode, *, input_scaling=None, stochastic=False, seed=None, **quantizer_options):
    """``binary_layer_kwargs`` with the seed passed only where it applies.

    ``mode="larq"`` selects Larq's plain ``QuantConv2D``/``QuantDense`` with
    ``magnitude_aware_sign`` weights and ``ste_sign`` inputs (the baseline).
    """
    if mode == "larq":
        if input_scaling or stochastic or quantizer_options:
            raise ValueError(
                "mode='larq' is Larq's fixed baseline; it takes no "
                "input_scaling, stochastic or quantizer options"
            )
        return {**LARQ_BASELINE, "larq_layers": True}
    if stochastic:
        quantizer_options["seed"] = seed
    return binary_layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, **quantizer_options
    )


def _real_input_activation(x, kwargs):
    # Modes without binary inputs (fp, bwn) get the ReLU of their float twin where
    # the binary modes binarize.
    if kwargs.get("input_quantizer") is None:
        x = tf.keras.layers.Activation("relu")(x)
    return x


BATCH_NORMS = ("standard", "shift")
_batch_norm_kind = contextvars.ContextVar("batch_norm_kind", default="standard")
_input_normalization = contextvars.ContextVar("input_normalization", default=None)
# Binary layers built so far in this model: each stochastic quantizer's seed is
# derived from the model's seed and its layer's place, so no two draw alike.
_layer_count = contextvars.ContextVar("layer_count", default=None)


def model_builder(build):
    """Give a builder the ``batch_norm`` ("standard" or "shift") and
    ``input_normalization`` (None, or ``(mean, std)``: the model takes uint8
    images and normalizes them itself) arguments."""

    @functools.wraps(build)
    def wrapper(*, batch_norm: str = "standard", input_normalization=None, **kwargs):
        if batch_norm not in BATCH_NORMS:
            raise ValueError(
                f"`batch_norm` must be one of {BATCH_NORMS}. Received: batch_norm={batch_norm!r}"
            )
        tokens = [
            (_batch_norm_kind, _batch_norm_kind.set(batch_norm)),
            (_input_normalization, _input_normalization.set(input_normalization)),
            (_layer_count, _layer_count.set([0])),
        ]
        try:
            return build(**kwargs)
        finally:
            for variable, token in reversed(tokens):
                variable.reset(token)

    return wrapper


def model_input(input_shape):
    """``(inputs, x)``: the model's Input, and what the first layer reads.

    With ``input_normalization=(mean, std)`` the input is uint8 and ``x`` is
    :class:`~xnor_larq.layers.InputNormalization` of it.
    """
    normalization = _input_normalization.get()
    if normalization is None:
        inputs = tf.keras.Input(input_shape)
        return inputs, inputs
    inputs = tf.keras.Input(input_shape, dtype="uint8")
    mean, std = normalization
    return inputs, InputNormalization(mean, std, name="input_normalization")(inputs)


def derived_seed(seed: int, layer_index: int, slot: int) -> int:
    """The op seed of one stochastic quantizer: distinct per layer and per slot
    (0: inputs, 1: weights), fixed by the model's ``seed``."""
    return (int(seed) * 1_000_003 + 2 * layer_index + slot) % (2**31 - 1)


def batch_norm(x, momentum=0.9, epsilon=1e-4, name=None):
    """The model's BatchNormalization: Keras's, or BNN's shift-based one.

    Keras's is synchronized across replicas when built under a multi-replica
    strategy, so that statistics come from the global batch and a distributed
    run computes what one device would.
    """
    if _batch_norm_kind.get() == "shift":
        return ShiftBatchNormalization(momentum=momentum, epsilon=epsilon, name=name)(x)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, synchronized=replicas > 1, name=name
    )(x)


def binary_conv_block(
    x,
    filters,
    kwargs,
    *,
    kernel_size=3,
    strides=1,
    padding="same",
    pool=None,
    pool_strides=None,
    bn_momentum=0.9,
    dropout=0.0,
    post_activation=None,
    name=None,
):
    """BN → (binarize inside the conv) → binary conv → optional max-pool.

    ``dropout`` drops the (real) conv input; ``post_activation`` (e.g. "relu",
    as XNOR-Net-PyTorch's NIN does) follows the conv.
    """
    x = batch_norm(x, momentum=bn_momentum)
    x = _real_input_activation(x, kwargs)
    if dropout:
        x = tf.keras.layers.Dropout(dropout)(x)
    x = _conv_class(kwargs)(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        name=name,
        **_layer_args(kwargs),
    )(x)
    if post_activation:
        x = tf.keras.layers.Activation(post_activation)(x)
    if pool:
        x = tf.keras.layers.MaxPool2D(
            pool, strides=pool_strides, padding="same" if pool_strides else "valid"
        )(x)
    return x


def binary_dense_block(x, units, kwargs, *, bn_momentum=0.9, dropout=0.0, name=None):
    """BN → (binarize inside the layer) → binary dense."""
    x = batch_norm(x, momentum=bn_momentum)
    x = _real_input_activation(x, kwargs)
    if dropout:
        x = tf.keras.layers.Dropout(dropout)(x)
    dense = lq.layers.QuantDense if kwargs.get("larq_layers") else ScaledQuantDense
    return dense(units, use_bias=False, name=name, **_layer_args(kwargs))(x)


def _conv_class(kwargs):
    return lq.layers.QuantConv2D if kwargs.get("larq_layers") else ScaledQuantConv2D


def _layer_args(kwargs):
    args = {k: v for k, v in kwargs.items() if k != "larq_layers"}
    count = _layer_count.get()
    if count is None:
        count = _layer_count_outside_builders
    index = count[0]
    count[0] += 1
    for slot, key in enumerate(("input_quantizer", "kernel_quantizer")):
        quantizer = args.get(key)
        if (
            isinstance(quantizer, dict)
            and quantizer.get("class_name") == "StochasticSign"
            and quantizer["config"].get("seed") is not None
        ):
            config = dict(quantizer["config"])
            config["seed"] = derived_seed(config["seed"], index, slot)
            args[key] = {"class_name": "StochasticSign", "config": config}
    return args


_layer_count_outside_builders = [0]


def float_stem(
    x,
    filters,
    kernel_size,
    *,
    strides=1,
    padding="same",
    bn_momentum=0.9,
    pool=None,
    pool_strides=None,
):
    """The full-precision first layer: conv → BN → ReLU (→ max-pool)."""
    x = tf.keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name="float_conv"
    )(x)
    x = batch_norm(x, momentum=bn_momentum)
    x = tf.keras.layers.Activation("relu")(x)
    if pool:
        x = tf.keras.layers.MaxPool2D(pool, strides=pool_strides, padding="same")(x)
    return x


def float_classifier(x, num_classes, *, bn_momentum=0.9, name="float_dense"):
    """The full-precision last layer: BN → dense → softmax."""
    x = batch_norm(x, momentum=bn_momentum)
    x = tf.keras.layers.Dense(num_classes, name=name)(x)
    return tf.keras.layers.Activation("softmax", dtype="float32")(x)


def count_binary_layers(model) -> int:
    """Layers whose kernel quantizer is 1-bit (what the docstrings count)."""
    return sum(
        getattr(getattr(layer, "kernel_quantizer", None), "precision", None) == 1
        for layer in model.layers
    )
