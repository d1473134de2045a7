"""GoogLeNet (Inception-v1) with binary convolutions, for ImageNet."""

from __future__ import annotations

import tensorflow as tf

from .blocks import binary_conv_block, float_classifier, float_stem, layer_kwargs, model_builder, model_input

# (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection) of each module.
_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _inception(x, filters, kwargs, bn_momentum):
    f1, f3r, f3, f5r, f5, fp = filters
    conv = dict(bn_momentum=bn_momentum)
    branch1 = binary_conv_block(x, f1, kwargs, kernel_size=1, **conv)
    branch3 = binary_conv_block(x, f3r, kwargs, kernel_size=1, **conv)
    branch3 = binary_conv_block(branch3, f3, kwargs, kernel_size=3, **conv)
    branch5 = binary_conv_block(x, f5r, kwargs, kernel_size=1, **conv)
    branch5 = binary_conv_block(branch5, f5, kwargs, kernel_size=5, **conv)
    pooled = tf.keras.layers.MaxPool2D(3, strides=1, padding="same")(x)
    branch_pool = binary_conv_block(pooled, fp, kwargs, kernel_size=1, **conv)
    return tf.keras.layers.Concatenate()([branch1, branch3, branch5, branch_pool])


@model_builder
def googlenet(
    *,
    mode: str = "bwn",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 1000,
    input_shape=(224, 224, 3),
    bn_momentum: float = 0.9,
    dropout: float = 0.4,
    **quantizer_options,
) -> tf.keras.Model:
    """Inception-v1 without auxiliary heads; every conv but the 7×7 stem is binary.

    Float 7×7/2 stem → pool → [b1×1 64] → [b3×3 192] → pool → 3a, 3b → pool →
    4a–4e → pool → 5a, 5b → global average → dropout → float FC. 56 binary
    layers. Defaults to BWN, the setting the paper reports.

    Reference ImageNet top-1/top-5 (XNOR-Net paper, table 2): full precision
    71.3/90.0, BWN 65.5/86.1. https://arxiv.org/abs/1603.05279
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    conv = dict(bn_momentum=bn_momentum)
    inputs, x = model_input(input_shape)
    x = float_stem(x, 64, 7, strides=2, pool=3, pool_strides=2, **conv)
    x = binary_conv_block(x, 64, kwargs, kernel_size=1, **conv)
    x = binary_conv_block(x, 192, kwargs, kernel_size=3, **conv)
    x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same")(x)
    for name, filters in _MODULES.items():
        if name in ("4a", "5a"):
            x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same")(x)
        x = _inception(x, filters, kwargs, bn_momentum)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = tf.keras.layers.Dropout(dropout)(x)
    outputs = float_classifier(x, num_classes, **conv)
    return tf.keras.Model(inputs, outputs, name=f"googlenet_{mode}")
