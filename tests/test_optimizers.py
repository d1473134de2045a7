"""ShiftAdaMax against a numpy re-computation of docs/MATH.md §5."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from references import np_ap2

from xnor_larq import ShiftAdaMax, ShiftBatchNormalization


def F32(value):  # noqa: N802
    """Keras keeps hyperparameters as float32 variables; the reference uses the same."""
    return float(np.float32(value))


BETA_1, BETA_2 = F32(0.9), F32(0.999)


def np_shift_adamax(theta, grads, lr, beta_1=BETA_1, beta_2=BETA_2, epsilon=1e-7):
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    trajectory = []
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = np.maximum(beta_2 * v, np.abs(g))
        theta = theta - lr * np_ap2(1 / (1 - beta_1**t)) * m * np_ap2(1 / (v + epsilon))
        trajectory.append(theta.copy())
    return trajectory


def test_updates_match_numpy_over_several_steps(rng):
    theta0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) * 10.0 ** rng.uniform(-3, 1) for _ in range(6)]
    grads[2][0, 0] = 0.0
    var = tf.Variable(theta0, dtype=tf.float64)
    optimizer = ShiftAdaMax(learning_rate=0.01)
    expected = np_shift_adamax(theta0, grads, F32(0.01))
    for g, theta in zip(grads, expected):
        optimizer.apply_gradients([(tf.constant(g), var)])
        np.testing.assert_allclose(var.numpy(), theta, rtol=1e-12, atol=1e-14)


def test_every_scale_is_a_power_of_two(rng):
    # learning_rate 1 (a power of two): θ_{t-1} − θ_t = m_t · 2^k exactly.
    var = tf.Variable(rng.normal(size=50), dtype=tf.float64)
    optimizer = ShiftAdaMax(learning_rate=1.0)
    m = np.zeros(50)
    for _ in range(4):
        g = rng.normal(size=50)
        var.assign(np.zeros(50))  # θ = 0 makes θ_t = −update exactly (no rounding)
        optimizer.apply_gradients([(tf.constant(g), var)])
        m = F32(0.9) * m + (1 - F32(0.9)) * g
        scale = -var.numpy() / m
        mantissa, _ = np.frexp(scale)
        np.testing.assert_array_equal(np.abs(mantissa), 0.5)


def test_zero_gradients_stay_finite():
    var = tf.Variable([1.0, 2.0])
    ShiftAdaMax().apply_gradients([(tf.zeros(2), var)])
    np.testing.assert_array_equal(var, [1.0, 2.0])


def _model():
    inputs = tf.keras.Input((6,))
    x = lq.layers.QuantDense(8, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")(
        inputs
    )
    x = ShiftBatchNormalization()(x)
    outputs = tf.keras.layers.Dense(3, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def test_fit_under_mirrored_strategy_and_in_case_optimizer(mirrored_strategy, rng):
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 3, size=32)
    with mirrored_strategy.scope():
        model = _model()
        model.compile(
            optimizer=lq.optimizers.CaseOptimizer(
                (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop()),
                default_optimizer=ShiftAdaMax(0.01),
            ),
            loss="sparse_categorical_crossentropy",
        )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    with mirrored_strategy.scope():
        model = _model()
        model.compile(
            optimizer=lq.optimizers.CaseOptimizer(
                (lq.optimizers.Bop.is_binary_variable, ShiftAdaMax(0.01)),
                default_optimizer=tf.keras.optimizers.legacy.Adam(0.01),
            ),
            loss="sparse_categorical_crossentropy",
        )
    assert np.isfinite(model.fit(x, y, batch_size=16, verbose=0).history["loss"][0])


@pytest.mark.parametrize("filename", ["model.keras", "model.h5"])
def test_save_load_with_optimizer_state(tmp_path, rng, filename):
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = _model()
    model.compile(
        optimizer=ShiftAdaMax(learning_rate=0.004, beta_1=0.8),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / filename)
    loaded = tf.keras.models.load_model(tmp_path / filename)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(loaded.optimizer, ShiftAdaMax)
    assert loaded.optimizer.get_config()["beta_1"] == pytest.approx(0.8)
    config = ShiftAdaMax(0.5, epsilon=1e-6).get_config()
    assert ShiftAdaMax.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="beta_2"):
        ShiftAdaMax(beta_2=1.5)
