"""ShiftBatchNormalization against a numpy re-computation of docs/MATH.md §5."""

import numpy as np
import pytest
import tensorflow as tf
from references import np_ap2

from xnor_larq import ShiftBatchNormalization


def np_shift_bn_train(x, gamma, beta, epsilon, axis=-1):
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    variance = (centered * np_ap2(centered)).mean(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    x_hat = centered * np_ap2(1 / np.sqrt(variance + epsilon))
    return np_ap2(gamma).reshape(shape) * x_hat + beta.reshape(shape), mean, variance


@pytest.mark.parametrize("shape,axis", [((16, 5, 5, 3), -1), ((32, 6), -1), ((8, 4, 3, 3), 1)])
def test_training_and_inference_match_numpy(rng, shape, axis):
    x = rng.normal(loc=0.7, scale=2.0, size=shape).astype("float32")
    channels = shape[axis]
    gamma = rng.uniform(0.3, 3.0, size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    layer = ShiftBatchNormalization(axis=axis, momentum=0.8, epsilon=1e-3)
    layer.build(shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)

    expected, mean, variance = np_shift_bn_train(x.astype(np.float64), gamma, beta, 1e-3, axis)
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, 0.2 * mean.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, 0.8 + 0.2 * variance.ravel(), rtol=1e-5)

    moving_mean, moving_variance = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    reshape = [1] * len(shape)
    reshape[axis] = -1
    inference = (x - moving_mean.reshape(reshape)) * np_ap2(
        1 / np.sqrt(moving_variance + 1e-3)
    ).reshape(reshape) * np_ap2(gamma).reshape(reshape) + beta.reshape(reshape)
    for output in (layer(x), layer(x, training=False)):
        np.testing.assert_allclose(output, inference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, moving_mean)  # inference changes nothing


def test_every_scale_is_a_power_of_two(rng):
    # Integers in a batch of 8 make the mean exact, so y / (x - μ) is the applied
    # scale AP2(γ)·AP2(1/sqrt(σ²+ε)) with no rounding.
    x = rng.integers(-20, 20, size=(8, 4)).astype("float32")
    layer = ShiftBatchNormalization(
        center=False, gamma_initializer=tf.constant_initializer([0.3, 1.7, 5.0, 0.01])
    )
    y = layer(x, training=True).numpy()
    centered = x - x.mean(axis=0)
    nonzero = centered != 0
    scale = y[nonzero] / centered[nonzero]
    mantissa, _ = np.frexp(scale)
    assert np.all(mantissa == 0.5)
    mantissa, _ = np.frexp(layer(x, training=False).numpy() / (x - layer.moving_mean.numpy()))
    assert np.all(mantissa == 0.5)


def test_gamma_and_beta_learn():
    layer = ShiftBatchNormalization()
    x = tf.random.normal((16, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) * tf.range(3, dtype=tf.float32))
    grads = tape.gradient(loss, [layer.gamma, layer.beta])
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_get_config_round_trip_and_bad_arguments():
    layer = ShiftBatchNormalization(axis=1, momentum=0.5, epsilon=1e-4, center=False)
    config = layer.get_config()
    assert ShiftBatchNormalization.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="momentum"):
        ShiftBatchNormalization(momentum=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        ShiftBatchNormalization(epsilon=0)
    with pytest.raises(ValueError, match="out of range"):
        ShiftBatchNormalization(axis=3)(tf.zeros((2, 3)))


def _conv_shift_bn_dense():
    return tf.keras.Sequential(
        [
            tf.keras.Input((4, 4, 3)),
            tf.keras.layers.Conv2D(5, 3, padding="same", use_bias=False),
            ShiftBatchNormalization(momentum=0.5),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(3),
        ]
    )


def _one_sgd_step(strategy, x, y, seed_weights):
    with strategy.scope():
        model = _conv_shift_bn_dense()
        model.set_weights(seed_weights)
        model.compile(tf.keras.optimizers.SGD(0.5), "mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return {w.name: w.numpy() for w in model.weights}


def test_two_replicas_normalize_with_the_global_batch(mirrored_strategy, rng):
    # Skewed halves: per-replica statistics would differ from the global ones
    # by far more than the tolerance.
    x = rng.normal(size=(16, 4, 4, 3)).astype("float32")
    x[8:] = x[8:] * 3 + 2
    y = rng.normal(size=(16, 3)).astype("float32")
    weights = _conv_shift_bn_dense().get_weights()
    one = _one_sgd_step(tf.distribute.OneDeviceStrategy("/cpu:0"), x, y, weights)
    two = _one_sgd_step(mirrored_strategy, x, y, weights)
    assert any("moving_variance" in name for name in one)
    for (name, a), b in zip(one.items(), two.values()):
        np.testing.assert_allclose(b, a, atol=1e-4, err_msg=name)
    # and the step moved the weights (the comparison is not of untouched values)
    assert not np.allclose(one[next(iter(one))], weights[0])


def test_mixed_precision_inputs_keep_float32_statistics(rng):
    layer = ShiftBatchNormalization(dtype="mixed_float16")
    x = rng.normal(size=(8, 6)).astype("float16")
    out = layer(x, training=True)
    assert out.dtype == tf.float16 and layer.moving_mean.dtype == tf.float32
    reference = ShiftBatchNormalization()
    np.testing.assert_allclose(
        out.numpy(), reference(x.astype("float32"), training=True).numpy(), atol=2e-2
    )
