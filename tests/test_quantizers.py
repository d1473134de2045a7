"""Quantizers against numpy re-computations of docs/MATH.md §1–2."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from xnor_larq.quantizers import ScaledSign, StochasticSign, scaled_sign, stochastic_sign


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def np_scaled_sign_reference(w, g, per_channel, backward, clip_value):
    """(forward, gradient) of docs/MATH.md §1, written out with numpy."""
    axes = tuple(range(w.ndim - 1)) if per_channel else tuple(range(w.ndim))
    n = np.prod([w.shape[a] for a in axes])
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    b = np_sign(w)
    mask = np.ones_like(w) if clip_value is None else (np.abs(w) <= clip_value)
    ste = alpha * mask * g
    if backward == "ste":
        grad = ste
    elif backward == "paper":
        grad = g * (1.0 / n + alpha * mask)
    else:
        grad = ste + b / n * (g * b).sum(axis=axes, keepdims=True)
    return alpha * b, grad, alpha


def tf_forward_and_grad(fn, w, g):
    w = tf.Variable(w)
    with tf.GradientTape() as tape:
        out = fn(w)
        loss = tf.reduce_sum(out * g)
    return out.numpy(), tape.gradient(loss, w).numpy()


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (7, 6), (1, 1, 2, 3)])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("backward", ["paper", "exact", "ste"])
@pytest.mark.parametrize("clip_value", [1.0, 0.5, None])
def test_scaled_sign_matches_numpy(rng, shape, per_channel, backward, clip_value):
    w = rng.normal(scale=0.8, size=shape).astype("float32")
    g = rng.normal(size=shape).astype("float32")
    expected_out, expected_grad, alpha = np_scaled_sign_reference(
        w, g, per_channel, backward, clip_value
    )
    out, grad = tf_forward_and_grad(
        lambda v: scaled_sign(v, per_channel, backward, clip_value), w, g
    )
    np.testing.assert_allclose(out, expected_out, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    # α is one value per output channel (or one in all), and |out| equals it.
    assert alpha.size == (shape[-1] if per_channel else 1)
    np.testing.assert_allclose(np.abs(out), np.broadcast_to(alpha, shape), rtol=1e-6)


def test_exact_backward_is_autodiff_through_alpha(rng):
    """`exact` equals TensorFlow's own gradient of mean|W|·(STE sign)."""
    w = rng.normal(scale=0.5, size=(3, 3, 2, 4)).astype("float32")
    g = rng.normal(size=w.shape).astype("float32")

    def autodiff(v):
        alpha = tf.reduce_mean(tf.abs(v), axis=[0, 1, 2], keepdims=True)
        return alpha * lq.quantizers.ste_sign(v, clip_value=1.0)

    _, expected = tf_forward_and_grad(autodiff, w, g)
    _, grad = tf_forward_and_grad(lambda v: scaled_sign(v, backward="exact"), w, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_ste_backward_matches_larq_magnitude_aware_sign(rng):
    w = rng.normal(scale=0.7, size=(3, 3, 2, 4)).astype("float32")
    g = rng.normal(size=w.shape).astype("float32")
    larq_out, larq_grad = tf_forward_and_grad(lq.quantizers.MagnitudeAwareSign(), w, g)
    out, grad = tf_forward_and_grad(ScaledSign(backward="ste"), w, g)
    np.testing.assert_allclose(out, larq_out, rtol=1e-6)
    np.testing.assert_allclose(grad, larq_grad, rtol=1e-6)


@pytest.mark.parametrize("backward", ["paper", "exact", "ste"])
def test_scaled_sign_of_zero_kernel_is_finite(backward):
    w = np.zeros((3, 3, 2, 4), "float32")
    out, grad = tf_forward_and_grad(lambda v: scaled_sign(v, backward=backward), w, w + 1)
    assert np.all(out == 0)
    assert np.all(np.isfinite(grad))


def test_scaled_sign_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backward"):
        ScaledSign(backward="bogus")
    with pytest.raises(ValueError, match="clip_value"):
        ScaledSign(clip_value=-1.0)
    with pytest.raises(ValueError, match="rank >= 2"):
        scaled_sign(tf.ones((4,)))
    # A vector is fine with one scale for the whole tensor.
    np.testing.assert_allclose(
        scaled_sign(tf.constant([-2.0, 1.0]), per_channel=False), [-1.5, 1.5]
    )


def test_string_aliases_resolve():
    assert isinstance(lq.quantizers.get("scaled_sign"), ScaledSign)
    assert isinstance(lq.quantizers.get("ScaledSign"), ScaledSign)
    assert isinstance(lq.quantizers.get("stochastic_sign"), StochasticSign)
    with pytest.raises(ValueError, match="scaled_sing"):
        lq.quantizers.get("scaled_sing")


@pytest.mark.parametrize(
    "quantizer",
    [
        ScaledSign(per_channel=False, backward="exact", clip_value=None),
        ScaledSign(),
        StochasticSign(clip_value=0.5, seed=7),
    ],
)
def test_get_config_round_trip(quantizer):
    config = quantizer.get_config()
    clone = type(quantizer).from_config(config)
    assert clone.get_config() == config
    serialized = lq.quantizers.serialize(quantizer)
    restored = lq.quantizers.get(serialized)
    assert type(restored) is type(quantizer)
    assert restored.get_config() == config


# --- stochastic sign --------------------------------------------------------


def test_stochastic_sign_probability_matches_hard_sigmoid():
    values = np.array([-1.5, -1.0, -0.6, -0.2, 0.0, 0.3, 0.75, 1.0, 2.0], "float32")
    draws = 20000
    x = tf.constant(np.repeat(values[None, :], draws, axis=0))
    tf.random.set_seed(3)
    out = stochastic_sign(x, seed=11).numpy()
    assert set(np.unique(out)) <= {-1.0, 1.0}
    p_hat = (out == 1.0).mean(axis=0)
    p = np.clip((values + 1) / 2, 0, 1)
    # Five binomial standard deviations (plus float slack) on each value.
    bound = 5 * np.sqrt(p * (1 - p) / draws) + 1e-9
    assert np.all(np.abs(p_hat - p) <= bound), (p_hat, p)


def test_stochastic_sign_gradient_is_saturating_ste(rng):
    x = rng.uniform(-2, 2, size=(50,)).astype("float32")
    g = rng.normal(size=x.shape).astype("float32")
    _, grad = tf_forward_and_grad(lambda v: stochastic_sign(v), x, g)
    np.testing.assert_allclose(grad, g * (np.abs(x) <= 1.0))
    _, grad = tf_forward_and_grad(lambda v: StochasticSign(clip_value=0.5)(v, training=True), x, g)
    np.testing.assert_allclose(grad, g * (np.abs(x) <= 0.5))
    _, grad = tf_forward_and_grad(lambda v: StochasticSign()(v, training=False), x, g)
    np.testing.assert_allclose(grad, g * (np.abs(x) <= 1.0))


def test_stochastic_sign_is_deterministic_outside_training(rng):
    x = rng.uniform(-1, 1, size=(64, 10)).astype("float32")
    x[0, 0] = 0.0
    quantizer = StochasticSign()
    for training in (None, False):
        np.testing.assert_array_equal(quantizer(x, training=training), np_sign(x))
    # while training, values inside (-1, 1) flip at random
    assert not np.array_equal(quantizer(x, training=True), np_sign(x))


def _stochastic_model():
    inputs = tf.keras.Input((10,))
    outputs = lq.layers.QuantDense(
        6,
        input_quantizer=StochasticSign(seed=1),
        kernel_quantizer=StochasticSign(seed=2),
        kernel_constraint="weight_clip",
        kernel_initializer=tf.keras.initializers.RandomUniform(-0.9, 0.9),
    )(inputs)
    return tf.keras.Model(inputs, outputs)


def test_stochastic_model_deterministic_in_predict_and_evaluate(rng):
    x = rng.uniform(-1, 1, size=(32, 10)).astype("float32")
    y = rng.normal(size=(32, 6)).astype("float32")
    model = _stochastic_model()
    model.compile(loss="mse")
    kernel = model.layers[1].kernel.latent_variable.numpy()
    expected = np_sign(x) @ np_sign(kernel)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6)
    loss = np.mean((expected - y) ** 2)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), loss, rtol=1e-5)
    # the kernel quantizer sees training=True inside the layer call, too
    trained = model(x, training=True).numpy()
    assert not np.allclose(trained, expected)


def test_stochastic_training_repeats_with_seed(rng):
    x = rng.uniform(-1, 1, size=(32, 10)).astype("float32")
    y = rng.normal(size=(32, 6)).astype("float32")

    def run():
        tf.keras.utils.set_random_seed(42)
        model = _stochastic_model()
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="mse")
        history = model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
        return history.history["loss"], model.get_weights()

    loss_a, weights_a = run()
    loss_b, weights_b = run()
    assert loss_a == loss_b
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)


def test_stochastic_sign_rejects_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        StochasticSign(seed=1.5)
