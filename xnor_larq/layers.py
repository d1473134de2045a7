"""XNOR-Net's scaled binary layers: Larq layers times the input scale K (or β).

``ScaledQuantConv2D`` computes, for a real input ``I`` (docs/MATH.md §3)::

    A = mean_c |I|,   K = A ∗ k  (k = 1/(kh·kw), the layer's strides/padding/dilation)
    output = (sign(I) ⊛ α·sign(W)) ⊙ K  (+ bias, then activation)

and ``ScaledQuantDense`` the dense form with ``β = mean |x|`` per sample. Both
are Larq layers (``QuantConv2D`` / ``QuantDense``) underneath, so every Larq
quantizer, constraint, ``pad_values`` and ``lq.models.summary`` works with them.
"""

from __future__ import annotations

import larq as lq
import tensorflow as tf
from larq import utils as lq_utils

__all__ = ["InputNormalization", "ScaledQuantConv2D", "ScaledQuantDense", "input_scaling_map"]

# The layers default to the XNOR-Net setting: binary inputs, scaled binary weights.
_XNOR_DEFAULTS = {
    "input_quantizer": "ste_sign",
    "kernel_quantizer": "scaled_sign",
    "kernel_constraint": "weight_clip",
}


def input_scaling_map(
    inputs: tf.Tensor,
    kernel_size,
    strides=(1, 1),
    padding: str = "valid",
    dilation_rate=(1, 1),
) -> tf.Tensor:
    """XNOR-Net's K for a channels-last batch: shape ``(batch, h_out, w_out, 1)``.

    The mean over input channels of ``|I|``, averaged over every
    ``kh × kw`` window of the convolution (zero padding counts as zeros, and the
    divisor is always ``kh·kw``).
    """
    kernel_height, kernel_width = kernel_size
    channel_mean = tf.reduce_mean(tf.abs(inputs), axis=-1, keepdims=True)
    box_filter = tf.fill(
        (kernel_height, kernel_width, 1, 1),
        tf.constant(1.0 / (kernel_height * kernel_width), dtype=inputs.dtype),
    )
    return tf.nn.conv2d(
        channel_mean,
        box_filter,
        strides=list(strides),
        padding=padding.upper(),
        dilations=list(dilation_rate),
    )


def _check_float_inputs(layer, inputs):
    if not inputs.dtype.is_floating:
        raise TypeError(
            f"{type(layer).__name__} '{layer.name}' needs floating-point inputs. "
            f"Received: dtype={inputs.dtype.name}. Cast first, e.g. "
            "`tf.cast(x, 'float32')`, or add a Rescaling layer."
        )


class _InputScaled:
    """Shared behaviour: run the Larq layer without bias/activation, scale, finish."""

    def _init_scaling(self, input_scaling, input_scaling_gradient):
        for name, value in (
            ("input_scaling", input_scaling),
            ("input_scaling_gradient", input_scaling_gradient),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
        self.input_scaling = input_scaling
        self.input_scaling_gradient = input_scaling_gradient

    def _scale(self, inputs):
        raise NotImplementedError

    def call(self, inputs):
        _check_float_inputs(self, inputs)
        if not self.input_scaling:
            return super().call(inputs)
        scale = self._scale(inputs)
        if not self.input_scaling_gradient:
            scale = tf.stop_gradient(scale)
        # K multiplies the binary product itself, before bias and activation.
        with (
            lq_utils.patch_object(self, "use_bias", False),
            lq_utils.patch_object(self, "activation", None),
        ):
            outputs = super().call(inputs)
        outputs = outputs * scale
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def _scaling_config(self):
        return {
            "input_scaling": self.input_scaling,
            "input_scaling_gradient": self.input_scaling_gradient,
        }


@lq_utils.register_keras_custom_object
class ScaledQuantConv2D(_InputScaled, lq.layers.QuantConv2D):
    """XNOR-Net convolution: a Larq ``QuantConv2D`` times the input scaling map K.

    Takes every argument of ``lq.layers.QuantConv2D`` and, unlike it, defaults
    to the XNOR-Net setting: ``input_quantizer="ste_sign"``,
    ``kernel_quantizer="scaled_sign"`` (per-channel α) and
    ``kernel_constraint="weight_clip"``. Pass ``input_quantizer=None`` and
    ``input_scaling=False`` for a Binary-Weight-Network layer, or use
    :func:`xnor_larq.binary_layer_kwargs`.

    Arguments:
        input_scaling: multiply the output by K, computed from the layer's real
            input (before binarization) with the layer's kernel size, strides,
            padding and dilation. False turns K off (the ablation).
        input_scaling_gradient: let gradients flow through K into the input.
            Default False: K is a constant in the backward pass, as in the
            authors' Caffe code. This keeps the straight-through estimator the
            only path to the input (as for Larq's ``ste_sign``) and saves the
            backward pass of K's box filter; set True for the Theano variant.

    Only ``data_format="channels_last"`` and ``groups=1`` are supported. With
    ``padding="same"``, K always pads with zeros (docs/MATH.md §3), whatever
    ``pad_values`` the binary convolution uses.

    Example::

        x = ScaledQuantConv2D(128, 3, padding="same", use_bias=False)(x)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        *args,
        input_scaling: bool = True,
        input_scaling_gradient: bool = False,
        **kwargs,
    ):
        for key, value in _XNOR_DEFAULTS.items():
            kwargs.setdefault(key, value)
        data_format = kwargs.get("data_format")
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "ScaledQuantConv2D supports only data_format='channels_last'. "
                f"Received: data_format={data_format!r}. Transpose inputs with "
                "`tf.transpose(x, [0, 2, 3, 1])`."
            )
        if kwargs.get("groups", 1) != 1:
            raise ValueError(
                f"ScaledQuantConv2D supports only groups=1. Received: groups={kwargs['groups']!r}"
            )
        self._init_scaling(input_scaling, input_scaling_gradient)
        super().__init__(filters, kernel_size, *args, **kwargs)
        if self.padding not in ("same", "valid"):
            raise ValueError(
                "ScaledQuantConv2D supports padding 'same' or 'valid'. "
                f"Received: padding={self.padding!r}"
            )

    def _scale(self, inputs):
        return input_scaling_map(
            inputs,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
        )

    def get_config(self):
        return {**super().get_config(), **self._scaling_config()}


@lq_utils.register_keras_custom_object
class ScaledQuantDense(_InputScaled, lq.layers.QuantDense):
    """XNOR-Net dense layer: a Larq ``QuantDense`` times ``β = mean |x|`` per sample.

    Takes every argument of ``lq.layers.QuantDense``, with the XNOR-Net
    defaults ``input_quantizer="ste_sign"``, ``kernel_quantizer="scaled_sign"``
    and ``kernel_constraint="weight_clip"``; ``input_scaling`` and
    ``input_scaling_gradient`` as for :class:`ScaledQuantConv2D`.
    """

    def __init__(
        self,
        units,
        *args,
        input_scaling: bool = True,
        input_scaling_gradient: bool = False,
        **kwargs,
    ):
        for key, value in _XNOR_DEFAULTS.items():
            kwargs.setdefault(key, value)
        self._init_scaling(input_scaling, input_scaling_gradient)
        super().__init__(units, *args, **kwargs)

    def _scale(self, inputs):
        return tf.reduce_mean(tf.abs(inputs), axis=-1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), **self._scaling_config()}


@lq_utils.register_keras_custom_object
class InputNormalization(tf.keras.layers.Layer):
    """``(x − mean) / std`` per channel, for uint8 images fed to the model as they are.

    Feeding uint8 moves a quarter of the bytes of float32 from the input
    pipeline to the accelerator; this layer, the model's first, normalizes on
    the device, in the layer's compute dtype (bfloat16/float16 under mixed
    precision).

    Arguments:
        mean, std: one value per channel (or one for all); ``std`` must be > 0.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        mean = [float(v) for v in tf.nest.flatten(list(mean) if hasattr(mean, "__len__") else [mean])]
        std = [float(v) for v in tf.nest.flatten(list(std) if hasattr(std, "__len__") else [std])]
        if not all(s > 0 for s in std):
            raise ValueError(f"`std` must be positive. Received: std={std!r}")
        if len(mean) != len(std):
            raise ValueError(
                f"`mean` and `std` need the same length. Received: {len(mean)} and {len(std)}"
            )
        self.mean, self.std = mean, std

    def call(self, inputs):
        mean = tf.constant(self.mean, self.compute_dtype)
        scale = tf.constant([1.0 / s for s in self.std], self.compute_dtype)
        return (tf.cast(inputs, self.compute_dtype) - mean) * scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}
