"""AlexNet as binarized in XNOR-Net (Rastegari et al. 2016), for ImageNet."""

from __future__ import annotations

import tensorflow as tf

from .blocks import (
    model_input,
    binary_conv_block,
    binary_dense_block,
    float_classifier,
    float_stem,
    layer_kwargs,
    model_builder,
)


@model_builder
def alexnet(
    *,
    mode: str = "xnor",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 1000,
    input_shape=(224, 224, 3),
    bn_momentum: float = 0.9,
    dropout: float = 0.0,
    **quantizer_options,
) -> tf.keras.Model:
    """XNOR-Net's AlexNet (BN version): float conv1, 4 binary convs, 2 binary FCs.

    conv1 96·11×11/4 (float) → pool → [BN → bconv 256·5×5 → pool] →
    [BN → bconv 384·3×3] ×2 → [BN → bconv 256·3×3 → pool] → [BN → bFC 4096] ×2 →
    BN → float FC. Six binary layers.

    Reference ImageNet top-1/top-5 (XNOR-Net paper, table 1): full precision
    56.6/80.2, BWN 56.8/79.4, XNOR-Net 44.2/69.2.
    https://arxiv.org/abs/1603.05279
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    block = dict(bn_momentum=bn_momentum)
    inputs, x = model_input(input_shape)
    x = float_stem(x, 96, 11, strides=4, padding="same", pool=3, pool_strides=2, **block)
    x = binary_conv_block(x, 256, kwargs, kernel_size=5, pool=3, pool_strides=2, **block)
    x = binary_conv_block(x, 384, kwargs, **block)
    x = binary_conv_block(x, 384, kwargs, **block)
    x = binary_conv_block(x, 256, kwargs, pool=3, pool_strides=2, **block)
    x = tf.keras.layers.Flatten()(x)
    x = binary_dense_block(x, 4096, kwargs, dropout=dropout, **block)
    x = binary_dense_block(x, 4096, kwargs, dropout=dropout, **block)
    outputs = float_classifier(x, num_classes, **block)
    return tf.keras.Model(inputs, outputs, name=f"alexnet_{mode}")
