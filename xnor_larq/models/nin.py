"""Network-in-Network for CIFAR-10, the model behind XNOR-Net's CIFAR-10 figure."""

from __future__ import annotations

import tensorflow as tf

from .blocks import batch_norm, binary_conv_block, layer_kwargs, model_builder, model_input


@model_builder
def nin(
    *,
    mode: str = "xnor",
    input_scaling: bool | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    num_classes: int = 10,
    input_shape=(32, 32, 3),
    bn_momentum: float = 0.9,
    dropout: float = 0.5,
    **quantizer_options,
) -> tf.keras.Model:
    """NIN as in the public XNOR-Net PyTorch reimplementation.

    float conv 192·5×5 → [bconv 160·1×1] → [bconv 96·1×1] → max-pool →
    [bconv 192·5×5 (dropout)] → [bconv 192·1×1] ×2 → avg-pool →
    [bconv 192·3×3 (dropout)] → [bconv 192·1×1] → BN → float conv 10·1×1 →
    global average. Seven binary layers, each BN → binarize → conv → ReLU.

    Reference CIFAR-10 accuracy: 86.28% XNOR-Net vs 89.67% full precision
    (the PyTorch reimplementation; docs/MATH.md §6).
    """
    kwargs = layer_kwargs(
        mode, input_scaling=input_scaling, stochastic=stochastic, seed=seed, **quantizer_options
    )
    block = dict(bn_momentum=bn_momentum, post_activation="relu")
    inputs, x = model_input(input_shape)
    x = tf.keras.layers.Conv2D(192, 5, padding="same", name="float_conv")(x)
    x = batch_norm(x, momentum=bn_momentum)
    x = tf.keras.layers.Activation("relu")(x)
    x = binary_conv_block(x, 160, kwargs, kernel_size=1, **block)
    x = binary_conv_block(x, 96, kwargs, kernel_size=1, **block)
    x = tf.keras.layers.MaxPool2D(3, strides=2, padding="same")(x)
    x = binary_conv_block(x, 192, kwargs, kernel_size=5, dropout=dropout, **block)
    x = binary_conv_block(x, 192, kwargs, kernel_size=1, **block)
    x = binary_conv_block(x, 192, kwargs, kernel_size=1, **block)
    x = tf.keras.layers.AveragePooling2D(3, strides=2, padding="same")(x)
    x = binary_conv_block(x, 192, kwargs, kernel_size=3, dropout=dropout, **block)
    x = binary_conv_block(x, 192, kwargs, kernel_size=1, **block)
    x = batch_norm(x, momentum=bn_momentum)
    x = tf.keras.layers.Conv2D(num_classes, 1, name="float_classifier")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Activation("softmax", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name=f"nin_{mode}")
