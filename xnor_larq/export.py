"""Export to Larq Compute Engine (LCE) flatbuffers, checked against Keras.

``export_tflite(model, "model.tflite")`` converts with
``larq_compute_engine.convert_keras_model``, runs LCE's interpreter (reference
kernels on x86) on sample inputs, compares with Keras, and measures the file
against a float32 TFLite conversion of the same model.

LCE bitpacks binary *convolutions* only; a binary dense layer would stay
float32. Before converting, every binary dense layer is therefore rewritten as
the 1×1 binary convolution it equals (on a 1×1 map; XNOR-Net's β then is K),
so that LCE packs its weights too. α is folded into LCE's per-channel output
multiplier, K stays a float multiplication.

A caveat measured here: in an *untrained* model every BatchNormalization is
the identity, so integer binary-conv sums reach exactly 0 and ``sign(0)``
ties decide the output; LCE can break those ties differently from TensorFlow,
and the check then fails. Trained models (non-trivial BN statistics) agree.

One case is refused before converting: LCE 0.16 computes a zero-padded
("same", ``pad_values=0``) binary convolution wrongly when its input map is
smaller than the kernel (measured: a 3×3 kernel on a 2×2 map, a 5×5 kernel on
a 4×4 map). The ImageNet models at their native 224×224 never hit it; the same
models built for 64×64 inputs do, in their last stages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import larq as lq
import numpy as np
import tensorflow as tf
from larq import utils as lq_utils

from .layers import ScaledQuantDense

__all__ = ["ExportReport", "UnsupportedLayerError", "export_tflite", "lce_compatible"]


class UnsupportedLayerError(ValueError):
    """The model holds a layer the exporter cannot convert."""


@dataclass
class ExportReport:
    output: str
    size_bytes: int
    float32_size_bytes: int
    size_ratio: float
    max_abs_difference: float
    top1_agreement: float
    samples: int

    def summary(self) -> str:
        size = f"{self.output}: {self.size_bytes / 1024:.1f} KiB"
        if self.float32_size_bytes:
            size += (
                f" (float32 TFLite: {self.float32_size_bytes / 1024:.1f} KiB, "
                f"{self.size_ratio:.1f}x smaller)"
            )
        return (
            f"{size}; LCE vs Keras on {self.samples} samples: max |diff| "
            f"{self.max_abs_difference:.2e}, top-1 agreement {self.top1_agreement:.1%}"
        )


@lq_utils.register_keras_custom_object
class DenseAsConv1x1(tf.keras.layers.Layer):
    """A binary dense layer computed as a 1×1 binary convolution (for LCE)."""

    def __init__(self, conv_config, conv_class="ScaledQuantConv2D", **kwargs):
        super().__init__(**kwargs)
        self.conv_config = conv_config
        self.conv_class = conv_class
        classes = {"ScaledQuantConv2D": _scaled_conv(), "QuantConv2D": lq.layers.QuantConv2D}
        self.conv = classes[conv_class].from_config(conv_config)

    def build(self, input_shape):
        self.conv.build((None, 1, 1, input_shape[-1]))
        super().build(input_shape)

    def call(self, inputs):
        outputs = self.conv(inputs[:, None, None, :])
        return outputs[:, 0, 0, :]

    def get_config(self):
        return {
            **super().get_config(),
            "conv_config": self.conv_config,
            "conv_class": self.conv_class,
        }


def _scaled_conv():
    from .layers import ScaledQuantConv2D

    return ScaledQuantConv2D


def _dense_to_conv(layer):
    config = layer.get_config()
    is_scaled = isinstance(layer, ScaledQuantDense)
    conv_config = {
        key: config[key]
        for key in (
            "activation",
            "use_bias",
            "kernel_initializer",
            "bias_initializer",
            "kernel_regularizer",
            "bias_regularizer",
            "activity_regularizer",
            "kernel_constraint",
            "bias_constraint",
            "input_quantizer",
            "kernel_quantizer",
            "dtype",
        )
        if key in config
    }
    conv_config.update(filters=config["units"], kernel_size=(1, 1), name=f"{layer.name}_conv")
    if is_scaled:
        conv_config.update(
            input_scaling=layer.input_scaling, input_scaling_gradient=layer.input_scaling_gradient
        )
    replacement = DenseAsConv1x1(
        conv_config, "ScaledQuantConv2D" if is_scaled else "QuantConv2D", name=layer.name
    )
    return replacement


def _is_binary_dense(layer):
    return (
        isinstance(layer, lq.layers.QuantDense)
        and getattr(layer.kernel_quantizer, "precision", None) == 1
    )


def _is_binary_conv(layer):
    return (
        isinstance(layer, lq.layers.QuantConv2D)
        and getattr(layer.kernel_quantizer, "precision", None) == 1
        and getattr(layer.input_quantizer, "precision", None) == 1
    )


def _check_zero_padding(layer):
    """Refuse the binary convolutions that LCE 0.16 computes wrongly.

    Measured here (tests/test_export.py): with ``padding="same"`` and zero
    padding (``pad_values=0``), LCE's binary convolution disagrees with
    TensorFlow whenever the input map is smaller than the dilated kernel in
    height or width (e.g. a 3×3 kernel on a 2×2 map); one padding is exact.
    """
    if not _is_binary_conv(layer) or layer.padding != "same" or layer.pad_values != 0:
        return
    spatial = layer.input_shape[1:3]
    extent = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation_rate)]
    if any(size is not None and size < span for size, span in zip(spatial, extent)):
        raise UnsupportedLayerError(
            f"Binary convolution '{layer.name}' has a {spatial[0]}×{spatial[1]} input "
            f"map, smaller than its {extent[0]}×{extent[1]} (dilated) kernel, with "
            "zero 'same' padding: Larq Compute Engine 0.16 computes this case wrongly. "
            "Build the model for larger inputs (e.g. the ImageNet models at their "
            "native 224×224), or give that layer pad_values=1.0 or padding='valid'."
        )


def _check_supported(model):
    for layer in model.layers:
        _check_zero_padding(layer)
        if isinstance(layer, tf.keras.Model):
            raise UnsupportedLayerError(
                f"Nested model '{layer.name}' is not supported by the exporter; build the "
                "model flat (functional API) or export the inner model."
            )
        if _is_binary_dense(layer) and len(layer.input_shape) != 2:
            raise UnsupportedLayerError(
                f"Binary dense layer '{layer.name}' takes inputs of rank "
                f"{len(layer.input_shape)}; only (batch, features) inputs can be exported. "
                "Add a Flatten before it."
            )


def lce_compatible(model: tf.keras.Model) -> tf.keras.Model:
    """The same function with binary dense layers as 1×1 binary convolutions."""
    _check_supported(model)
    if not any(_is_binary_dense(layer) for layer in model.layers):
        return model
    clone = tf.keras.models.clone_model(
        model,
        clone_function=lambda layer: (
            _dense_to_conv(layer)
            if _is_binary_dense(layer)
            else layer.__class__.from_config(layer.get_config())
        ),
    )
    for original, copy in zip(model.layers, clone.layers):
        weights = original.get_weights()
        if isinstance(copy, DenseAsConv1x1):
            weights = [weights[0][None, None], *weights[1:]]
        copy.set_weights(weights)
    return clone


def _load(model):
    if isinstance(model, tf.keras.Model):
        return model
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        return tf.keras.models.load_model(path)
    except Exception as error:  # Keras raises many types for a bad file
        raise ValueError(f"{path}: could not load a Keras model ({error})") from error


def export_tflite(
    model,
    output,
    *,
    sample_inputs=None,
    samples: int = 32,
    seed: int = 0,
    tolerance: float = 1e-3,
    compare_float: bool = True,
) -> ExportReport:
    """Convert ``model`` (a Keras model or a saved file) to an LCE flatbuffer.

    Checks LCE's interpreter against Keras on ``sample_inputs`` (or ``samples``
    random inputs in [-1, 1]) and raises if outputs differ by more than
    ``tolerance`` or top-1 agrees on fewer than 99%; no file is left behind on
    failure. ``compare_float=False`` skips the float32 TFLite conversion (its
    size is then reported as 0).
    """
    import larq_compute_engine as lce

    keras_model = _load(model)
    output = Path(output)
    if output.suffix != ".tflite":
        raise ValueError(f"--output must end in .tflite. Received: {output}")
    if output.is_dir():
        raise IsADirectoryError(
            f"--output {output} is a folder; give a file path ending in .tflite"
        )
    if not output.parent.is_dir():
        raise FileNotFoundError(f"folder {output.parent} for --output does not exist")
    if not os.access(output.parent, os.W_OK):
        raise PermissionError(f"--output {output}: folder {output.parent} is not writable")
    exportable = lce_compatible(keras_model)
    flatbuffer = lce.convert_keras_model(exportable)
    float_flatbuffer = (
        tf.lite.TFLiteConverter.from_keras_model(exportable).convert() if compare_float else b""
    )

    if sample_inputs is None:
        shape = keras_model.input_shape[1:]
        sample_inputs = np.random.default_rng(seed).uniform(-1, 1, (samples, *shape))
    sample_inputs = np.asarray(sample_inputs, np.float32)
    interpreter = lce.testing.Interpreter(flatbuffer)
    lce_outputs = np.concatenate([interpreter.predict(x[None]) for x in sample_inputs])
    keras_outputs = keras_model(sample_inputs, training=False).numpy()
    difference = float(np.abs(lce_outputs - keras_outputs).max())
    agreement = float(np.mean(lce_outputs.argmax(-1) == keras_outputs.argmax(-1)))
    if difference > tolerance or agreement < 0.99:
        raise ValueError(
            f"LCE's output differs from Keras's (max |diff| {difference:.3g}, top-1 "
            f"agreement {agreement:.1%}); nothing was written to {output}."
        )
    tmp = output.with_name(output.name + ".tmp")
    try:
        tmp.write_bytes(flatbuffer)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        str(output),
        len(flatbuffer),
        len(float_flatbuffer),
        len(float_flatbuffer) / len(flatbuffer),
        difference,
        agreement,
        len(sample_inputs),
    )
