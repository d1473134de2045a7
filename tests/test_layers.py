"""Scaled layers against float references and a numpy K (docs/MATH.md §3)."""

import itertools

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from xnor_larq import ScaledQuantConv2D, ScaledQuantDense, binary_layer_kwargs


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def np_same_padding(size, kernel, stride, dilation):
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def np_input_scaling_map(inputs, kernel_size, strides, padding, dilation):
    """K written out with loops: zero padding, divisor kh·kw always."""
    kh, kw = kernel_size
    a = np.abs(inputs).mean(axis=-1)  # (batch, h, w)
    if padding == "same":
        pads = [
            np_same_padding(a.shape[1 + i], (kh, kw)[i], strides[i], dilation[i]) for i in range(2)
        ]
        a = np.pad(a, [(0, 0), pads[0], pads[1]])
    out_h = (a.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (a.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    k = np.zeros((a.shape[0], out_h, out_w, 1))
    for i in range(out_h):
        for j in range(out_w):
            rows = i * strides[0] + dilation[0] * np.arange(kh)
            cols = j * strides[1] + dilation[1] * np.arange(kw)
            k[:, i, j, 0] = a[:, rows][:, :, cols].sum(axis=(1, 2)) / (kh * kw)
    return k


CONV_CASES = [
    (k, s, p, d)
    for k, s, p, d in itertools.product([1, 3, 5], [1, 2], ["same", "valid"], [1, 2])
    if not (s > 1 and d > 1)  # TensorFlow's conv takes strides or dilation, not both
]


@pytest.mark.parametrize("kernel_size,stride,padding,dilation", CONV_CASES)
@pytest.mark.parametrize("batch,height,width", [(1, 11, 9), (3, 12, 13)])
def test_conv_equals_float_conv_of_signs_times_numpy_k(
    rng, kernel_size, stride, padding, dilation, batch, height, width
):
    c_in, c_out = 5, 7
    if padding == "valid" and (kernel_size - 1) * dilation + 1 > min(height, width):
        pytest.skip("kernel larger than the input")
    inputs = rng.normal(size=(batch, height, width, c_in)).astype("float32")
    inputs[0, 0, 0, :] = 0.0  # sign(0) = +1 must hold on the binary path too
    layer = ScaledQuantConv2D(
        c_out,
        kernel_size,
        strides=stride,
        padding=padding,
        dilation_rate=dilation,
        kernel_initializer=tf.keras.initializers.RandomUniform(-1, 1),
    )
    outputs = layer(inputs).numpy()

    latent = layer.kernel.latent_variable.numpy()
    alpha = np.abs(latent).mean(axis=(0, 1, 2))
    float_conv = tf.keras.layers.Conv2D(
        c_out,
        kernel_size,
        strides=stride,
        padding=padding,
        dilation_rate=dilation,
        use_bias=True,
    )
    float_conv.build(inputs.shape)
    float_conv.set_weights([alpha * np_sign(latent), layer.bias.numpy()])
    float_conv.bias.assign(np.zeros(c_out))
    k = np_input_scaling_map(inputs, (kernel_size,) * 2, (stride,) * 2, padding, (dilation,) * 2)
    expected = float_conv(np_sign(inputs)).numpy() * k + layer.bias.numpy()
    assert outputs.shape == expected.shape
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_k_multiplies_before_bias_and_activation(rng):
    inputs = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    layer = ScaledQuantConv2D(4, 3, activation="relu", bias_initializer="ones")
    outputs = layer(inputs).numpy()
    plain = ScaledQuantConv2D(4, 3, use_bias=False)
    plain.build(inputs.shape)
    plain.set_weights([layer.kernel.latent_variable.numpy()])
    expected = np.maximum(plain(inputs).numpy() + 1.0, 0.0)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


def test_without_k_equals_larq_quant_conv(rng):
    inputs = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    kwargs = dict(
        input_quantizer="ste_sign",
        kernel_quantizer="scaled_sign",
        kernel_constraint="weight_clip",
        padding="same",
    )
    ours = ScaledQuantConv2D(4, 3, input_scaling=False, **kwargs)
    larq = lq.layers.QuantConv2D(4, 3, **kwargs)
    larq.build(inputs.shape)
    ours.build(inputs.shape)
    ours.set_weights(larq.get_weights())
    np.testing.assert_allclose(ours(inputs), larq(inputs), rtol=1e-6)


def test_dense_equals_float_matmul_times_beta(rng):
    x = rng.normal(size=(5, 9)).astype("float32")
    layer = ScaledQuantDense(4, bias_initializer="ones")
    outputs = layer(x).numpy()
    latent = layer.kernel.latent_variable.numpy()
    alpha = np.abs(latent).mean(axis=0)
    beta = np.abs(x).mean(axis=1, keepdims=True)
    expected = (np_sign(x) @ (alpha * np_sign(latent))) * beta + 1.0
    # float32 sums of 9 terms against float64: absolute error ~1e-7 near 0.
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


def _input_gradient(layer, inputs, upstream):
    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(layer(inputs) * upstream)
    return tape.gradient(loss, inputs).numpy()


@pytest.mark.parametrize("through_k", [False, True])
def test_gradient_through_k_is_selectable(rng, through_k):
    inputs = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    upstream = rng.normal(size=(2, 7, 7, 4)).astype("float32")
    layer = ScaledQuantConv2D(
        4, 3, padding="same", use_bias=False, input_scaling_gradient=through_k
    )
    layer.build(inputs.shape)
    latent = layer.kernel.latent_variable.numpy()
    signed_kernel = tf.constant(np.abs(latent).mean(axis=(0, 1, 2)) * np_sign(latent), tf.float32)
    k_constant = np_input_scaling_map(inputs, (3, 3), (1, 1), "same", (1, 1))

    # Reference: the same product written with other ops; K either a numpy
    # constant or a differentiable conv of |I| with a (3, 3, c_in, 1) box.
    x = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(x)
        binary = tf.nn.conv2d(lq.quantizers.ste_sign(x), signed_kernel, 1, "SAME")
        if through_k:
            box = tf.fill((3, 3, 3, 1), 1.0 / 27.0)
            k = tf.nn.conv2d(tf.abs(x), box, 1, "SAME")
        else:
            k = tf.constant(k_constant, tf.float32)
        loss = tf.reduce_sum(binary * k * upstream)
    expected = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(
        _input_gradient(layer, inputs, upstream), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["fp", "bwn", "xnor", "bnn"])
def test_modes_build_the_papers_settings(rng, mode):
    inputs = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    layer = ScaledQuantConv2D(4, 3, use_bias=False, **binary_layer_kwargs(mode))
    outputs = layer(inputs).numpy()
    latent = getattr(layer.kernel, "latent_variable", layer.kernel).numpy()
    alpha = np.abs(latent).mean(axis=(0, 1, 2))
    weights = {
        "fp": latent,
        "bwn": alpha * np_sign(latent),
        "xnor": alpha * np_sign(latent),
        "bnn": np_sign(latent),
    }[mode]
    x = inputs if mode in ("fp", "bwn") else np_sign(inputs)
    expected = tf.nn.conv2d(x, weights.astype("float32"), 1, "VALID").numpy()
    if mode == "xnor":
        expected *= np_input_scaling_map(inputs, (3, 3), (1, 1), "valid", (1, 1))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


# --- bad input ----------------------------------------------------------------


def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="ndim"):
        ScaledQuantConv2D(4, 3)(tf.ones((2, 8, 3)))


def test_integer_inputs_are_refused():
    with pytest.raises(TypeError, match="floating-point.*int32"):
        ScaledQuantConv2D(4, 3)(tf.ones((1, 5, 5, 2), tf.int32))
    with pytest.raises(TypeError, match="floating-point"):
        ScaledQuantDense(4)(tf.ones((1, 5), tf.int32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"data_format": "channels_first"}, "channels_last"),
        ({"groups": 2}, "groups"),
        ({"input_scaling": "yes"}, "input_scaling"),
        ({"kernel_quantizer": "scaled_sing"}, "scaled_sing"),
        ({"padding": "foo"}, "foo"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaledQuantConv2D(4, 3, **kwargs)


def test_binary_layer_kwargs_refuses_unknown_mode():
    with pytest.raises(ValueError, match="xnr"):
        binary_layer_kwargs("xnr")
    with pytest.raises(ValueError, match="stochastic"):
        binary_layer_kwargs("xnor", stochastic=True)


def test_zero_kernel_and_zero_inputs_give_finite_outputs_and_gradients():
    layer = ScaledQuantConv2D(
        4, 3, padding="same", kernel_initializer="zeros", bias_initializer="ones"
    )
    for inputs in (tf.zeros((2, 5, 5, 3)), tf.random.normal((2, 5, 5, 3))):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
        gradients = tape.gradient(outputs, [inputs, *layer.trainable_weights])
        np.testing.assert_array_equal(outputs, 1.0)  # only the bias is left
        assert all(np.all(np.isfinite(g)) for g in gradients)
    dense = ScaledQuantDense(3)
    np.testing.assert_array_equal(dense(tf.zeros((2, 4))), 0.0)


def test_get_config_round_trip():
    layer = ScaledQuantConv2D(
        8,
        5,
        strides=2,
        padding="same",
        input_scaling=False,
        input_scaling_gradient=True,
        kernel_quantizer={"class_name": "ScaledSign", "config": {"backward": "exact"}},
    )
    config = layer.get_config()
    clone = ScaledQuantConv2D.from_config(config)
    assert clone.get_config() == config
    assert clone.kernel_quantizer.backward == "exact"
    dense = ScaledQuantDense(3, input_quantizer="stochastic_sign")
    assert ScaledQuantDense.from_config(dense.get_config()).get_config() == dense.get_config()


def test_input_normalization_matches_numpy_and_survives_save_load(tmp_path, rng):
    from xnor_larq.layers import InputNormalization
    from xnor_larq.models import small_cnn

    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 5.0]
    layer = InputNormalization(mean, std)
    x = rng.integers(0, 256, size=(2, 3, 3, 3), dtype=np.uint8)
    np.testing.assert_allclose(layer(x).numpy(), (x - np.array(mean)) / np.array(std), rtol=1e-6)
    assert InputNormalization.from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="`std` must be positive"):
        InputNormalization([0.0], [0.0])
    model = small_cnn(mode="xnor", width=8, input_shape=(28, 28, 3),
                      input_normalization=(mean, std))
    assert model.inputs[0].dtype == tf.uint8
    model.save(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(tmp_path / "m.keras")
    images = rng.integers(0, 256, size=(2, 28, 28, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())
