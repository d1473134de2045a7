"""The compiled bitpacked kernels against TensorFlow/numpy references."""

import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import tensorflow as tf

from xnor_larq import bitpack
from xnor_larq.layers import input_scaling_map


def signs(rng, shape):
    return np.where(rng.normal(size=shape) < 0, -1.0, 1.0).astype("float32")


def reference_conv(x, kernel, strides, dilation, padding, pad_value):
    """tf.nn.conv2d of ±1 arrays; non-zero padding done by explicit np.pad."""
    if padding == "same" and pad_value != 0:
        (kh, kw), (h, w) = kernel.shape[:2], x.shape[1:3]
        pads = []
        for size, k, s, d in ((h, kh, strides[0], dilation[0]), (w, kw, strides[1], dilation[1])):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
        padding = "valid"
    return tf.nn.conv2d(x, kernel, strides, padding.upper(), dilations=dilation).numpy()


CASES = [
    # (height, width, channels, outputs, kernel, strides, dilation, padding, pad_value)
    (7, 5, 70, 13, (3, 3), (1, 1), (1, 1), "same", 0),
    (7, 5, 70, 13, (3, 3), (2, 2), (1, 1), "same", 1),
    (9, 8, 16, 5, (3, 3), (2, 2), (1, 1), "valid", 0),
    (6, 6, 130, 3, (5, 5), (1, 1), (1, 1), "same", -1),
    (8, 8, 32, 4, (3, 3), (1, 1), (2, 2), "same", 0),
    (11, 9, 64, 65, (3, 1), (1, 2), (1, 1), "same", 0),
    (2, 2, 64, 8, (3, 3), (1, 1), (1, 1), "same", 0),  # map smaller than kernel
    (5, 5, 1, 7, (1, 1), (1, 1), (1, 1), "valid", 0),
    # thin inputs, fields gathered as kernel-row runs (kw·C <= 64 bits):
    (9, 10, 16, 6, (3, 3), (1, 1), (1, 1), "same", 0),  # runs sliding along the row
    (8, 7, 4, 5, (3, 3), (1, 1), (1, 1), "same", -1),  # 5 runs to a word
    (10, 10, 8, 4, (3, 3), (1, 1), (2, 2), "same", 0),  # dilated: no sliding
    (9, 11, 21, 9, (3, 3), (1, 2), (1, 1), "same", -1),  # 63-bit runs, stride 2
    (6, 12, 12, 5, (2, 5), (1, 1), (1, 1), "same", 0),  # 60-bit runs of 5 taps
    # one word a pixel, wider kernel rows: interior pixels' taps appended unchecked
    (8, 9, 48, 6, (3, 3), (1, 1), (1, 1), "same", -1),  # taps straddling words
    (9, 10, 40, 5, (3, 2), (2, 1), (1, 1), "valid", 0),
    # two words a tap, 18 a field: the row's popcounts in one loop before the epilogue
    (7, 6, 128, 9, (3, 3), (1, 1), (1, 1), "same", 1),
]


@pytest.mark.parametrize("h,w,c,o,kernel,strides,dilation,padding,pad_value", CASES)
def test_binary_conv_is_exactly_the_integer_convolution(
    rng, h, w, c, o, kernel, strides, dilation, padding, pad_value
):
    x = signs(rng, (2, h, w, c))
    weights = signs(rng, (*kernel, c, o))
    packed, tap_sums = bitpack.pack_weights(weights)
    got = bitpack.binary_conv2d(
        bitpack.pack_channels(x),
        c,
        packed,
        tap_sums,
        kernel,
        strides=strides,
        dilation_rate=dilation,
        padding=padding,
        pad_value=pad_value,
    )
    expected = reference_conv(x, weights, strides, dilation, padding, pad_value)
    np.testing.assert_array_equal(got, expected)


def test_epilogue_applies_multiplier_scale_map_and_offset(rng):
    x, weights = signs(rng, (2, 6, 6, 40)), signs(rng, (3, 3, 40, 9))
    packed, tap_sums = bitpack.pack_weights(weights)
    multiplier, offset = rng.normal(size=9).astype("float32"), rng.normal(size=9).astype("float32")
    scale_map = rng.uniform(0.1, 2, size=(2, 6, 6)).astype("float32")
    got = bitpack.binary_conv2d(
        bitpack.pack_channels(x),
        40,
        packed,
        tap_sums,
        (3, 3),
        padding="same",
        multiplier=multiplier,
        offset=offset,
        scale_map=scale_map,
    )
    dot = reference_conv(x, weights, (1, 1), (1, 1), "same", 0)
    expected = dot * multiplier * scale_map[..., None] + offset
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


# 130 and 100: any width (whole and partial chunks of 8); the others have
# copies of the packing loop of their own
@pytest.mark.parametrize("channels", [130, 100, 16, 32, 64, 128, 256, 512])
@pytest.mark.parametrize("rows", [3, 600])  # packed on the calling thread, and in parallel
def test_packing_layout_and_size(rng, channels, rows):
    assert (rows * channels > bitpack.SERIAL_PACK_FLOATS) == (rows == 600)
    x = rng.normal(size=(rows, channels)).astype("float32")
    x[0, 5] = 0.0  # sign(0) = +1: a clear bit
    packed = bitpack.pack_channels(x)
    assert packed.shape == (rows, -(-channels // 64)) and packed.dtype == np.uint64
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[:, :channels]
    np.testing.assert_array_equal(bits, (x < 0).astype(np.uint8))
    tail = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[:, channels:]
    assert not tail.any()  # the unused tail of the last word stays clear
    again, abs_mean = bitpack.pack_channels(x, with_abs_mean=True)
    np.testing.assert_array_equal(again, packed)
    np.testing.assert_allclose(abs_mean, np.abs(x).mean(-1), rtol=1e-5)


@pytest.mark.parametrize(
    "kernel,strides,dilation,padding",
    [((3, 3), (1, 1), (1, 1), "same"), ((3, 3), (2, 2), (1, 1), "same"),
     ((5, 3), (2, 1), (1, 1), "valid"), ((3, 3), (1, 1), (2, 2), "same")],
)  # fmt: skip
def test_input_scaling_map_matches_the_layer(rng, kernel, strides, dilation, padding):
    x = rng.normal(size=(2, 9, 7, 5)).astype("float32")
    got = bitpack.input_scaling_map(
        x, kernel, strides=strides, dilation_rate=dilation, padding=padding
    )
    expected = input_scaling_map(tf.constant(x), kernel, strides, padding, dilation).numpy()
    np.testing.assert_allclose(got, expected[..., 0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pool,strides,padding", [(2, 2, "valid"), (3, 2, "same"), (3, 1, "same")])
def test_max_pool_matches_keras(rng, pool, strides, padding):
    x = rng.normal(size=(2, 7, 6, 5)).astype("float32")
    got = bitpack.max_pool2d(x, (pool, pool), (strides, strides), padding)
    layer = tf.keras.layers.MaxPool2D(pool, strides=strides, padding=padding)
    np.testing.assert_array_equal(got, layer(x).numpy())


def test_valid_convolution_larger_than_input_is_refused(rng):
    packed, tap_sums = bitpack.pack_weights(signs(rng, (5, 5, 8, 2)))
    x = bitpack.pack_channels(signs(rng, (1, 3, 3, 8)))
    with pytest.raises(ValueError, match="at least 5×5. Received: 3×3"):
        bitpack.binary_conv2d(x, 8, packed, tap_sums, (5, 5), padding="valid")


@pytest.mark.parametrize(
    "kernel,strides,dilation,padding",
    [((3, 3), (1, 1), (1, 1), "same"), ((7, 7), (2, 2), (1, 1), "same"),
     ((5, 3), (2, 1), (1, 1), "valid"), ((3, 3), (1, 1), (2, 2), "same")],
)  # fmt: skip
@pytest.mark.parametrize("outputs", [6, 16, 24, 40])  # 1-4 vector registers, padded or not
@pytest.mark.parametrize("channels", [3, 1])  # 1: 3×3 stride 1 has a copy of its own
def test_float_conv_matches_tensorflow(rng, kernel, strides, dilation, padding, outputs, channels):
    # 19 wide: several groups of interior pixels summed together, and border pixels
    x = rng.normal(size=(2, 11, 19, channels)).astype("float32")
    weights = rng.normal(size=(*kernel, channels, outputs)).astype("float32")
    got = bitpack.float_conv2d(x, weights, strides=strides, dilation_rate=dilation, padding=padding)
    expected = tf.nn.conv2d(x, weights, strides, padding.upper(), dilations=dilation).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 8])  # the direct loop, and im2col + BLAS
def test_prepared_float_conv_is_reusable_across_input_sizes(rng, channels):
    weights = rng.normal(size=(3, 3, channels, 5)).astype("float32")
    conv = bitpack.FloatConv2D(weights, strides=(2, 2), padding="same")
    assert conv.direct == (channels == 1)
    for height, width in [(9, 7), (12, 12)]:
        x = rng.normal(size=(2, height, width, channels)).astype("float32")
        expected = tf.nn.conv2d(x, weights, (2, 2), "SAME").numpy()
        np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 8])  # the direct loop, and im2col + BLAS
@pytest.mark.parametrize("with_bias, activation", [(True, None), (False, "relu"), (True, "relu")])
def test_float_conv_adds_its_bias_and_relu_in_the_call(rng, channels, with_bias, activation):
    weights = rng.normal(size=(3, 3, channels, 12)).astype("float32")
    bias = rng.normal(size=12).astype("float32") if with_bias else None
    conv = bitpack.FloatConv2D(weights, padding="same", bias=bias, activation=activation)
    x = rng.normal(size=(2, 9, 10, channels)).astype("float32")
    expected = tf.nn.conv2d(x, weights, 1, "SAME").numpy() + (0 if bias is None else bias)
    if activation == "relu":
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_float_conv_refuses_bad_kernels_padding_and_inputs(rng):
    with pytest.raises(ValueError, match=r"`kernel` must be .* Received: shape \(3, 3, 4\)"):
        bitpack.FloatConv2D(rng.normal(size=(3, 3, 4)))
    with pytest.raises(ValueError, match="padding='full'"):
        bitpack.FloatConv2D(rng.normal(size=(3, 3, 4, 2)), padding="full")
    with pytest.raises(ValueError, match="activation='tanh'"):
        bitpack.FloatConv2D(rng.normal(size=(3, 3, 4, 2)), activation="tanh")
    with pytest.raises(ValueError, match=r"`bias` must have shape \(2,\). Received: \(3,\)"):
        bitpack.FloatConv2D(rng.normal(size=(3, 3, 4, 2)), bias=np.zeros(3))
    conv = bitpack.FloatConv2D(rng.normal(size=(3, 3, 4, 2)))
    with pytest.raises(ValueError, match=r"\(batch, height, width, 4\).*shape \(1, 5, 5, 3\)"):
        conv(np.zeros((1, 5, 5, 3), np.float32))


@pytest.mark.parametrize("channels", [70, 16, 128])
def test_packing_with_a_folded_batch_norm_packs_the_affine_values(rng, channels):
    x = rng.normal(size=(2, 5, channels)).astype("float32")
    scale = rng.normal(size=channels).astype("float32")
    shift = rng.normal(size=channels).astype("float32")
    packed, abs_mean = bitpack.pack_channels(x, with_abs_mean=True, scale=scale, shift=shift)
    affine = x * scale + shift
    np.testing.assert_array_equal(packed, bitpack.pack_channels(affine))
    np.testing.assert_allclose(abs_mean, np.abs(affine).mean(-1), rtol=1e-5)


def test_weights_in_another_layout_are_refused(rng):
    packed, tap_sums = bitpack.pack_weights(signs(rng, (3, 3, 8, 6)))
    x = bitpack.pack_channels(signs(rng, (1, 4, 4, 8)))
    flat = packed.transpose(0, 2, 1).reshape(-1, packed.shape[1])  # (O, words): not interleaved
    with pytest.raises(ValueError, match="interleaved.*from pack_weights.*Received: shape"):
        bitpack.binary_conv2d(x, 8, flat, tap_sums, (3, 3))


@pytest.mark.parametrize("h,w,c,o,kernel,strides,dilation,padding,pad_value", CASES)
@pytest.mark.parametrize("input_scaling", [False, True])
def test_whole_binary_layer_equals_its_three_steps(
    rng, h, w, c, o, kernel, strides, dilation, padding, pad_value, input_scaling
):
    # BinaryConv2D (one compiled call) against pack_channels → input_scaling_map →
    # binary_conv2d, checked above against TensorFlow one by one.
    x = rng.normal(size=(2, h, w, c)).astype("float32")
    packed, tap_sums = bitpack.pack_weights(signs(rng, (*kernel, c, o)))
    scale, shift = rng.normal(size=c).astype("float32"), rng.normal(size=c).astype("float32")
    multiplier, offset = rng.normal(size=o).astype("float32"), rng.normal(size=o).astype("float32")
    geometry = dict(strides=strides, dilation_rate=dilation, padding=padding)
    layer = bitpack.BinaryConv2D(
        packed, tap_sums, c, kernel, pad_value=pad_value, multiplier=multiplier, offset=offset,
        input_scale=scale, input_shift=shift, input_scaling=input_scaling, **geometry,
    )  # fmt: skip
    x_packed, channel_mean = bitpack.pack_channels(x, True, scale=scale, shift=shift)
    scale_map = None
    if input_scaling:
        scale_map = bitpack.input_scaling_map(x, kernel, channel_mean=channel_mean, **geometry)
    expected = bitpack.binary_conv2d(
        x_packed, c, packed, tap_sums, kernel, pad_value=pad_value, multiplier=multiplier,
        offset=offset, scale_map=scale_map, **geometry,
    )  # fmt: skip
    np.testing.assert_array_equal(layer(x), expected)


@pytest.mark.parametrize("h,w,c,o,kernel,strides,dilation,padding,pad_value", CASES)
@pytest.mark.parametrize("pool_size", [(2, 2), (3, 2), (1, 2)])
def test_whole_binary_layer_with_a_fused_pool_equals_conv_then_pool(
    rng, h, w, c, o, kernel, strides, dilation, padding, pad_value, pool_size
):
    x = rng.normal(size=(2, h, w, c)).astype("float32")
    packed, tap_sums = bitpack.pack_weights(signs(rng, (*kernel, c, o)))
    options = dict(
        strides=strides, dilation_rate=dilation, padding=padding, pad_value=pad_value,
        multiplier=rng.normal(size=o), offset=rng.normal(size=o), input_scaling=True,
        input_shift=rng.normal(size=c),
    )  # fmt: skip
    conv = bitpack.BinaryConv2D(packed, tap_sums, c, kernel, **options)
    if any(size < pool for size, pool in zip(conv.output_shape(x.shape)[1:3], pool_size)):
        pytest.skip("the conv output is smaller than the pool")
    pooled = bitpack.BinaryConv2D(packed, tap_sums, c, kernel, pool_size=pool_size, **options)
    expected = bitpack.max_pool2d(conv(x), pool_size, pool_size, "valid")
    assert pooled.output_shape(x.shape) == expected.shape
    np.testing.assert_array_equal(pooled(x), expected)


def test_whole_binary_layer_refuses_bad_arguments_and_inputs(rng):
    packed, tap_sums = bitpack.pack_weights(signs(rng, (3, 3, 8, 6)))
    with pytest.raises(ValueError, match=r"`w_packed` must be the \(2, 3, 4\) array"):
        bitpack.BinaryConv2D(packed, tap_sums, 16, (3, 3))  # 16 channels: 144·16 bits
    with pytest.raises(ValueError, match=r"`tap_sums` must be \(outputs, 9\)"):
        bitpack.BinaryConv2D(packed, tap_sums[:, :4], 8, (3, 3))
    with pytest.raises(ValueError, match="padding='full'"):
        bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3), padding="full")
    with pytest.raises(ValueError, match="pad_value=2"):
        bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3), pad_value=2)
    with pytest.raises(ValueError, match=r"`offset` must have shape \(6,\). Received: \(5,\)"):
        bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3), offset=np.zeros(5))
    with pytest.raises(ValueError, match=r"`pool_size` must be two positive integers.*\(0, 2\)"):
        bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3), pool_size=(0, 2))
    pooled = bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3), pool_size=(4, 4))
    with pytest.raises(ValueError, match="4×4 max-pool needs a conv output of at least 4×4. "
                       "Received: 3×3"):  # fmt: skip
        pooled(np.zeros((1, 5, 5, 8), np.float32))
    layer = bitpack.BinaryConv2D(packed, tap_sums, 8, (3, 3))
    with pytest.raises(ValueError, match=r"\(batch, height, width, 8\).*shape \(1, 5, 5, 7\)"):
        layer(np.zeros((1, 5, 5, 7), np.float32))


def test_kernels_write_to_a_given_output_array(rng):
    x = rng.normal(size=(2, 6, 6, 5)).astype("float32")
    out = np.empty((2, 3, 3, 5), np.float32)
    assert bitpack.max_pool2d(x, (3, 3), (2, 2), "same", out) is out
    np.testing.assert_array_equal(out, bitpack.max_pool2d(x, (3, 3), (2, 2), "same"))
    assert bitpack.max_pool_output_shape(x.shape, (3, 3), (2, 2), "same") == out.shape
    for channels in (1, 8):  # the direct loop, and im2col + BLAS
        conv = bitpack.FloatConv2D(rng.normal(size=(3, 3, channels, 4)), padding="same")
        image = rng.normal(size=(2, 5, 5, channels)).astype("float32")
        out = np.empty(conv.output_shape(image.shape), np.float32)
        assert conv(image, out) is out
        np.testing.assert_allclose(out, conv(image), rtol=1e-6)
    packed, tap_sums = bitpack.pack_weights(signs(rng, (3, 3, 5, 6)))
    layer = bitpack.BinaryConv2D(packed, tap_sums, 5, (3, 3), strides=(2, 2), padding="same")
    out = np.empty(layer.output_shape(x.shape), np.float32)
    assert out.shape == (2, 3, 3, 6)
    assert layer(x, out) is out
    np.testing.assert_array_equal(out, layer(x))


def test_compiled_calls_compute_what_the_prepared_kernels_do(rng):
    # function(x, *arguments, out): the call without its per-call checks
    def direct(compiled_call, x):
        function, arguments, output_shape = compiled_call
        out = np.full(output_shape, np.nan, np.float32)
        function(x, *arguments, out)
        return out

    x = rng.normal(size=(2, 7, 6, 5)).astype("float32")
    packed, tap_sums = bitpack.pack_weights(signs(rng, (3, 3, 5, 6)))
    for pool_size in ((1, 1), (2, 2)):
        layer = bitpack.BinaryConv2D(packed, tap_sums, 5, (3, 3), padding="same",
                                     input_scaling=True, pool_size=pool_size)  # fmt: skip
        for threads in (1, bitpack.current_threads()):
            got = direct(layer.compiled_call(x.shape, threads), x)
            np.testing.assert_array_equal(got, layer(x))
    image = x[..., :3].copy()  # 27 multiply-adds an output: the direct loop
    conv = bitpack.FloatConv2D(rng.normal(size=(3, 3, 3, 4)), padding="same")
    np.testing.assert_array_equal(direct(conv.compiled_call(image.shape), image), conv(image))
    assert bitpack.FloatConv2D(rng.normal(size=(3, 3, 8, 4))).compiled_call((1, 5, 5, 8)) is None
    flat = x.reshape(2, -1)
    dense = bitpack.FloatDense(rng.normal(size=(flat.shape[1], 3)))
    np.testing.assert_array_equal(direct(dense.compiled_call(flat.shape), flat), dense(flat))
    with pytest.raises(ValueError, match=r"\(batch, 210\) for this FloatDense. Received: shape"):
        dense.compiled_call((2, 7))
    logits = flat[:, :10].copy()
    np.testing.assert_array_equal(
        direct(bitpack.softmax_call(logits.shape), logits), bitpack.softmax(logits)
    )
    with pytest.raises(ValueError, match=r"2-D \(batch, classes\)"):
        bitpack.softmax_call((2, 3, 4))


@pytest.mark.parametrize(
    "out,received",
    [(np.empty((2, 3, 3, 4), np.float32), r"\(2, 3, 3, 4\) float32"),
     (np.empty((2, 3, 3, 5), np.float64), "float64"),
     (np.empty((2, 3, 5, 3), np.float32).transpose(0, 1, 3, 2), r"\(2, 3, 3, 5\) float32"),
     ([0.0] * 90, "list")],
)  # fmt: skip
def test_a_wrong_output_array_is_refused(rng, out, received):
    x = rng.normal(size=(2, 6, 6, 5)).astype("float32")
    with pytest.raises(
        ValueError, match=rf"`out` must be .* of shape \(2, 3, 3, 5\)\. Received: .*{received}"
    ):
        bitpack.max_pool2d(x, (3, 3), (2, 2), "same", out)


def test_compiled_softmax_matches_tensorflow(rng):
    logits = (rng.normal(size=(5, 10)) * 30).astype("float32")  # large: the max is subtracted
    expected = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(bitpack.softmax(logits), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"2-D \(batch, classes\). Received: shape \(2, 3, 4\)"):
        bitpack.softmax(np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("batch, inputs, outputs", [(1, 1024, 10), (5, 7, 3), (2, 33, 17)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_float_dense_matches_numpy(rng, batch, inputs, outputs, with_bias):
    x = rng.normal(size=(batch, inputs)).astype(np.float32)
    kernel = rng.normal(size=(inputs, outputs)).astype(np.float32)
    bias = rng.normal(size=outputs).astype(np.float32) if with_bias else None
    expected = x.astype(np.float64) @ kernel + (0 if bias is None else bias)
    got = bitpack.float_dense(x, kernel, bias)
    assert got.dtype == np.float32 and got.shape == (batch, outputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    out = np.empty((batch, outputs), np.float32)
    assert bitpack.float_dense(x, kernel, bias, out) is out


def test_prepared_float_dense_is_reusable_and_checks_its_input(rng):
    kernel = rng.normal(size=(20, 6)).astype(np.float32)
    dense = bitpack.FloatDense(kernel)
    for batch in (1, 9):
        x = rng.normal(size=(batch, 20)).astype(np.float32)
        np.testing.assert_allclose(dense(x), x @ kernel, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(batch, 20\) for this FloatDense. Received: shape"):
        dense(np.zeros((2, 21), np.float32))
    with pytest.raises(ValueError, match=r"`kernel` must be 2-D"):
        bitpack.FloatDense(np.zeros((2, 3, 4), np.float32))


def test_float_dense_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="inputs, outputs"):
        bitpack.float_dense(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="bias"):
        bitpack.float_dense(np.zeros((2, 3), np.float32), np.zeros((3, 5), np.float32), np.zeros(4))


def test_every_compiled_kernel_can_be_cached_on_disk(rng):
    # numba refuses to cache a function whose code embeds a process address (a
    # ctypes function pointer such as numba.get_num_threads() called inside
    # the kernel, or a large global array): then every new process compiles it
    # again, about a minute for the binary layer.
    x = rng.normal(size=(1, 6, 6, 16)).astype("float32")
    packed, tap_sums = bitpack.pack_weights(signs(rng, (3, 3, 16, 8)))
    bitpack.BinaryConv2D(packed, tap_sums, 16, (3, 3), input_scaling=True, pool_size=(2, 2))(x)
    bitpack.binary_conv2d(bitpack.pack_channels(x), 16, packed, tap_sums, (3, 3))
    bitpack.FloatConv2D(rng.normal(size=(3, 3, 1, 8)).astype("float32"))(x[..., :1])
    bitpack.max_pool2d(x, (2, 2), (2, 2), "valid")
    checked = []
    for name in dir(bitpack):
        function = getattr(bitpack, name)
        if not isinstance(function, numba.core.registry.CPUDispatcher):
            continue
        if name == "current_threads":  # uncached on purpose: compiles in a moment
            continue
        for result in function.overloads.values():
            assert not result.library.has_dynamic_globals, f"bitpack.{name} cannot be cached"
            checked.append(name)
    assert {"_binary_layer", "_binary_conv2d", "_pack_rows", "_direct_conv"} <= set(checked)


#: Every prepared kernel on small (serial packing) and larger (parallel) inputs,
#: run in new processes by the test below.
_KERNELS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from xnor_larq import bitpack

    rng = np.random.default_rng(7)
    # First, before any parallel kernel is called from Python (which starts
    # numba's threads): a planned call, compiled code calling the parallel
    # convolution as inference's plans do; small enough to pack serially, with
    # fields of 10 words (the row popcount loop).
    small = np.where(rng.normal(size=(3, 3, 70, 13)) < 0, -1.0, 1.0).astype("float32")
    first = bitpack.BinaryConv2D(*bitpack.pack_weights(small), 70, (3, 3), padding="same",
                                 input_scaling=True)
    function, arguments, shape = first.compiled_call((1, 7, 5, 70), 2)
    planned = np.empty(shape, np.float32)
    function(rng.normal(size=(1, 7, 5, 70)).astype("float32"), *arguments, planned)
    outputs = [planned]
    weights = np.where(rng.normal(size=(3, 3, 64, 24)) < 0, -1.0, 1.0).astype("float32")
    packed, tap_sums = bitpack.pack_weights(weights)
    conv = bitpack.BinaryConv2D(packed, tap_sums, 64, (3, 3), padding="same", pad_value=1,
                                input_scaling=True, pool_size=(2, 2))
    stem = bitpack.FloatConv2D(rng.normal(size=(3, 3, 1, 16)), padding="same", activation="relu")
    head = bitpack.FloatDense(rng.normal(size=(64, 10)), rng.normal(size=10))
    for batch in (1, 4):  # 64 and 256 rows of 64 floats to pack
        x = rng.normal(size=(batch, 8, 8, 64)).astype("float32")
        outputs += [conv(x), bitpack.pack_channels(x, True)[1], stem(x[..., :1]),
                    bitpack.max_pool2d(x, (2, 2), (2, 2), "valid"), head(x[:, 0, 0])]
    np.savez(sys.argv[1], *outputs)
    """
)


def test_compiled_kernels_run_when_loaded_from_the_disk_cache(tmp_path):
    # A first process compiles the kernels, or loads them if this run's other
    # tests already wrote them to numba's disk cache; a second one loads them
    # for sure. Some call structures compile and run but crash when loaded
    # from the cache (seen: a cached function calling a cached function that
    # starts a parallel region, before anything had started numba's threads):
    # in-process tests never load.
    results = []
    for run_name in ("first", "second"):
        path = tmp_path / f"{run_name}.npz"
        run = subprocess.run(
            [sys.executable, "-c", _KERNELS_SCRIPT, str(path)], capture_output=True, text=True
        )
        assert run.returncode == 0, f"{run_name} run: exit {run.returncode}: {run.stderr[-2000:]}"
        results.append(np.load(path))
    first, second = results
    assert len(first.files) == 11 and first.files == second.files
    for name in first.files:
        np.testing.assert_array_equal(second[name], first[name])


def test_current_threads_is_numbas_thread_count_of_the_calling_thread():
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, previous}):
            numba.set_num_threads(threads)
            assert bitpack.current_threads() == threads == numba.get_num_threads()
    finally:
        numba.set_num_threads(previous)
