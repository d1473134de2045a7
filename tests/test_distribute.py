"""Training under MirroredStrategy and Larq's model summary."""

import larq as lq
import numpy as np
import tensorflow as tf

from xnor_larq import ScaledQuantConv2D, ScaledQuantDense, StochasticSign


def build(mode_layers=True):
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same")(inputs)  # full-precision first
    x = tf.keras.layers.BatchNormalization()(x)
    x = ScaledQuantConv2D(8, 3, padding="same", use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = ScaledQuantConv2D(
        8,
        3,
        use_bias=False,
        input_quantizer=StochasticSign(seed=1),
        kernel_quantizer="stochastic_sign",
        input_scaling=False,
    )(x)
    x = tf.keras.layers.Flatten()(x)
    x = ScaledQuantDense(16, use_bias=False)(x)
    outputs = tf.keras.layers.Dense(4)(x)  # full-precision last
    return tf.keras.Model(inputs, outputs)


def test_one_training_step_under_mirrored_strategy(mirrored_strategy, tiny_images):
    images, labels = tiny_images
    assert mirrored_strategy.num_replicas_in_sync == 2
    with mirrored_strategy.scope():
        model = build()
        model.compile(
            optimizer=tf.keras.optimizers.Adam(0.01),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = model.trainable_weights
    changed = [not np.array_equal(b, a.numpy()) for b, a in zip(before, after)]
    assert all(changed)
    # the latent binary kernels stay within weight_clip's [-1, 1]
    for layer in model.layers:
        if isinstance(layer, (ScaledQuantConv2D, ScaledQuantDense)):
            assert np.abs(layer.kernel.latent_variable.numpy()).max() <= 1.0


def test_summary_counts_binarized_macs(capsys):
    model = build()
    lq.models.summary(model)
    printed = capsys.readouterr().out
    assert "Ratio of MACs that are binarized" in printed
    profile = lq.models.ModelProfile(model)
    binary_macs = profile.op_count("mac", 1)
    # 8·8 positions × 3·3·8 × 8 (second conv) + 6·6 × 3·3·8 × 8 + 288 × 16 (dense)
    assert binary_macs == 64 * 72 * 8 + 36 * 72 * 8 + 288 * 16
    assert profile.op_count("mac", 32) == 64 * 27 * 8 + 16 * 4
