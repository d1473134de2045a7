"""Fast CPU inference for trained binary models: bitpacked XNOR-popcount.

``compile(model)`` turns a Keras model built from xnor_larq's layers (or
Larq's binary ``QuantConv2D``/``QuantDense``) into a :class:`CompiledModel`
whose binary layers run as compiled xor + popcount kernels
(:mod:`xnor_larq.bitpack`, numba, multithreaded), with weights packed 64 to a
word. α, K, bias and a directly following BatchNormalization are folded into
one float epilogue, and a max-pool after that (strides equal to the pool, no
padding) runs in the same compiled call; the float layers (first/last layers,
BN, other pooling, activations) run in numpy or TensorFlow::

    fast = xnor_larq.inference.compile(model)
    probabilities = fast.predict(images)      # == model.predict(images)

A layer is compiled as binary when its input quantizer is a sign (±1 at
inference, ``sign(0) = +1``) and its kernel quantizer gives ``±α`` per output
channel (``ste_sign``, ``scaled_sign``, ``magnitude_aware_sign``, ...).
Quantized layers that are only half binary, or binary layers in a form the
kernels do not cover, raise :class:`UnsupportedLayerError`; pass
``fallback=True`` to run those with TensorFlow instead.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import larq as lq
import numpy as np
import tensorflow as tf

from .export import UnsupportedLayerError
from .layers import ScaledQuantConv2D, ScaledQuantDense
from .normalization import ShiftBatchNormalization
from .power_of_two import ap2

__all__ = ["CompiledModel", "UnsupportedLayerError", "compile"]


@functools.cache
def _bitpack():
    # imported late: it needs the optional numba. Cached: an import statement
    # costs about 0.5 µs a call, and some steps ask on every call.
    from . import bitpack

    return bitpack


# ---------------------------------------------------------------- inspection


def _is_sign_quantizer(quantizer) -> bool:
    """True if ``quantizer`` maps x to +1 for x >= 0 and -1 below, at inference."""
    if quantizer is None:
        return False
    probe = tf.constant([-3.0, -1.0, -0.25, -1e-6, 0.0, 1e-6, 0.25, 1.0, 3.0])
    try:
        values = quantizer(probe, training=False)
    except TypeError:
        values = quantizer(probe)
    return np.array_equal(np.asarray(values), np.where(probe.numpy() >= 0, 1.0, -1.0))


def _binary_kernel(layer):
    """``(signs, alpha)`` of a layer's quantized kernel, or None if not ±α."""
    if layer.kernel_quantizer is None:
        return None
    latent = tf.constant(np.asarray(getattr(layer.kernel, "latent_variable", layer.kernel)))
    kernel = np.asarray(layer.kernel_quantizer(latent), np.float32)
    magnitude = np.abs(kernel)
    alpha = magnitude.reshape(-1, kernel.shape[-1]).max(axis=0)
    if not np.allclose(magnitude, alpha, rtol=1e-6, atol=0):
        return None
    return np.where(kernel < 0, -1.0, 1.0).astype(np.float32), alpha


def _is_quantized(layer) -> bool:
    return isinstance(layer, (lq.layers.QuantConv2D, lq.layers.QuantDense)) or hasattr(
        layer, "input_quantizer"
    )


def _batch_norm_affine(layer):
    """Per-channel ``(scale, shift)`` of an inference-mode BN, or None."""
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
        if axis not in (-1, [-1], [len(layer.input_shape) - 1]):
            return None
        variance = np.asarray(layer.moving_variance)
        scale = 1.0 / np.sqrt(variance + layer.epsilon)
        if layer.scale:
            scale = scale * np.asarray(layer.gamma)
        shift = -np.asarray(layer.moving_mean) * scale
        if layer.center:
            shift = shift + np.asarray(layer.beta)
        return scale.astype(np.float32), shift.astype(np.float32)
    if isinstance(layer, ShiftBatchNormalization):
        if layer.axis not in (-1, len(layer.input_shape) - 1):
            return None
        variance = tf.cast(layer.moving_variance, tf.float32)
        scale = ap2(tf.math.rsqrt(variance + layer.epsilon)).numpy()
        if layer.scale:
            scale = scale * ap2(layer.gamma).numpy()
        shift = -np.asarray(layer.moving_mean) * scale
        if layer.center:
            shift = shift + np.asarray(layer.beta)
        return scale.astype(np.float32), shift.astype(np.float32)
    return None


# ---------------------------------------------------------------- operations


class _BufferPool(threading.local):
    """Output arrays of the float32 steps, reused from one predict call to the next.

    Fresh multi-megabyte arrays cost page faults on every call (measured: a
    third of small_cnn's time at batch 64). Each thread keeps its own arrays,
    so concurrent calls never share one; an array that a returned output
    shares memory with is handed over to the caller and never reused. Outside a
    predict call (a step run by hand) every array is new. Steps run as planned
    calls (:class:`_Plans`) keep arrays of their own instead.

    Steps ask only for outputs of about :data:`MIN_BYTES` or more
    (:meth:`wants`): smaller arrays come cheap from malloc, and the pool's own
    Python work (about 7 µs a step here) would cost more than it saves at batch 1.
    """

    MIN_BYTES = 256 * 1024

    def __init__(self):
        self.active = False  # inside a predict call
        self.free = {}  # shape -> arrays from the last call
        self.used = []  # arrays taken during the current call

    def wants(self, x, channels_out=None) -> bool:
        """Whether a step from ``x`` to about as many pixels of ``channels_out``
        channels (default: as many as ``x``; fractional for fewer pixels) should
        use an array from :meth:`take`."""
        size = x.nbytes if channels_out is None else x.nbytes // x.shape[-1] * channels_out
        return self.active and size >= self.MIN_BYTES

    def take(self, shape):
        if not self.active:
            return np.empty(shape, np.float32)
        stack = self.free.get(tuple(shape))
        array = stack.pop() if stack else np.empty(shape, np.float32)
        self.used.append(array)
        return array

    def release(self, outputs):
        """End of a call: keep this call's arrays for the next, except the outputs'."""
        self.free = {}
        for array in self.used:
            if not any(np.may_share_memory(array, out) for out in outputs):
                self.free.setdefault(array.shape, []).append(array)
        self.used = []
        self.active = False


@dataclass(frozen=True)
class _CompiledCall:
    """A step as one call of its compiled function, for one input shape:
    ``function(x, *arguments, out)`` with ``x`` reshaped to ``input_shape``
    (C-contiguous float32) and ``out`` of ``output_shape``, whose value is
    ``out`` seen as ``value_shape``. :class:`CompiledModel` plans these once
    per input shape and then calls them without the steps' per-call Python
    work (at batch 1 about a fifth of ``small_cnn``'s time)."""

    function: object
    arguments: tuple
    input_shape: tuple
    output_shape: tuple
    value_shape: tuple

    @classmethod
    def of(cls, call, input_shape, value_shape=None):
        """From a bitpack ``compiled_call``'s ``(function, arguments,
        output_shape)`` (None stays None); ``value_shape`` defaults to the
        output's."""
        if call is None:
            return None
        function, arguments, output_shape = call
        value_shape = output_shape if value_shape is None else value_shape
        return cls(function, arguments, tuple(input_shape), output_shape, value_shape)


@dataclass
class BinaryLayer:
    """One compiled binary layer: packed weights and its float epilogue."""

    name: str
    kind: str  # "conv" or "dense"
    channels: int
    packed: np.ndarray
    tap_sums: np.ndarray
    kernel_size: tuple
    strides: tuple
    dilation_rate: tuple
    padding: str
    pad_value: int
    multiplier: np.ndarray
    offset: np.ndarray
    input_scaling: bool
    activation: object = None
    folded: list = field(default_factory=list)  # names of the BN and pool layers folded in
    pool_size: tuple = (1, 1)  # a following max-pool computed in the same call
    # a BatchNormalization just before the layer, applied while packing its input
    input_scale: np.ndarray | None = None
    input_shift: np.ndarray | None = None
    float32_bytes: int = 0
    _kernel: object = field(default=None, repr=False)  # the bitpack.BinaryConv2D
    _buffers: _BufferPool | None = field(default=None, repr=False)

    @property
    def packed_bytes(self) -> int:
        return self.packed.nbytes

    def _built_kernel(self):
        if self._kernel is None:  # built on first use, after compile() folded the BNs in
            self._kernel = _bitpack().BinaryConv2D(
                self.packed,
                self.tap_sums,
                self.channels,
                self.kernel_size,
                strides=self.strides,
                dilation_rate=self.dilation_rate,
                padding=self.padding,
                pad_value=self.pad_value,
                multiplier=self.multiplier,
                offset=self.offset,
                input_scale=self.input_scale,
                input_shift=self.input_shift,
                input_scaling=self.input_scaling,
                pool_size=self.pool_size,
            )
        return self._kernel

    def __call__(self, x):
        kernel = self._built_kernel()
        if self.kind == "dense":
            x = x.reshape(x.shape[0], 1, 1, x.shape[-1])
        out = None
        # a fused pool leaves outputs on 1 / (ph·pw) of the pixels
        per_pixel = self.tap_sums.shape[0] / (self.pool_size[0] * self.pool_size[1])
        if self._buffers is not None and self._buffers.wants(x, per_pixel):
            out = self._buffers.take(self._kernel.output_shape(x.shape))
        out = kernel(x, out)
        if self.activation is not None:
            out = _activation_op(self.activation)(out)
        if self.kind == "dense":
            out = out.reshape(out.shape[0], -1)
        return out

    def compiled_call(self, input_shape, threads):
        """The layer as a :class:`_CompiledCall` for inputs of ``input_shape``;
        None with an activation (computed in numpy after the call)."""
        if self.activation is not None or (self.kind == "dense" and len(input_shape) != 2):
            return None
        shape = (input_shape[0], 1, 1, input_shape[1]) if self.kind == "dense" else input_shape
        call = self._built_kernel().compiled_call(tuple(shape), threads)
        value_shape = (input_shape[0], self.tap_sums.shape[0]) if self.kind == "dense" else None
        return _CompiledCall.of(call, shape, value_shape)


def _unsupported(layer, why):
    return UnsupportedLayerError(
        f"Layer '{layer.name}' ({type(layer).__name__}) cannot be compiled: {why}. "
        "Pass fallback=True to run such layers with TensorFlow, or use model.predict."
    )


def _compile_binary(layer) -> BinaryLayer | None:
    """A :class:`BinaryLayer` for a binary layer; None for a float one; raises if half binary."""
    if not _is_quantized(layer):
        return None
    binary_input = _is_sign_quantizer(layer.input_quantizer)
    kernel = _binary_kernel(layer) if binary_input else None
    if not binary_input:
        if getattr(layer.input_quantizer, "precision", None) == 1:
            raise _unsupported(layer, "its 1-bit input quantizer is not sign(x) at inference")
        return None  # float inputs (e.g. BWN): TensorFlow computes it exactly
    if kernel is None:
        raise _unsupported(layer, "its inputs are binary but its kernel is not ±α per channel")
    if not isinstance(layer, (lq.layers.QuantConv2D, lq.layers.QuantDense)):
        raise _unsupported(layer, "only QuantConv2D and QuantDense layers are packed")
    signs, alpha = kernel
    bias = np.asarray(layer.bias) if layer.use_bias else np.zeros_like(alpha)
    activation = layer.activation
    if activation in (None, tf.keras.activations.linear):
        activation = None
    if isinstance(layer, lq.layers.QuantDense):
        if len(layer.input_shape) != 2:
            raise _unsupported(layer, "binary dense layers need (batch, features) inputs")
        kind, signs = "dense", signs[None, None]
        geometry = dict(
            kernel_size=(1, 1), strides=(1, 1), dilation_rate=(1, 1), padding="valid", pad_value=0
        )
        scaled = isinstance(layer, ScaledQuantDense) and layer.input_scaling
    else:
        if layer.data_format != "channels_last" or getattr(layer, "groups", 1) != 1:
            raise _unsupported(layer, "only channels_last, groups=1 convolutions are packed")
        pad_value = float(layer.pad_values)
        if layer.padding == "same" and pad_value not in (0.0, 1.0, -1.0):
            raise _unsupported(layer, f"pad_values={pad_value} is not 0 or ±1")
        if layer.padding not in ("same", "valid"):
            raise _unsupported(layer, f"padding={layer.padding!r} is not 'same' or 'valid'")
        kind = "conv"
        geometry = dict(
            kernel_size=tuple(layer.kernel_size),
            strides=tuple(layer.strides),
            dilation_rate=tuple(layer.dilation_rate),
            padding=layer.padding,
            pad_value=int(pad_value) if layer.padding == "same" else 0,
        )
        scaled = isinstance(layer, ScaledQuantConv2D) and layer.input_scaling
    packed, tap_sums = _bitpack().pack_weights(signs)
    return BinaryLayer(
        name=layer.name,
        kind=kind,
        channels=signs.shape[2],
        packed=packed,
        tap_sums=tap_sums,
        multiplier=alpha.astype(np.float32),
        offset=bias.astype(np.float32),
        input_scaling=scaled,
        activation=activation,
        float32_bytes=signs.size * 4,
        **geometry,
    )


def _fold_after_conv(output_id, consumers, output_ids):
    """A BN, then a plain ReLU, that only a float conv's output feeds, computed in
    its step: ``(batch_norm affine or None, relu, folded names, new output id)``.

    A BN read by a binary layer alone is left to that layer's packing.
    """
    batch_norm, relu, folded = None, False, []
    for kind in ("batch_norm", "relu"):
        following = consumers.get(output_id, [])
        if len(following) != 1 or output_id in output_ids:
            break
        layer = following[0]
        if kind == "batch_norm":
            readers = consumers.get(id(layer.output), [])
            if len(readers) == 1 and _is_quantized(readers[0]):
                continue
            batch_norm = _batch_norm_affine(layer)
            if batch_norm is None:
                continue
        elif not _is_plain_relu(layer):
            break
        else:
            relu = True
        folded.append(layer.name)
        output_id = id(layer.output)
    return batch_norm, relu, folded, output_id


def _fold(binary: BinaryLayer, bn_layer) -> bool:
    """Fold a BN that directly follows ``binary`` into its epilogue, if it is affine."""
    affine = _batch_norm_affine(bn_layer)
    if affine is None or binary.activation is not None:
        return False
    scale, shift = affine
    binary.multiplier = (binary.multiplier * scale).astype(np.float32)
    binary.offset = (binary.offset * scale + shift).astype(np.float32)
    binary.folded.append(bn_layer.name)
    return True


def _fold_before(binary: BinaryLayer, bn_layer) -> bool:
    """Fold the BN computing ``binary``'s input into its packing, if it is affine."""
    affine = _batch_norm_affine(bn_layer)
    if affine is None:
        return False
    binary.input_scale, binary.input_shift = (v.astype(np.float32) for v in affine)
    binary.folded.insert(0, bn_layer.name)
    return True


def _fold_pool(binary: BinaryLayer, layer) -> bool:
    """Compute a max-pool that directly follows binary conv ``binary`` in its call.

    Only the common form is fused: no padding, strides equal to the pool.
    """
    if binary.kind != "conv" or binary.activation is not None:
        return False
    if not isinstance(layer, tf.keras.layers.MaxPool2D) or layer.data_format != "channels_last":
        return False
    if layer.padding != "valid" or tuple(layer.strides) != tuple(layer.pool_size):
        return False
    binary.pool_size = tuple(layer.pool_size)
    binary.folded.append(layer.name)
    return True


def _float_op(layer, fallback, buffers=None):
    """A numpy/TensorFlow function computing a float layer at inference.

    Pooling and convolutions write to arrays from ``buffers`` (a :class:`_BufferPool`).
    """
    affine = _batch_norm_affine(layer)
    if affine is not None:
        scale, shift = affine
        return lambda x: x * scale + shift
    if isinstance(layer, tf.keras.layers.MaxPool2D) and layer.data_format == "channels_last":
        bitpack, pool, strides, padding = _bitpack(), layer.pool_size, layer.strides, layer.padding

        def max_pool(x):
            if buffers is None or not buffers.wants(x):
                return bitpack.max_pool2d(x, pool, strides, padding)
            shape = bitpack.max_pool_output_shape(x.shape, pool, strides, padding)
            return bitpack.max_pool2d(x, pool, strides, padding, buffers.take(shape))

        return max_pool
    if isinstance(layer, (tf.keras.layers.Flatten, tf.keras.layers.Dropout)):
        if isinstance(layer, tf.keras.layers.Dropout):
            return lambda x: x
        return lambda x: x.reshape(x.shape[0], -1)
    if type(layer) is tf.keras.layers.GlobalAveragePooling2D and not layer.keepdims:
        if layer.data_format == "channels_last":
            return lambda x: x.mean(axis=(1, 2), dtype=np.float32)
    if type(layer) is tf.keras.layers.Add:
        return lambda *xs: np.sum(xs, axis=0, dtype=np.float32)
    if type(layer) is tf.keras.layers.Concatenate:
        axis = layer.axis
        return lambda *xs: np.concatenate(xs, axis=axis)
    if type(layer) is tf.keras.layers.Activation:
        return _activation_op(layer.activation)
    if type(layer) is tf.keras.layers.Dense:
        return _dense_op(layer)
    if type(layer) is tf.keras.layers.Conv2D:
        return _conv_op(layer, buffers)  # compile() folds a BN and ReLU that follow
    if _is_quantized(layer) or _is_stateless(layer) or fallback:
        # Float-input quantized layers (BWN) and plain Keras layers: TensorFlow.
        return lambda *xs: _as_numpy(layer(xs[0] if len(xs) == 1 else list(xs), training=False))
    raise _unsupported(layer, "it is not a layer the compiler knows")


def _is_stateless(layer):
    return isinstance(
        layer,
        (
            tf.keras.layers.Activation,
            tf.keras.layers.ReLU,
            tf.keras.layers.Softmax,
            tf.keras.layers.Reshape,
            tf.keras.layers.AveragePooling2D,
            tf.keras.layers.GlobalMaxPooling2D,
            tf.keras.layers.GlobalAveragePooling2D,
            tf.keras.layers.ZeroPadding2D,
            tf.keras.layers.Rescaling,
        ),
    )


def _as_numpy(value):
    return np.asarray(value, np.float32)


#: Float dense layers with at most this many weights run in a compiled loop on
#: the calling thread (see :class:`xnor_larq.bitpack.FloatDense`); larger ones in BLAS.
COMPILED_DENSE_WEIGHTS = 1 << 16


def _dense_op(layer):
    kernel = np.asarray(layer.kernel, np.float32)
    bias = np.asarray(layer.bias, np.float32) if layer.use_bias else None
    activation = _activation_op(layer.activation)
    float_dense = (
        _bitpack().FloatDense(kernel, bias) if kernel.size <= COMPILED_DENSE_WEIGHTS else None
    )

    def run(x):
        if float_dense is not None and x.ndim == 2:
            return activation(float_dense(x))
        out = x @ kernel
        if bias is not None:
            out = out + bias
        return activation(out)

    def compiled_call(input_shape, threads):
        linear = activation is _NUMPY_ACTIVATIONS["linear"]
        if float_dense is None or len(input_shape) != 2 or not linear:
            return None
        return _CompiledCall.of(float_dense.compiled_call(tuple(input_shape)), input_shape)

    run.compiled_call = compiled_call
    return run


def _is_compiled_conv(layer) -> bool:
    """A float Conv2D that :class:`xnor_larq.bitpack.FloatConv2D` computes."""
    return (
        type(layer) is tf.keras.layers.Conv2D
        and layer.data_format == "channels_last"
        and getattr(layer, "groups", 1) == 1
    )


def _is_plain_relu(layer) -> bool:
    """``Activation("relu")`` or a ``ReLU()`` without cap, slope or threshold."""
    if type(layer) is tf.keras.layers.Activation:
        return _activation_name(layer) == "relu"
    if type(layer) is tf.keras.layers.ReLU:
        return (
            layer.max_value is None
            and float(layer.negative_slope) == 0.0
            and float(layer.threshold) == 0.0
        )
    return False


def _conv_op(layer, buffers, batch_norm=None, relu=False):
    """A float conv's step; ``batch_norm`` ``(scale, shift)`` of a BN that follows
    is folded into the kernel and bias, and a ReLU that follows is applied in the
    same compiled call."""
    if not _is_compiled_conv(layer):
        return lambda x: _as_numpy(layer(x, training=False))
    kernel = np.asarray(layer.kernel, np.float32)
    bias = np.asarray(layer.bias, np.float32) if layer.use_bias else None
    if batch_norm is not None:
        scale, shift = batch_norm
        kernel = (kernel * scale).astype(np.float32)  # scales each output channel
        bias = ((0 if bias is None else bias) * scale + shift).astype(np.float32)
    # a ReLU (folded or the layer's own) is applied in the compiled call with the bias
    relu = relu or _activation_name(layer) == "relu"
    conv = _bitpack().FloatConv2D(
        kernel,
        strides=tuple(layer.strides),
        dilation_rate=tuple(layer.dilation_rate),
        padding=layer.padding,
        bias=bias,
        activation="relu" if relu else None,
    )
    activation = _NUMPY_ACTIVATIONS["linear"] if relu else _activation_op(layer.activation)

    def run(x):
        out = None
        if buffers is not None and buffers.wants(x, conv.outputs):
            out = buffers.take(conv.output_shape(x.shape))
        return activation(conv(x, out))

    def compiled_call(input_shape, threads):
        if activation is not _NUMPY_ACTIVATIONS["linear"]:
            return None
        return _CompiledCall.of(conv.compiled_call(tuple(input_shape)), input_shape)

    run.compiled_call = compiled_call
    return run


def _softmax(x):
    if x.ndim == 2:
        return _bitpack().softmax(x)
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _softmax_call(input_shape, threads):
    if len(input_shape) != 2:
        return None
    return _CompiledCall.of(_bitpack().softmax_call(tuple(input_shape)), input_shape)


_softmax.compiled_call = _softmax_call


#: Activations computed in numpy or compiled (others go through TensorFlow).
_NUMPY_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0, dtype=np.float32),
    "softmax": _softmax,
    "tanh": np.tanh,
    "sigmoid": lambda x: (1 / (1 + np.exp(-x))).astype(np.float32),
}


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    return "linear" if activation is None else getattr(activation, "__name__", None)


def _activation_op(activation):
    if activation is None:
        return _NUMPY_ACTIVATIONS["linear"]
    name = getattr(activation, "__name__", None)
    if name in _NUMPY_ACTIVATIONS:
        return _NUMPY_ACTIVATIONS[name]
    return lambda x: _as_numpy(activation(tf.constant(x)))


# ---------------------------------------------------------------- the graph


@dataclass
class _Step:
    name: str
    inputs: list
    output: int
    run: object
    folded: tuple = ()  # layers computed in this float step too (a BN, a ReLU)


@dataclass
class _PlannedStep:
    """A step of a plan: its compiled call (None: the step's own function)."""

    name: str
    inputs: list
    output: int
    run: object
    call: _CompiledCall | None = None
    arrives_as: tuple = ()  # the input's shape as the step before leaves it
    checked: bool = False  # the input is a planned step's array: C-contiguous float32
    reshape: bool = False  # the input arrives in another shape than the call's
    out: np.ndarray | None = None  # reused each call; None: a new array (it may be returned)
    value: np.ndarray | None = None  # out seen as call.value_shape


class _Plans(threading.local):
    """Each thread's plans of a :class:`CompiledModel`, by input shapes and
    thread count: the steps as :class:`_CompiledCall` where they have one,
    with their output arrays, so that concurrent calls never share one."""

    #: Plans kept per thread; the oldest goes first.
    LIMIT = 4
    #: Bytes of arrays the older plans of a thread may hold besides the newest
    #: one (large batches make large arrays).
    MAX_BYTES = 256 << 20

    def __init__(self):
        self.by_key = {}

    def get(self, key):
        return self.by_key.get(key)

    def add(self, key, plan):
        def size(plan):
            return sum(entry.out.nbytes for entry in plan if entry.out is not None)

        while self.by_key and (
            len(self.by_key) >= self.LIMIT
            or sum(map(size, self.by_key.values())) + size(plan) > self.MAX_BYTES
        ):
            del self.by_key[next(iter(self.by_key))]
        self.by_key[key] = plan


def _plan(steps, input_ids, output_ids, arriving_shapes, threads):
    """The planned steps for one input shape, given the shape each step's input
    arrived in on a call with it (on ``threads`` numba threads)."""
    planned = []
    # which planned steps' arrays a value may be (or be a view of): a step
    # without a compiled call may return its input or a view of it
    may_hold = {tensor_id: set() for tensor_id in input_ids}
    made_here = set()  # values that are a planned step's own array
    for index, (step, shape) in enumerate(zip(steps, arriving_shapes)):
        compiled_call = getattr(step.run, "compiled_call", None)
        call = None
        if compiled_call is not None and len(step.inputs) == 1:
            call = compiled_call(shape, threads)
        reshape = call is not None and call.input_shape != shape
        entry = _PlannedStep(step.name, step.inputs, step.output, step.run, call, shape,
                             reshape=reshape)  # fmt: skip
        if call is None:
            may_hold[step.output] = set().union(*(may_hold[i] for i in step.inputs))
        else:
            entry.checked = step.inputs[0] in made_here
            may_hold[step.output] = {index}
            made_here.add(step.output)
        planned.append(entry)
    returned = set().union(*(may_hold[i] for i in output_ids))
    for index, entry in enumerate(planned):
        if entry.call is not None and index not in returned:
            entry.out = np.empty(entry.call.output_shape, np.float32)
            entry.value = entry.out.reshape(entry.call.value_shape)
    return planned


def _numba_threads(threads):
    """Set numba's thread count of the calling thread to ``threads`` (nothing if
    None); return the count it had (None where nothing changed)."""
    if threads is None:
        return None
    previous = _bitpack().current_threads()  # 0.1 µs; numba.get_num_threads() takes 1
    if previous == threads:
        return None
    import numba

    numba.set_num_threads(threads)
    return previous


def _tensor_ids(tensors):
    return [id(t) for t in tf.nest.flatten(tensors)]


def _consumers(model):
    counts = {}
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            continue
        for tensor_id in _tensor_ids(layer.input):
            counts.setdefault(tensor_id, []).append(layer)
    return counts


class CompiledModel:
    """A Keras model's inference as bitpacked binary kernels plus float ops.

    Call :meth:`predict` (or the object itself) on a numpy batch; outputs
    match ``model.predict``: the binary parts exactly, the float epilogue to
    float32 rounding.
    """

    def __init__(self, name, steps, input_ids, output_ids, binary_layers, fallback_layers, buffers,
                 threads=None):  # fmt: skip
        self.name = name
        self.threads = threads  # numba threads of each predict call; None: the caller's setting
        self._buffers = buffers
        self._steps = steps
        self._input_ids = input_ids
        self._output_ids = output_ids
        self.binary_layers = binary_layers
        self.fallback_layers = fallback_layers
        self._plans = _Plans()
        self._plannable = any(hasattr(step.run, "compiled_call") for step in steps)
        #: Per-sample shape of each input (None: any size), from the Keras model.
        self.input_shapes = None

    @property
    def steps(self) -> tuple:
        """The operations in order: ``name``, ``inputs``/``output`` (ids of the
        Keras tensors, ``id(layer.output)``), ``run`` (arrays in, array out) and
        ``folded`` (layers a float conv's step computes too)."""
        return tuple(self._steps)

    @property
    def packed_weight_bytes(self) -> int:
        """Bytes of the packed binary weights (64 signs a word)."""
        return sum(layer.packed_bytes for layer in self.binary_layers)

    @property
    def float32_weight_bytes(self) -> int:
        """Bytes the same binary weights take as float32."""
        return sum(layer.float32_bytes for layer in self.binary_layers)

    def predict(self, x, batch_size: int | None = None):
        """Outputs for a batch (a numpy array, or a list for multi-input models).

        The first call with an input shape runs every step and plans later
        calls with that shape, which then go straight to the compiled kernels
        (per thread, for the last few shapes).
        """
        inputs = [np.asarray(v, np.float32) for v in (x if isinstance(x, list) else [x])]
        if len(inputs) != len(self._input_ids):
            raise ValueError(
                f"model '{self.name}' takes {len(self._input_ids)} inputs. Received: {len(inputs)}"
            )
        self._check_inputs(inputs)
        total = inputs[0].shape[0]
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(
                f"`batch_size` must be a positive integer or None. Received: batch_size={batch_size!r}"
            )
        # Non-finite samples (NaN, inf) give NaN outputs, as Keras's float ops do; the
        # kernels see zeros there (fastmath code has no NaN semantics).
        bad = np.zeros(total, bool)
        for v in inputs:
            bad |= ~np.isfinite(v.reshape(total, -1)).all(axis=1)
        if bad.any():
            inputs = [np.where(np.isfinite(v), v, np.float32(0)) for v in inputs]
        batch_size = batch_size or total
        chunks = [
            self._run([v[start : start + batch_size] for v in inputs])
            for start in range(0, total, batch_size)
        ]
        if len(chunks) == 1:  # one batch: no copy
            outputs = chunks[0]
        else:
            outputs = [np.concatenate(parts) for parts in zip(*chunks)]
        if bad.any():
            outputs = [np.array(o, copy=True) for o in outputs]
            for o in outputs:
                o[bad] = np.nan
        return outputs[0] if len(outputs) == 1 else outputs

    def _check_inputs(self, inputs):
        """Rank, per-sample shape (against the model's input) and batch size, before
        any kernel runs."""
        expected = self.input_shapes or [None] * len(inputs)
        for index, (value, shape) in enumerate(zip(inputs, expected)):
            which = f"input {index} of model '{self.name}'" if len(inputs) > 1 else (
                f"the input of model '{self.name}'"
            )
            if shape is not None:
                wanted = "(batch, " + ", ".join("any" if d is None else str(d) for d in shape) + ")"
                if value.ndim != len(shape) + 1 or any(
                    d is not None and d != got for d, got in zip(shape, value.shape[1:])
                ):
                    raise ValueError(
                        f"{which} must have shape {wanted}. Received: shape {value.shape}"
                        + (" (a single sample needs a batch axis: x[None])"
                           if value.ndim == len(shape) else "")
                    )
            elif value.ndim < 1:
                raise ValueError(f"{which} must have a batch axis. Received: a scalar")
            if value.shape[0] == 0:
                raise ValueError(f"{which} is an empty batch (shape {value.shape})")
        if len({v.shape[0] for v in inputs}) > 1:
            raise ValueError(
                f"the inputs of model '{self.name}' must share the batch size. Received: "
                f"{[v.shape[0] for v in inputs]}"
            )

    __call__ = predict

    def _run(self, inputs):
        outputs = []
        self._buffers.active = True
        # numba's thread count is a setting of the calling thread: set it per
        # call, so that models compiled with different counts keep theirs
        caller_threads = _numba_threads(self.threads)
        try:
            if not self._plannable:
                outputs = self._run_steps(inputs)
            else:
                # the first call with an input shape runs the steps and plans
                # the next ones from the shapes it saw
                key = (tuple(v.shape for v in inputs), _bitpack().current_threads())
                plan = self._plans.get(key)
                if plan is None:
                    arriving = []
                    outputs = self._run_steps(inputs, arriving)
                    plan = _plan(self._steps, self._input_ids, self._output_ids, arriving, key[1])
                    self._plans.add(key, plan)
                else:
                    outputs = self._run_plan(plan, inputs)
        finally:
            self._buffers.release(outputs)
            _numba_threads(caller_threads)
        return outputs

    def _run_steps(self, inputs, arriving=None):
        """Every step's own function; ``arriving`` gets each step's first input shape."""
        values = dict(zip(self._input_ids, inputs))
        for step in self._steps:
            step_inputs = [values[i] for i in step.inputs]
            if arriving is not None:
                arriving.append(step_inputs[0].shape)
            values[step.output] = step.run(*step_inputs)
        return [values[i] for i in self._output_ids]

    def _run_plan(self, plan, inputs):
        values = dict(zip(self._input_ids, inputs))
        for entry in plan:
            call = entry.call
            if call is None:
                values[entry.output] = entry.run(*(values[i] for i in entry.inputs))
                continue
            x = values[entry.inputs[0]]
            # a planned step's array has its planned shape; other inputs are checked
            if not entry.checked:
                x = np.ascontiguousarray(x, np.float32)
                if x.shape != entry.arrives_as:  # the compiled loops do not bounds-check
                    raise RuntimeError(
                        f"step '{entry.name}' got an input of shape {x.shape}, planned for "
                        f"{entry.arrives_as}; please report this"
                    )
            if entry.reshape:
                x = x.reshape(call.input_shape)
            out = entry.out
            if out is None:  # a new array: it is (or may be seen in) an output
                out = np.empty(call.output_shape, np.float32)
                call.function(x, *call.arguments, out)
                values[entry.output] = out.reshape(call.value_shape)
            else:
                call.function(x, *call.arguments, out)
                values[entry.output] = entry.value
        return [values[i] for i in self._output_ids]

    def summary(self) -> str:
        lines = [f"CompiledModel '{self.name}': {len(self.binary_layers)} bitpacked layers"]
        for layer in self.binary_layers:
            folded = f", folded {', '.join(layer.folded)}" if layer.folded else ""
            lines.append(
                f"  {layer.name}: {layer.kind} {layer.channels}→{layer.tap_sums.shape[0]}, "
                f"{layer.packed_bytes} B packed (float32 {layer.float32_bytes} B)"
                f"{', K' if layer.input_scaling else ''}{folded}"
            )
        for step in self._steps:
            if step.folded:
                lines.append(f"  {step.name}: float, folded {', '.join(step.folded)}")
        if self.fallback_layers:
            lines.append(f"  run by TensorFlow (fallback): {', '.join(self.fallback_layers)}")
        ratio = self.float32_weight_bytes / max(self.packed_weight_bytes, 1)
        lines.append(f"  binary weights {ratio:.1f}x smaller than float32")
        return "\n".join(lines)


def compile(
    model: tf.keras.Model, *, fallback: bool = False, threads: int | None = None
) -> CompiledModel:
    """Compile a trained Keras model for fast CPU inference (see the module doc).

    Arguments:
        model: a functional or Sequential Keras model (not nested, no shared layers).
        fallback: run layers that cannot be packed with TensorFlow instead of
            raising :class:`UnsupportedLayerError`.
        threads: numba threads of the compiled kernels in every ``predict`` call
            (default: the calling thread's numba setting, all cores unless changed).
            Other numba code in the process keeps its own setting.
    """
    if not isinstance(model, tf.keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built Keras model. Received: {model!r}")
    if threads is not None:
        import numba

        available = numba.config.NUMBA_NUM_THREADS
        whole = isinstance(threads, int) and not isinstance(threads, bool)
        if not whole or not 1 <= threads <= available:
            raise ValueError(
                f"`threads` must be an integer from 1 to {available} (numba's thread "
                f"count here). Received: threads={threads!r}"
            )
    consumers = _consumers(model)
    output_ids = _tensor_ids(model.outputs)
    steps, binary_layers, fallback_layers, skipped = [], [], [], set()
    buffers = _BufferPool()
    producers = {}  # output id -> (step, layer) of the float steps so far
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer) or layer.name in skipped:
            continue
        if isinstance(layer, tf.keras.Model):
            raise _unsupported(layer, "nested models are not supported; build the model flat")
        if len(layer._inbound_nodes) != 1:
            raise _unsupported(layer, "it is shared (called more than once)")
        try:
            binary = _compile_binary(layer)
        except UnsupportedLayerError:
            if not fallback:
                raise
            binary = None
            fallback_layers.append(layer.name)
        output_id = id(layer.output)
        inputs = _tensor_ids(layer.input)
        folded = []  # names of the layers a float conv's step computes too
        if binary is not None:
            # A BN whose only reader is this layer is applied while packing.
            producer_step, producer_layer = producers.get(inputs[0], (None, None))
            if (
                producer_step is not None
                and inputs[0] not in output_ids
                and consumers.get(inputs[0]) == [layer]
                and _fold_before(binary, producer_layer)
            ):
                steps.remove(producer_step)
                inputs = producer_step.inputs
            for fold in (_fold, _fold_pool):  # a BN, then a max-pool, computed in the call
                following = consumers.get(output_id, [])
                if (
                    len(following) == 1
                    and output_id not in output_ids
                    and fold(binary, following[0])
                ):
                    skipped.add(following[0].name)
                    output_id = id(following[0].output)
            binary._buffers = buffers
            binary_layers.append(binary)
            run = binary
        elif _is_compiled_conv(layer) and _activation_name(layer) == "linear":
            batch_norm, relu, folded, output_id = _fold_after_conv(output_id, consumers, output_ids)
            skipped.update(folded)
            run = _conv_op(layer, buffers, batch_norm, relu)
        else:
            run = _float_op(layer, fallback, buffers)
        steps.append(_Step(layer.name, inputs, output_id, run, tuple(folded)))
        if binary is None:
            producers[output_id] = (steps[-1], layer)
    compiled = CompiledModel(
        model.name,
        steps,
        _tensor_ids(model.inputs),
        output_ids,
        binary_layers,
        fallback_layers,
        buffers,
        threads,
    )
    compiled.input_shapes = [tuple(t.shape[1:]) for t in model.inputs]
    return compiled
