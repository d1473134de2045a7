"""Compiled (numba) kernels for bitpacked binary inference on CPUs.

Bit convention: a set bit is -1, a clear bit is +1 (so ``sign(0) = +1``, as in
Larq). For ±1 vectors ``a``, ``b`` of length ``n`` packed this way,
``a·b = n - 2·popcount(a XOR b)``.

A binary convolution is computed per output pixel: the receptive field is
gathered into one contiguous bit string (tap after tap, ``C`` bits each, the
tail of the last 64-bit word clear), then XOR-ed and popcounted against each
output channel's weight bit string laid out the same way (for thin inputs,
where a kernel row's bits fit a word, one word-aligned run per kernel row
instead: :func:`row_run_weights`). Padding taps are
gathered as +1 and corrected exactly afterwards with the per-tap sum of the
weights, so zero padding and Larq's ±1 ``pad_values`` are all exact. The float
epilogue ``dot · multiplier[o] · K + offset[o]`` holds α, K, a bias and a
folded BatchNormalization. On CPUs with AVX2 the xor-popcount phase is the
hand-written kernel of :mod:`xnor_larq.simd`; elsewhere a portable loop.

Importing this module needs numba (``pip install "xnor_larq[fast]"``).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba import prange, types
    from numba.extending import intrinsic
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "xnor_larq's compiled inference needs numba. Install it with "
        '`pip install "xnor_larq[fast]"` (or `pip install numba`).'
    ) from error

from . import simd  # noqa: E402  (needs numba, checked above)

__all__ = [
    "WORD_BITS",
    "BinaryConv2D",
    "FloatConv2D",
    "FloatDense",
    "float_dense",
    "binary_conv2d",
    "current_threads",
    "input_scaling_map",
    "max_pool2d",
    "pack_channels",
    "pack_weights",
    "softmax",
    "softmax_call",
    "words_for",
]

WORD_BITS = 64
_JIT = dict(cache=True, fastmath=True)


def words_for(bits: int) -> int:
    """64-bit words holding ``bits`` bits."""
    return -(-bits // WORD_BITS)


@intrinsic
def _popcount(typingctx, value):
    if value != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@numba.njit(cache=False)
def current_threads():
    """``numba.get_num_threads()`` of the calling thread, in about 0.1 µs a call
    from Python against 1 µs for numba's own function (the kernels ask it on
    every call, which counts at batch 1)."""
    # Not cached: the compiled call embeds a function pointer (numba refuses to
    # cache it); it compiles in a fraction of a second.
    return numba.get_num_threads()


@intrinsic
def _next_task(typingctx, counter):
    """``counter[0] += 1`` atomically; returns the value before: the next task
    for whichever thread asks first."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", array.data, one, "monotonic")

    return types.int64(counter), codegen


@numba.njit(inline="always", **_JIT)
def _pack_row(values, r, bits, scale, shift, packed, words, abs_means):
    # row r of the (rows, bits) float32 values into the (rows, words) uint64
    # packed rows, both given flat, bit set where values[r, c] · scale[c] +
    # shift[c] < 0 (a folded BatchNorm, or 1 and 0); abs_means[r] = mean
    # |that| (for K) in the same pass (simd.pack_signs)
    # Common widths get a copy with the count a constant, in which the kernel's
    # loops unroll: in-process A/B (batch 64, 2 threads) 2.9x faster at 16
    # channels, 2.1x at 32, 1.5x at 64, 1.3-1.7x at 128, 256 and 512.
    if bits == 16:
        total = simd.pack_signs(values, r * 16, scale, shift, 16, packed, r * words)
    elif bits == 32:
        total = simd.pack_signs(values, r * 32, scale, shift, 32, packed, r * words)
    elif bits == 64:
        total = simd.pack_signs(values, r * 64, scale, shift, 64, packed, r * words)
    elif bits == 128:
        total = simd.pack_signs(values, r * 128, scale, shift, 128, packed, r * words)
    elif bits == 256:
        total = simd.pack_signs(values, r * 256, scale, shift, 256, packed, r * words)
    elif bits == 512:
        total = simd.pack_signs(values, r * 512, scale, shift, 512, packed, r * words)
    else:
        total = simd.pack_signs(values, r * bits, scale, shift, bits, packed, r * words)
    # in float32: the same rounding as float64's quotient, no conversions
    abs_means[r] = total / np.float32(bits)


@numba.njit(parallel=True, **_JIT)
def _pack_rows(values, bits, scale, shift, packed, words, abs_means):
    # every row (of abs_means' length) by _pack_row, in parallel
    for r in prange(abs_means.shape[0]):
        _pack_row(values, r, bits, scale, shift, packed, words, abs_means)


#: Inputs of at most this many floats are packed on the calling thread: below
#: it, starting the other threads costs more than they save (batch 1 of thin
#: layers, dense layers).
SERIAL_PACK_FLOATS = 1 << 13


@numba.njit(**_JIT)
def _pack_rows_serial(values, bits, scale, shift, packed, words, abs_means):
    # _pack_rows on the calling thread
    for r in range(abs_means.shape[0]):
        _pack_row(values, r, bits, scale, shift, packed, words, abs_means)


def _pack(rows, scale=None, shift=None):
    """``_pack_rows`` of a 2-D float32 array; returns ``(packed, abs_means)``."""
    count, bits = rows.shape
    abs_means = np.empty(count, np.float32)
    packed = np.empty((count, words_for(bits)), np.uint64)
    # small inputs on the calling thread, as in _binary_layer
    pack_rows = _pack_rows_serial if rows.size <= SERIAL_PACK_FLOATS else _pack_rows
    pack_rows(
        rows.reshape(-1),
        bits,
        np.ones(bits, np.float32) if scale is None else np.ascontiguousarray(scale, np.float32),
        np.zeros(bits, np.float32) if shift is None else np.ascontiguousarray(shift, np.float32),
        packed.reshape(-1),
        packed.shape[1],
        abs_means,
    )
    return packed, abs_means


def pack_channels(x: np.ndarray, with_abs_mean: bool = False, *, scale=None, shift=None):
    """Pack the last axis of a float array: ``(..., C)`` → ``(..., ceil(C/64))`` uint64.

    With ``with_abs_mean`` also returns ``mean_c |x|`` (shape ``x.shape[:-1]``),
    computed in the same pass (XNOR-Net's A, from which K is built). With
    per-channel ``scale`` and ``shift``, packs ``x · scale + shift`` instead (a
    BatchNormalization folded into the binarization; the mean is of it too).
    """
    x = np.ascontiguousarray(x, np.float32)
    packed, abs_means = _pack(x.reshape(-1, x.shape[-1]), scale, shift)
    packed = packed.reshape(*x.shape[:-1], -1)
    if with_abs_mean:
        return packed, abs_means.reshape(x.shape[:-1])
    return packed


#: Output channels computed together; their weight words are interleaved so
#: that one load fetches the same word of all of them (the compiler then runs
#: the block's xor + popcount as one vector operation).
OUTPUT_BLOCK = 4


def pack_weights(signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pack a ±1 kernel ``(kh, kw, C, O)`` into per-channel bit strings.

    Returns ``(packed, tap_sums)``. Output channel ``o``'s bit string holds tap
    ``t`` at bits ``t·C … t·C+C-1`` and lies at ``packed[o // 4, :, o % 4]``:
    ``packed`` is ``(ceil(O/4), ceil(kh·kw·C/64), 4)`` uint64, output channels
    interleaved in blocks of four (:data:`OUTPUT_BLOCK`; missing channels of
    the last block are zero). ``tap_sums`` is ``(O, kh·kw)`` int32, the sum of
    the signs of each tap (for padding).
    """
    kernel_h, kernel_w, channels, outputs = signs.shape
    per_output = np.ascontiguousarray(np.transpose(signs, (3, 0, 1, 2)), np.float32)
    flat = per_output.reshape(outputs, kernel_h * kernel_w * channels)
    rows, _ = _pack(flat)
    blocks = -(-outputs // OUTPUT_BLOCK)
    padded = np.zeros((blocks * OUTPUT_BLOCK, rows.shape[1]), np.uint64)
    padded[:outputs] = rows
    packed = np.ascontiguousarray(
        padded.reshape(blocks, OUTPUT_BLOCK, rows.shape[1]).transpose(0, 2, 1)
    )
    tap_sums = per_output.reshape(outputs, kernel_h * kernel_w, channels).sum(-1)
    return packed, tap_sums.astype(np.int32)


@numba.njit(**_JIT)
def _popcount_blocks_portable(patches, row, w_packed, counts):
    # counts[4b + j] = Σ_k popcount(patches[row, k] ^ w_packed[b, k, j]); the
    # compiler vectorizes the four channels of a block together.
    blocks, words, _ = w_packed.shape
    for block in range(blocks):
        m0 = np.uint64(0)
        m1 = np.uint64(0)
        m2 = np.uint64(0)
        m3 = np.uint64(0)
        for k in range(words):
            value = patches[row, k]
            m0 += _popcount(value ^ w_packed[block, k, 0])
            m1 += _popcount(value ^ w_packed[block, k, 1])
            m2 += _popcount(value ^ w_packed[block, k, 2])
            m3 += _popcount(value ^ w_packed[block, k, 3])
        counts[block * 4] = np.int32(m0)
        counts[block * 4 + 1] = np.int32(m1)
        counts[block * 4 + 2] = np.int32(m2)
        counts[block * 4 + 3] = np.int32(m3)


#: The popcount phase of the binary convolution: the AVX2 + scalar kernels of
#: :mod:`xnor_larq.simd` where the CPU has AVX2, else the portable loop.
_popcount_blocks = simd.popcount_blocks if simd.AVAILABLE else _popcount_blocks_portable


@numba.njit(inline="always", **_JIT)
def _inside_columns(width, kernel_w, stride_w, dil_w, left, out_w):
    # [first, end): the output columns whose taps all lie inside the input's width
    first = -(-left // stride_w)
    end = min(out_w, (width - 1 - (kernel_w - 1) * dil_w + left) // stride_w + 1)
    return first, end


@numba.njit(inline="always", **_JIT)
def _row_box_mean(channel_mean, n, oh, kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top,
                  left, out_w, column_sums, out):  # fmt: skip
    # K of output row (n, oh): the window mean of channel_mean, padding counted
    # as 0. Summed per input column over the window's rows first (a loop over
    # the width that vectorizes), then across each window's columns: the same
    # order of additions as _box_mean.
    batch, height, width = channel_mean.shape
    column_sums[:] = 0
    for kh in range(kernel_h):
        ih = oh * stride_h - top + kh * dil_h
        if 0 <= ih < height:
            for column in range(max(0, left), min(column_sums.shape[0], width + left)):
                column_sums[column] += channel_mean[n, ih, column - left]
    inverse = np.float32(1.0 / (kernel_h * kernel_w))
    for ow in range(out_w):
        total = np.float32(0.0)
        for kw in range(kernel_w):
            total += column_sums[ow * stride_w + kw * dil_w]
        out[ow] = total * inverse


@numba.njit(inline="always", **_JIT)
def row_runs_fit(kernel_w, channels):
    """True where a kernel row's ``kernel_w · channels`` bits fit one word: the
    convolution then lays its receptive fields out by kernel rows (see
    :func:`row_run_weights`). Compiled: the kernels ask it too."""
    return kernel_w * channels <= WORD_BITS


def row_run_weights(w_packed, channels, kernel_size):
    """``w_packed`` (from :func:`pack_weights`) in the layout of thin inputs' fields.

    Where :func:`row_runs_fit`, a field is gathered as one *run* per kernel row
    (its ``kw`` taps' ``C`` bits side by side), ``64 // (kw·C)`` runs to a word:
    kernel row ``kh``'s run at bit ``(kh % per_word)·kw·C`` of word ``kh //
    per_word``. Returns ``(ceil(O/4), ceil(kh / per_word), 4)`` uint64; the
    input unchanged where the runs do not fit.
    """
    kernel_h, kernel_w = kernel_size
    if not row_runs_fit(kernel_w, channels):
        return w_packed
    run = kernel_w * channels
    per_word = WORD_BITS // run
    blocks, words, lanes = w_packed.shape
    # (blocks, lanes, words) words → each channel's bit string, bit i at [..., i]
    strings = np.ascontiguousarray(w_packed.transpose(0, 2, 1)).astype("<u8")
    bits = np.unpackbits(strings.view(np.uint8), axis=-1, bitorder="little")
    runs = bits[..., : kernel_h * run].reshape(blocks, lanes, kernel_h, run)
    groups = -(-kernel_h // per_word)
    laid = np.zeros((blocks, lanes, groups * per_word, run), np.uint8)
    laid[:, :, :kernel_h] = runs
    full = np.zeros((blocks, lanes, groups, WORD_BITS), np.uint8)  # each word's tail clear
    full[..., : per_word * run] = laid.reshape(blocks, lanes, groups, per_word * run)
    words_out = np.packbits(full, axis=-1, bitorder="little").view("<u8")[..., 0]
    return np.ascontiguousarray(words_out.astype(np.uint64).transpose(0, 2, 1))


@numba.njit(inline="always", **_JIT)
def _gather_row_runs(x_packed, channels, n, oh, kernel_h, kernel_w, stride_h, stride_w,
                     dilation_h, dilation_w, pad_top, pad_left, out_w, patches):  # fmt: skip
    # Thin inputs (row_runs_fit: one word a pixel): every field of output row
    # (n, oh) as runs (row_run_weights' layout). A run slides along the row at
    # stride 1: one new pixel a step instead of kw. Taps outside the input are
    # clear bits (+1), corrected afterwards like the general gather's.
    height, width = x_packed.shape[1], x_packed.shape[2]
    run = kernel_w * channels
    per_word = 64 // run
    step = np.uint64(channels)
    last = np.uint64((kernel_w - 1) * channels)
    sliding = stride_w == 1 and dilation_w == 1 and kernel_w > 1
    for kh in range(kernel_h):
        ih = oh * stride_h - pad_top + kh * dilation_h
        word = kh // per_word
        at = np.uint64((kh % per_word) * run)
        first = kh % per_word == 0  # the word's first run: store, not or
        inside = 0 <= ih < height
        value = np.uint64(0)
        for ow in range(out_w):
            iw = ow * stride_w - pad_left
            if not inside:
                value = np.uint64(0)
            elif sliding and ow > 0:
                iw += kernel_w - 1
                new = x_packed[n, ih, iw, 0] if 0 <= iw < width else np.uint64(0)
                value = (value >> step) | (new << last)
            else:
                value = np.uint64(0)
                for kw in range(kernel_w):
                    column = iw + kw * dilation_w
                    if 0 <= column < width:
                        value |= x_packed[n, ih, column, 0] << np.uint64(kw * channels)
            if first:
                patches[ow, word] = value << at
            else:
                patches[ow, word] |= value << at


@numba.njit(inline="always", **_JIT)
def _append_bits(patches, ow, current, filled, index, value, bits):
    # Append the low `bits` bits of `value` to pixel ow's field: `current` holds
    # its last `filled` bits, words before `index` are stored (each once).
    current |= value << np.uint64(filled)
    filled += bits
    if filled >= 64:
        patches[ow, index] = current
        index += 1
        filled -= 64
        current = np.uint64(0)
        if filled > 0:  # the value's bits that did not fit
            current = value >> np.uint64(bits - filled)
    return current, filled, index


@numba.njit(inline="always", **_JIT)
def _wide_fields(words):
    # fields that get their row's popcounts from _row_popcounts
    return words > simd.FIXED_WORDS


@numba.njit(**_JIT)
def _row_popcounts(patches, pixels, w_packed, counts):
    # The popcounts of a whole row of wide fields, in a loop of its own before
    # the epilogue: inside the per-pixel loop with the gather and epilogue
    # around it, the kernel ran 1.1-1.15x slower at 18 and 36 words a field
    # (it then ran about 25% slower than alone). Narrow fields (at most
    # FIXED_WORDS) keep the per-pixel call, which measured as fast or faster.
    for ow in range(pixels):
        _popcount_blocks(patches, ow, w_packed, counts[ow])


@numba.njit(inline="always", **_JIT)
def _binary_conv_row(x_packed, channels, w_packed, pad_correction, kernel_h, kernel_w,
                     stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, out_w,
                     multiplier, offset, scale_map, scale_mode, n, oh, patches, padded,
                     any_padded, input_scaling, column_sums, correction, no_correction,
                     counts, row_counts, target):  # fmt: skip
    # One output row (n, oh) into target (out_w, outputs): first gather every
    # receptive field of the row into its bit string, then xor-popcount them
    # against the weights. The other arrays after `oh` are the task's scratch.
    batch, height, width, in_words = x_packed.shape
    outputs = pad_correction.shape[1]
    taps = kernel_h * kernel_w
    # float32 holds these integers exactly (|dot| < 2**24)
    full_dot = np.float32(taps * channels)
    # padded[ow] is written by the gather of every pixel with any_padded[ow]
    # set (it is read only there): no reset of the whole scratch per row
    first_inside, end_inside = _inside_columns(
        width, kernel_w, stride_w, dilation_w, pad_left, out_w
    )
    top_row = oh * stride_h - pad_top
    rows_inside = top_row >= 0 and top_row + (kernel_h - 1) * dilation_h < height
    if row_runs_fit(kernel_w, channels):
        _gather_row_runs(x_packed, channels, n, oh, kernel_h, kernel_w, stride_h, stride_w,
                         dilation_h, dilation_w, pad_top, pad_left, out_w, patches)  # fmt: skip
        for ow in range(out_w):
            any_padded[ow] = not (rows_inside and first_inside <= ow < end_inside)
            if any_padded[ow]:  # a border pixel: which of its taps are padding
                for kh in range(kernel_h):
                    ih = top_row + kh * dilation_h
                    for kw in range(kernel_w):
                        iw = ow * stride_w - pad_left + kw * dilation_w
                        padded[ow, kh * kernel_w + kw] = (
                            ih < 0 or ih >= height or iw < 0 or iw >= width
                        )
    else:
        for ow in range(out_w):
            # the taps' bits appended to the field's bit string in order
            current = np.uint64(0)
            filled = 0
            index = 0
            any_padded[ow] = False  # set below where a tap is padding
            if in_words == 1 and rows_inside and first_inside <= ow < end_inside:
                # an interior pixel, one word a tap: no bounds checks or flags
                left = ow * stride_w - pad_left
                for kh in range(kernel_h):
                    ih = top_row + kh * dilation_h
                    for kw in range(kernel_w):
                        value = x_packed[n, ih, left + kw * dilation_w, 0]
                        current, filled, index = _append_bits(
                            patches, ow, current, filled, index, value, channels
                        )
            else:
                for kh in range(kernel_h):
                    ih = top_row + kh * dilation_h
                    for kw in range(kernel_w):
                        iw = ow * stride_w - pad_left + kw * dilation_w
                        outside = ih < 0 or ih >= height or iw < 0 or iw >= width
                        padded[ow, kh * kernel_w + kw] = outside
                        if outside:
                            any_padded[ow] = True
                        for j in range(in_words):
                            # a padded tap is gathered as +1 (clear bits)
                            value = np.uint64(0) if outside else x_packed[n, ih, iw, j]
                            current, filled, index = _append_bits(
                                patches, ow, current, filled, index, value,
                                min(64, channels - j * 64),
                            )  # fmt: skip
            if filled > 0:
                patches[ow, index] = current
    if scale_mode == 2:
        _row_box_mean(scale_map, n, oh, kernel_h, kernel_w, stride_h, stride_w, dilation_h,
                      dilation_w, pad_top, pad_left, out_w, column_sums, input_scaling)  # fmt: skip
    row_kernel = _wide_fields(w_packed.shape[1])
    if row_kernel:
        _row_popcounts(patches, out_w, w_packed, row_counts)
    # Padding correction of each output channel for the current pixel's set of
    # padded taps; recomputed only where that set changes (near the borders).
    corrected_for = -1
    for ow in range(out_w):
        if any_padded[ow]:
            same = corrected_for >= 0
            if same:
                for tap in range(taps):
                    if padded[ow, tap] != padded[corrected_for, tap]:
                        same = False
                        break
            if not same:
                # Padded taps were gathered as +1 (contributing tap_sums);
                # they should contribute pad_value · tap_sums. Taps outer,
                # channels inner: a vector add per padded tap.
                correction[:] = 0
                for tap in range(taps):
                    if padded[ow, tap]:
                        for o in range(outputs):
                            correction[o] += pad_correction[tap, o]
                corrected_for = ow
        scale = np.float32(1.0)
        if scale_mode == 1:
            scale = scale_map[n, oh, ow]
        elif scale_mode == 2:
            scale = input_scaling[ow]
        if row_kernel:
            pixel_counts = row_counts[ow]
        else:
            _popcount_blocks(patches, ow, w_packed, counts)
            pixel_counts = counts
        # The epilogue as one simple loop over the channels, in float32 so
        # that it vectorizes (int64 → float conversions would not).
        shift = correction if any_padded[ow] else no_correction
        for o in range(outputs):
            dot = full_dot - np.float32(2) * np.float32(pixel_counts[o]) + np.float32(shift[o])
            target[ow, o] = dot * multiplier[o] * scale + offset[o]


@numba.njit(inline="always", **_JIT)
def _conv_row(x_packed, channels, w_packed, pad_correction, kernel_h, kernel_w, stride_h,
              stride_w, dilation_h, dilation_w, pad_top, pad_left, out_w, multiplier, offset,
              scale_map, scale_mode, n, oh, patches, padded, any_padded, input_scaling,
              column_sums, correction, no_correction, counts, row_counts, target):  # fmt: skip
    # _binary_conv_row, with a copy of its own for the commonest window (3×3,
    # strides and dilation 1) in which these are constants: the compiler then
    # unrolls the taps and folds the index arithmetic. In-process A/B (one
    # thread, batch 64): small_cnn's three binary convs 1.26×, 1.17× and 1.11×
    # faster, the 32×32×128 and 14×14×256 layers 1.04×; the first compile of
    # this module takes about 20 s longer.
    if (kernel_h == 3 and kernel_w == 3 and stride_h == 1 and stride_w == 1
            and dilation_h == 1 and dilation_w == 1):  # fmt: skip
        _binary_conv_row(x_packed, channels, w_packed, pad_correction, 3, 3, 1, 1, 1, 1,
                         pad_top, pad_left, out_w, multiplier, offset, scale_map, scale_mode, n,
                         oh, patches, padded, any_padded, input_scaling, column_sums,
                         correction, no_correction, counts, row_counts, target)  # fmt: skip
    else:
        _binary_conv_row(x_packed, channels, w_packed, pad_correction, kernel_h, kernel_w,
                         stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, out_w,
                         multiplier, offset, scale_map, scale_mode, n, oh, patches, padded,
                         any_padded, input_scaling, column_sums, correction, no_correction,
                         counts, row_counts, target)  # fmt: skip


@numba.njit(parallel=True, **_JIT)
def _binary_conv2d(x_packed, channels, w_packed, pad_correction, kernel_h, kernel_w, stride_h,
                   stride_w, dilation_h, dilation_w, pad_top, pad_left, out_h, out_w, multiplier,
                   offset, scale_map, scale_mode, pool_h, pool_w, threads, out):  # fmt: skip
    # pad_correction (taps, outputs): what a padded tap adds to each channel's
    # dot (_pad_corrections), prepared once by the callers.
    # threads: numba.get_num_threads() of the caller, passed in because calling
    # it here would embed a function pointer that stops numba caching this
    # function (every new process would compile it again, about a minute).
    # scale_mode: 0 no scale; 1 scale_map (N, H', W') given; 2 scale_map is the
    # input's channel mean (N, H, W) and K, its box mean, is computed here
    # while gathering (the same taps, no pass of its own).
    # pool_h × pool_w > 1: a max-pool with strides equal to the pool and no
    # padding follows; `out` is (N, H' // pool_h, W' // pool_w, O) and each
    # task computes the pool_h conv rows of one pooled row in a row buffer.
    batch = x_packed.shape[0]
    blocks, words, _ = w_packed.shape
    outputs = pad_correction.shape[1]
    taps = kernel_h * kernel_w
    pooled = pool_h * pool_w > 1
    rows = out.shape[1]  # output rows, pooled or not
    # input columns a row's windows span, padding included
    columns = (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1 if scale_mode == 2 else 0
    # Each thread takes the next output row from a shared counter until none
    # is left: on a shared VM one vCPU is often slowed by its neighbours, and a
    # fixed half of the rows per thread would wait for the slower one.
    tasks = batch * rows
    next_task = np.zeros(1, np.int64)
    for _ in prange(min(threads, tasks)):
        patches = np.empty((out_w, words), np.uint64)
        padded = np.empty((out_w, taps), np.bool_)  # written by the gather
        any_padded = np.empty(out_w, np.bool_)
        input_scaling = np.empty(out_w, np.float32)  # K of each pixel, mode 2
        column_sums = np.empty(columns, np.float32)  # K's column sums, mode 2
        correction = np.zeros(blocks * 4, np.int32)
        no_correction = np.zeros(blocks * 4, np.int32)
        # a pixel's counts (narrow fields), or the row's (wide ones: _row_popcounts)
        counts = np.empty(blocks * 4, np.int32)
        row_counts = np.empty((out_w if _wide_fields(words) else 0, blocks * 4), np.int32)
        conv_row = np.empty((out_w if pooled else 0, outputs), np.float32)
        while True:
            task = _next_task(next_task)
            if task >= tasks:
                break
            n = task // rows
            row = task % rows
            target = out[n, row]
            conv_target = conv_row if pooled else target
            # one call site: every copy of the inlined row function costs compile time
            for ph in range(pool_h):  # pool_h is 1 without a pool
                _conv_row(x_packed, channels, w_packed, pad_correction, kernel_h, kernel_w,
                          stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, out_w,
                          multiplier, offset, scale_map, scale_mode, n, row * pool_h + ph,
                          patches, padded, any_padded, input_scaling, column_sums, correction,
                          no_correction, counts, row_counts, conv_target)  # fmt: skip
                if not pooled:
                    continue
                for column in range(target.shape[0]):
                    pixel = target[column]
                    for pw in range(pool_w):
                        source = conv_row[column * pool_w + pw]
                        if ph == 0 and pw == 0:  # the window's first pixel
                            pixel[:] = source
                        else:
                            for o in range(outputs):  # vectorized over channels
                                pixel[o] = max(pixel[o], source[o])


def same_padding(size, kernel, stride, dilation):
    """TensorFlow's "same" padding before the first element, and the output size."""
    extent = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, out


def output_geometry(height, width, kernel, strides, dilation, padding):
    """``(pad_top, pad_left, out_h, out_w)`` for "same" or "valid" padding."""
    if padding == "same":
        pad_top, out_h = same_padding(height, kernel[0], strides[0], dilation[0])
        pad_left, out_w = same_padding(width, kernel[1], strides[1], dilation[1])
        return pad_top, pad_left, out_h, out_w
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    out_h = (height - extents[0]) // strides[0] + 1
    out_w = (width - extents[1]) // strides[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"a {kernel[0]}×{kernel[1]} 'valid' convolution needs an input of at least "
            f"{extents[0]}×{extents[1]}. Received: {height}×{width}"
        )
    return 0, 0, out_h, out_w


def _window(height, width, kernel_size, strides, dilation_rate, padding):
    """The kernels' window arguments: kernel, strides, dilation, pads, output size."""
    top, left, out_h, out_w = output_geometry(
        height, width, kernel_size, strides, dilation_rate, padding
    )
    return (*kernel_size, *strides, *dilation_rate, top, left, out_h, out_w)


def output_array(out, shape):
    """``out`` checked to be a C-contiguous float32 array of ``shape``; a new one if None.

    Every kernel with an ``out`` argument writes its result there instead of
    allocating: a caller repeating calls on one shape (e.g.
    :meth:`xnor_larq.inference.CompiledModel.predict`) saves the page faults of
    fresh multi-megabyte arrays.
    """
    if out is None:
        return np.empty(shape, np.float32)
    if not (
        isinstance(out, np.ndarray)
        and out.shape == tuple(shape)
        and out.dtype == np.float32
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        # the compiled loops do not bounds-check: a wrong array would be written past its end
        got = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}"
        raise ValueError(
            f"`out` must be a writeable C-contiguous float32 array of shape {tuple(shape)}. "
            f"Received: {got}"
        )
    return out


def _pad_corrections(tap_sums, pad_value):
    """``(taps, outputs)`` int32: what a padded tap adds to each output channel's
    dot. The kernels gather padding as +1 (clear bits), which contributes the
    tap's weight sum; ``pad_value`` (0 or ±1) should contribute ``pad_value``
    times it."""
    return np.ascontiguousarray(np.asarray(tap_sums, np.int32).T * np.int32(pad_value - 1))


def binary_conv2d(
    x_packed,
    channels,
    w_packed,
    tap_sums,
    kernel_size,
    *,
    strides=(1, 1),
    dilation_rate=(1, 1),
    padding="valid",
    pad_value=0,
    multiplier=None,
    offset=None,
    scale_map=None,
    out=None,
):
    """Binary convolution of packed inputs with packed weights, plus the epilogue.

    ``x_packed``: ``(N, H, W, ceil(C/64))`` from :func:`pack_channels`;
    ``w_packed``/``tap_sums`` from :func:`pack_weights`. Returns float32
    ``(N, H', W', O)``: ``dot · multiplier[o] · scale_map[n, h, w] + offset[o]``,
    where ``dot`` is the exact ±1 convolution (with ``multiplier=1``,
    ``offset=0`` and no scale map the integers themselves).

    Each call prepares the weights again (for thin inputs, their kernel-row
    layout); :class:`BinaryConv2D`, which takes the float input and packs it
    in the same call, prepares them once for repeated calls.
    """
    _, height, width, _ = x_packed.shape
    outputs = tap_sums.shape[0]
    # The kernel computes OUTPUT_BLOCK (4) output channels per pass.
    if w_packed.ndim != 3 or w_packed.shape[2] != OUTPUT_BLOCK or w_packed.shape[0] * 4 < outputs:
        raise ValueError(
            "`w_packed` must be the interleaved (ceil(O/4), words, 4) array from "
            f"pack_weights, for the {outputs} output channels of `tap_sums`. "
            f"Received: shape {w_packed.shape}"
        )
    multiplier = np.ones(outputs, np.float32) if multiplier is None else multiplier
    offset = np.zeros(outputs, np.float32) if offset is None else offset
    scale_mode = 0 if scale_map is None else 1
    if scale_map is None:
        scale_map = np.ones((1, 1, 1), np.float32)
    window = _window(height, width, kernel_size, strides, dilation_rate, padding)
    out = output_array(out, (x_packed.shape[0], *window[-2:], outputs))
    _binary_conv2d(
        np.ascontiguousarray(x_packed, np.uint64),
        channels,
        row_run_weights(np.ascontiguousarray(w_packed, np.uint64), channels, kernel_size),
        _pad_corrections(tap_sums, pad_value),
        *window,
        np.ascontiguousarray(multiplier, np.float32),
        np.ascontiguousarray(offset, np.float32),
        np.ascontiguousarray(scale_map, np.float32),
        scale_mode,
        1,
        1,
        current_threads(),
        out,
    )
    return out


@numba.njit(**_JIT)
def _binary_layer(x, channels, scale, shift, w_packed, pad_correction, kernel_h, kernel_w,
                  stride_h, stride_w, dilation_h, dilation_w, top, left, out_h, out_w, multiplier,
                  offset, input_scaling, pool_h, pool_w, threads, out):  # fmt: skip
    # pack (with K's channel mean) → K → xor-popcount conv (→ max-pool), in one
    # call from Python
    batch, height, width, _ = x.shape
    abs_means = np.empty(batch * height * width, np.float32)
    words = (channels + 63) // 64
    packed = np.empty((batch, height, width, words), np.uint64)
    if x.size <= SERIAL_PACK_FLOATS:
        _pack_rows_serial(x.reshape(-1), channels, scale, shift, packed.reshape(-1), words,
                          abs_means)  # fmt: skip
    else:
        _pack_rows(x.reshape(-1), channels, scale, shift, packed.reshape(-1), words, abs_means)
    # with K, the conv takes the channel means and box-filters them as it gathers
    _binary_conv2d(
        packed, channels, w_packed, pad_correction, kernel_h, kernel_w, stride_h, stride_w,
        dilation_h, dilation_w, top, left, out_h, out_w, multiplier, offset,
        abs_means.reshape(batch, height, width), 2 if input_scaling else 0, pool_h, pool_w,
        threads, out,
    )  # fmt: skip


class _PreparedConv:
    """What both prepared convolutions share: geometry per input size, input checks.

    Subclasses set ``channels``, ``outputs``, ``kernel_size``, ``strides``,
    ``dilation_rate`` and ``padding``, then call ``super().__init__()``.
    """

    def __init__(self):
        self._geometries = {}  # input shape -> (window arguments, output shape), checked once

    def _geometry(self, input_shape):
        """The kernels' window arguments and the output shape for an input shape,
        checked and computed once per shape: at batch 1 this Python work is a
        visible part of a layer's time."""
        geometry = self._geometries.get(input_shape)
        if geometry is None:
            if len(input_shape) != 4 or input_shape[3] != self.channels:
                # the compiled loops do not bounds-check: a mismatch would read past the arrays
                raise ValueError(
                    f"the input must be (batch, height, width, {self.channels}) for this "
                    f"{type(self).__name__}. Received: shape {input_shape}"
                )
            window = _window(
                *input_shape[1:3], self.kernel_size, self.strides, self.dilation_rate, self.padding
            )
            geometry = (window, self._output_shape(input_shape[0], window))
            self._geometries[input_shape] = geometry
        return geometry

    def _output_shape(self, batch, window):
        # the convolution's; BinaryConv2D's is after its fused pool
        return (batch, *window[-2:], self.outputs)

    def output_shape(self, input_shape) -> tuple:
        """``(N, H', W', outputs)`` for an ``(N, H, W, channels)`` input (a
        :class:`BinaryConv2D`'s after its fused pool, if any)."""
        return self._geometry(tuple(input_shape))[1]

    def _prepared(self, x):
        """``x`` as C-contiguous float32 ``(N, H, W, channels)``, its window
        arguments and the output shape."""
        if type(x) is not np.ndarray or x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, np.float32)
        return x, *self._geometry(x.shape)


class BinaryConv2D(_PreparedConv):
    """A whole binary convolution of float inputs, prepared once for repeated calls.

    ``x`` (float32 ``(N, H, W, C)``) is binarized (``sign(x · input_scale +
    input_shift)``, a BatchNormalization folded in), packed, convolved by
    xor-popcount with the packed weights (from :func:`pack_weights`), and
    returned as ``dot · multiplier[o] · K + offset[o]`` with XNOR-Net's K of
    ``x · input_scale + input_shift`` when ``input_scaling``. The same result
    as :func:`pack_channels`, :func:`input_scaling_map` and
    :func:`binary_conv2d` in turn, in one compiled call that box-filters K
    while gathering the receptive fields: at batch 1 the Python overhead of
    three calls is a large part of a small layer's time, and K's own pass over
    the map is saved at every batch size.

    ``pool_size`` ``(ph, pw)``: a max-pool that follows (strides equal to the
    pool, "valid" padding, Keras's default) computed in the same call: the
    conv rows of each pooled row go through a row buffer, so the full-size
    output is never stored.
    """

    def __init__(self, w_packed, tap_sums, channels, kernel_size, *, strides=(1, 1),
                 dilation_rate=(1, 1), padding="valid", pad_value=0, multiplier=None,
                 offset=None, input_scale=None, input_shift=None, input_scaling=False,
                 pool_size=(1, 1)):  # fmt: skip
        outputs, taps = tap_sums.shape
        pool_size = tuple(pool_size)
        if len(pool_size) != 2 or not all(isinstance(p, int) and p >= 1 for p in pool_size):
            raise ValueError(
                f"`pool_size` must be two positive integers. Received: pool_size={pool_size!r}"
            )
        if taps != kernel_size[0] * kernel_size[1]:
            raise ValueError(
                f"`tap_sums` must be (outputs, {kernel_size[0] * kernel_size[1]}) for a "
                f"{kernel_size} kernel. Received: shape {tap_sums.shape}"
            )
        if padding not in ("same", "valid"):
            raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        if pad_value not in (0, 1, -1):
            raise ValueError(f"`pad_value` must be 0, 1 or -1. Received: pad_value={pad_value!r}")
        words = words_for(taps * channels)
        expected = (-(-outputs // OUTPUT_BLOCK), words, OUTPUT_BLOCK)
        if w_packed.shape != expected:
            raise ValueError(
                f"`w_packed` must be the {expected} array from pack_weights for {outputs} "
                f"outputs of {taps}×{channels} signs. Received: shape {w_packed.shape}"
            )

        def per_channel(name, value, size, default):
            if value is None:
                return np.full(size, default, np.float32)
            value = np.ascontiguousarray(value, np.float32)
            if value.shape != (size,):
                raise ValueError(f"`{name}` must have shape ({size},). Received: {value.shape}")
            return value

        # in the layout the convolution gathers fields in
        self.w_packed = row_run_weights(np.ascontiguousarray(w_packed, np.uint64), channels,
                                        kernel_size)  # fmt: skip
        self.tap_sums = np.ascontiguousarray(tap_sums, np.int32)
        self.channels, self.outputs = channels, outputs
        self.kernel_size, self.strides, self.dilation_rate = kernel_size, strides, dilation_rate
        self.padding, self.pad_value, self.input_scaling = padding, int(pad_value), input_scaling
        self.pool_size = pool_size
        self.multiplier = per_channel("multiplier", multiplier, outputs, 1.0)
        self.offset = per_channel("offset", offset, outputs, 0.0)
        self.input_scale = per_channel("input_scale", input_scale, channels, 1.0)
        self.input_shift = per_channel("input_shift", input_shift, channels, 0.0)
        # the compiled call's arguments before and after the window's
        self._weights = (
            channels,
            self.input_scale,
            self.input_shift,
            self.w_packed,
            _pad_corrections(self.tap_sums, self.pad_value),
        )
        self._epilogue = (self.multiplier, self.offset, input_scaling, *pool_size)
        super().__init__()

    def _output_shape(self, batch, window):
        # after the pool, if any
        _, height, width, outputs = super()._output_shape(batch, window)
        pool_h, pool_w = self.pool_size
        if height < pool_h or width < pool_w:
            raise ValueError(
                f"a {pool_h}×{pool_w} max-pool needs a conv output of at least "
                f"{pool_h}×{pool_w}. Received: {height}×{width}"
            )
        return batch, height // pool_h, width // pool_w, outputs

    def __call__(self, x, out=None):
        """The layer's output for ``x``, written to ``out`` if given (see :func:`output_array`)."""
        x, window, out_shape = self._prepared(x)
        out = output_array(out, out_shape)
        _binary_layer(x, *self._weights, *window, *self._epilogue, current_threads(), out)
        return out

    def compiled_call(self, input_shape, threads):
        """``(function, arguments, output_shape)`` such that ``function(x,
        *arguments, out)`` is ``self(x, out)`` on ``threads`` numba threads, for a
        C-contiguous float32 ``x`` of ``input_shape`` and ``out`` of
        ``output_shape``, without the checks of every call. For callers that
        check their arrays once and call many times (at batch 1 the checks are
        a visible part of a layer's time); wrong arrays would be read and
        written past their ends."""
        window, out_shape = self._geometry(tuple(input_shape))
        # Starts numba's threads: a parallel kernel loaded from the disk cache
        # and called only from other compiled code (as _binary_layer calls the
        # convolution), before any parallel kernel was called from Python,
        # crashes the process.
        current_threads()
        return _binary_layer, (*self._weights, *window, *self._epilogue, threads), out_shape


@numba.njit(parallel=True, **_JIT)
def _box_mean(
    channel_mean, kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top, left, out_h, out_w
):
    batch = channel_mean.shape[0]
    out = np.empty((batch, out_h, out_w), np.float32)
    columns = (out_w - 1) * stride_w + (kernel_w - 1) * dil_w + 1
    for row in prange(batch * out_h):
        column_sums = np.empty(columns, np.float32)
        _row_box_mean(channel_mean, row // out_h, row % out_h, kernel_h, kernel_w, stride_h,
                      stride_w, dil_h, dil_w, top, left, out_w, column_sums,
                      out[row // out_h, row % out_h])  # fmt: skip
    return out


def input_scaling_map(
    x, kernel_size, *, strides=(1, 1), dilation_rate=(1, 1), padding="valid", channel_mean=None
):
    """XNOR-Net's K (docs/MATH.md §3) as ``(N, H', W')``: box mean of ``mean_c |x|``.

    ``channel_mean`` (``mean_c |x|``, e.g. from :func:`pack_channels`) saves a pass.
    """
    height, width = x.shape[1:3]
    if channel_mean is None:
        channel_mean = np.abs(x).mean(axis=-1, dtype=np.float32)
    return _box_mean(
        np.ascontiguousarray(channel_mean),
        *_window(height, width, kernel_size, strides, dilation_rate, padding),
    )


@numba.njit(parallel=True, **_JIT)
def _max_pool(x, pool_h, pool_w, stride_h, stride_w, top, left, out_h, out_w, out):
    batch, height, width, channels = x.shape
    for row in prange(batch * out_h):
        n = row // out_h
        oh = row % out_h
        for ow in range(out_w):
            target = out[n, oh, ow]
            target[:] = -np.inf
            for kh in range(pool_h):
                ih = oh * stride_h - top + kh
                if ih < 0 or ih >= height:
                    continue
                for kw in range(pool_w):
                    iw = ow * stride_w - left + kw
                    if iw < 0 or iw >= width:
                        continue
                    source = x[n, ih, iw]
                    for c in range(channels):  # vectorized over channels
                        target[c] = max(target[c], source[c])
    return out


def max_pool_output_shape(input_shape, pool_size, strides, padding) -> tuple:
    """The ``(N, H', W', C)`` output shape of :func:`max_pool2d`."""
    batch, height, width, channels = input_shape
    geometry = output_geometry(height, width, pool_size, strides, (1, 1), padding)
    return (batch, *geometry[2:], channels)


def max_pool2d(x, pool_size, strides, padding, out=None):
    """Max pooling as Keras computes it ("same" padding never picks the pad)."""
    batch, height, width, channels = x.shape
    top, left, out_h, out_w = output_geometry(height, width, pool_size, strides, (1, 1), padding)
    return _max_pool(
        np.ascontiguousarray(x, np.float32),
        pool_size[0],
        pool_size[1],
        strides[0],
        strides[1],
        top,
        left,
        out_h,
        out_w,
        output_array(out, (batch, out_h, out_w, channels)),
    )


@numba.njit(parallel=True, **_JIT)
def _im2col(x, kernel_h, kernel_w, stride_h, stride_w, dil_h, dil_w, top, left, out_h, out_w):
    batch, height, width, channels = x.shape
    columns = np.zeros((batch * out_h * out_w, kernel_h * kernel_w * channels), np.float32)
    for row in prange(batch * out_h):
        n = row // out_h
        oh = row % out_h
        for ow in range(out_w):
            target = row * out_w + ow
            for kh in range(kernel_h):
                ih = oh * stride_h - top + kh * dil_h
                if ih < 0 or ih >= height:
                    continue
                for kw in range(kernel_w):
                    iw = ow * stride_w - left + kw * dil_w
                    if iw < 0 or iw >= width:
                        continue
                    start = (kh * kernel_w + kw) * channels
                    for c in range(channels):
                        columns[target, start + c] = x[n, ih, iw, c]
    return columns


_ACCUMULATE = simd.float_accumulate
_acc_8x1, _acc_16x1, _acc_24x1, _acc_32x1 = (_ACCUMULATE[r, 1] for r in (1, 2, 3, 4))
_acc_8x2, _acc_16x2, _acc_24x2, _acc_32x2 = (_ACCUMULATE[r, 2] for r in (1, 2, 3, 4))
_acc_8x4, _acc_16x4 = _ACCUMULATE[1, 4], _ACCUMULATE[2, 4]


@numba.njit(inline="always", **_JIT)
def _accumulate_pixels(pixels, x, offsets, kernel_rows, taps, channels, kernel, out, start,
                       pixel_step, out_step):  # fmt: skip
    # All of the kernel's lanes for 1, 2 or 4 (lanes <= 16 only) output pixels:
    # 32 lanes a call, then the 8-24 left (simd.float_accumulate).
    lanes = kernel.shape[1]
    lane = 0
    while lane < lanes:
        rest = min(lanes - lane, 32)
        if pixels == 4:
            if rest == 16:
                _acc_16x4(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                          pixel_step, out_step)  # fmt: skip
            else:
                _acc_8x4(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                         pixel_step, out_step)  # fmt: skip
        elif pixels == 2:
            if rest == 32:
                _acc_32x2(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                          pixel_step, out_step)  # fmt: skip
            elif rest == 24:
                _acc_24x2(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                          pixel_step, out_step)  # fmt: skip
            elif rest == 16:
                _acc_16x2(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                          pixel_step, out_step)  # fmt: skip
            else:
                _acc_8x2(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                         pixel_step, out_step)  # fmt: skip
        elif rest == 32:
            _acc_32x1(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                      pixel_step, out_step)  # fmt: skip
        elif rest == 24:
            _acc_24x1(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                      pixel_step, out_step)  # fmt: skip
        elif rest == 16:
            _acc_16x1(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                      pixel_step, out_step)  # fmt: skip
        else:
            _acc_8x1(x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                     pixel_step, out_step)  # fmt: skip
        lane += rest


@numba.njit(parallel=True, **_JIT)
def _direct_conv(x, kernel, outputs, bias, relu, kernel_h, kernel_w, stride_h, stride_w, dil_h,
                 dil_w, top, left, out_h, out_w, out):  # fmt: skip
    # kernel: (kh·kw·C, lanes), the outputs zero-padded to a multiple of
    # FLOAT_LANES; bias (outputs,) or empty, then max(·, 0) if relu (each row
    # once done). Per output row, the input rows its taps read are copied into
    # a zero-padded buffer (padding adds nothing), so that every pixel has the
    # same taps: 2 or 4 neighbouring pixels are summed at once in vector
    # registers (simd.float_accumulate), each weight loaded once for them, the
    # borders included.
    batch, height, width, channels = x.shape
    lanes = kernel.shape[1]
    x_flat = x.reshape(-1)
    out_flat = out.reshape(-1)
    direct = lanes == outputs  # else through a padded per-pixel buffer
    group = 4 if lanes <= 16 else 2
    # the buffer's columns: those the row's windows span, from the left padding
    span = (out_w - 1) * stride_w + (kernel_w - 1) * dil_w + 1
    first_column, end_column = max(0, left), min(span, left + width)  # those with input
    copied = max(0, end_column - first_column) * channels
    for row in prange(batch * out_h):
        n = row // out_h
        oh = row % out_h
        buffer = np.zeros(kernel_h * span * channels, np.float32)
        offsets = np.empty(kernel_h * kernel_w, np.int64)  # of each tap's first float
        kernel_rows = np.empty(kernel_h * kernel_w, np.int64)  # and its first kernel row
        pixels = np.empty(group * lanes, np.float32)
        taps = 0
        run = kernel_w * channels if dil_w == 1 else channels  # floats a tap covers
        for kh in range(kernel_h):
            ih = oh * stride_h - top + kh * dil_h
            if ih < 0 or ih >= height:
                continue  # a padding row adds nothing: no tap
            at = kh * span * channels
            source = ((n * height + ih) * width + first_column - left) * channels
            target_at = at + first_column * channels
            buffer[target_at : target_at + copied] = x_flat[source : source + copied]
            if dil_w == 1:  # a whole kernel row: kw·C floats in a row, one tap
                offsets[taps] = at
                kernel_rows[taps] = kh * kernel_w * channels
                taps += 1
                continue
            for kw in range(kernel_w):
                offsets[taps] = at + kw * dil_w * channels
                kernel_rows[taps] = (kh * kernel_w + kw) * channels
                taps += 1
        ow = 0
        while ow < out_w:
            count = group
            if ow + count > out_w:
                count = 2 if ow + 2 <= out_w else 1
            target, start = pixels, 0
            if direct:
                target, start = out_flat, ((n * out_h + oh) * out_w + ow) * outputs
            source = buffer[ow * stride_w * channels :]
            if taps == 3 and run == 3:
                # a 3×3 kernel over one channel (grey images' stems), no padding
                # row: a copy with the counts constant, whose loops unroll. In-
                # process A/B (small_cnn's 28×28×1→16 stem): 1.2x at batch 64,
                # 1.06-1.1x at batch 1. (The same for VGG's three channels,
                # `run` 9, measured within noise: not kept.)
                _accumulate_pixels(count, source, offsets, kernel_rows, 3, 3, kernel, target,
                                   start, stride_w * channels, lanes)  # fmt: skip
            else:
                _accumulate_pixels(count, source, offsets, kernel_rows, taps, run, kernel,
                                   target, start, stride_w * channels, lanes)  # fmt: skip
            if not direct:
                for p in range(count):
                    for o in range(outputs):
                        out[n, oh, ow + p, o] = pixels[p * lanes + o]
            ow += count
        _row_bias_relu(out[n, oh], bias, relu)


@numba.njit(inline="always", **_JIT)
def _row_bias_relu(row, bias, relu):
    # A folded bias and a ReLU on one output row while it is in cache: as a
    # numpy pass over the whole output they cost more than the convolution
    # wherever that output outgrows the caches (3.7x for BinaryNet's first
    # layer at batch 64, 34 MB).
    if bias.shape[0] == 0 and not relu:
        return
    for pixel in range(row.shape[0]):
        values = row[pixel]
        if bias.shape[0] > 0:
            for o in range(values.shape[0]):
                values[o] += bias[o]
        if relu:
            for o in range(values.shape[0]):
                values[o] = max(values[o], np.float32(0.0))


@numba.njit(parallel=True, **_JIT)
def _bias_relu(out, bias, relu):
    # _row_bias_relu over every row of a (rows, pixels, channels) array, in parallel
    for row in prange(out.shape[0]):
        _row_bias_relu(out[row], bias, relu)


#: Below this many multiply-adds per output value (kh·kw·C_in) a float conv
#: runs as a direct loop; a matrix product that thin wastes BLAS.
DIRECT_CONV_DEPTH = 32


class FloatConv2D(_PreparedConv):
    """A float convolution with its kernel prepared once, for repeated calls.

    Thin convolutions (fewer than :data:`DIRECT_CONV_DEPTH` multiply-adds per
    output value) run as a direct compiled loop that sums each output pixel in
    vector registers (:data:`xnor_larq.simd.float_accumulate`, the kernel's
    outputs zero-padded to a multiple of 8; 2 or 4 neighbouring pixels at once,
    each kernel row as one run of ``kw·C`` floats, from input rows copied into
    a zero-padded row buffer so that the borders take the same path); the rest
    as im2col plus one BLAS product.

    ``bias`` (``(out_channels,)``, e.g. a folded BatchNormalization) and
    ``activation="relu"`` are applied to each output row in the same compiled
    call, while the row is in cache.
    """

    def __init__(self, kernel, *, strides=(1, 1), dilation_rate=(1, 1), padding="valid",
                 bias=None, activation=None):  # fmt: skip
        kernel = np.asarray(kernel, np.float32)
        if kernel.ndim != 4:
            raise ValueError(
                f"`kernel` must be (kernel_h, kernel_w, in_channels, out_channels). "
                f"Received: shape {kernel.shape}"
            )
        if padding not in ("same", "valid"):
            raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        if activation not in (None, "relu"):
            raise ValueError(
                f"`activation` must be None or 'relu'. Received: activation={activation!r}"
            )
        self.kernel_size, self.channels, self.outputs = kernel.shape[:2], *kernel.shape[2:]
        if bias is None:
            self.bias = np.zeros(0, np.float32)  # none: nothing added
        else:
            self.bias = np.ascontiguousarray(bias, np.float32)
            if self.bias.shape != (self.outputs,):
                raise ValueError(
                    f"`bias` must have shape ({self.outputs},). Received: {self.bias.shape}"
                )
        self.relu = activation == "relu"
        self.strides, self.dilation_rate, self.padding = strides, dilation_rate, padding
        self.direct = kernel.shape[0] * kernel.shape[1] * kernel.shape[2] < DIRECT_CONV_DEPTH
        if self.direct:
            lanes = -(-self.outputs // simd.FLOAT_LANES) * simd.FLOAT_LANES
            self.kernel = np.zeros((kernel[..., 0].size, lanes), np.float32)
            self.kernel[:, : self.outputs] = kernel.reshape(-1, self.outputs)
        else:
            self.kernel = np.ascontiguousarray(kernel.reshape(-1, self.outputs))
        super().__init__()

    def __call__(self, x, out=None):
        """The convolution of ``x``, written to ``out`` if given (see :func:`output_array`)."""
        x, window, out_shape = self._prepared(x)
        out = output_array(out, out_shape)
        if self.direct:
            _direct_conv(x, self.kernel, self.outputs, self.bias, self.relu, *window, out)
            return out
        np.matmul(_im2col(x, *window), self.kernel, out=out.reshape(-1, self.outputs))
        if self.bias.shape[0] or self.relu:
            _bias_relu(out.reshape(-1, out.shape[2], self.outputs), self.bias, self.relu)
        return out

    def compiled_call(self, input_shape):
        """As :meth:`BinaryConv2D.compiled_call` (on numba's thread count of the
        calling thread), for the direct loop; None where the convolution runs as
        im2col and BLAS."""
        if not self.direct:
            return None
        window, out_shape = self._geometry(tuple(input_shape))
        return _direct_conv, (self.kernel, self.outputs, self.bias, self.relu, *window), out_shape


def float_conv2d(x, kernel, *, strides=(1, 1), dilation_rate=(1, 1), padding="valid"):
    """One float convolution (:class:`FloatConv2D`; build that once for repeated calls)."""
    return FloatConv2D(kernel, strides=strides, dilation_rate=dilation_rate, padding=padding)(x)


@numba.njit(**_JIT)
def _softmax_rows(x, out):
    rows, classes = x.shape
    for r in range(rows):
        top = x[r, 0]
        for c in range(1, classes):
            top = max(top, x[r, c])
        total = np.float32(0.0)
        for c in range(classes):
            out[r, c] = np.exp(x[r, c] - top)
            total += out[r, c]
        inverse = np.float32(1.0) / total
        for c in range(classes):
            out[r, c] *= inverse
    return out


def softmax(x):
    """Softmax over the last axis of a 2-D float32 array, compiled: numpy's
    five passes cost about 20 µs at batch 1, more than a small model's last layer."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"`x` must be 2-D (batch, classes). Received: shape {x.shape}")
    return _softmax_rows(x, np.empty_like(x))


def softmax_call(input_shape):
    """As :meth:`BinaryConv2D.compiled_call`, for :func:`softmax` of a 2-D input."""
    if len(input_shape) != 2:
        raise ValueError(f"the input must be 2-D (batch, classes). Received: shape {input_shape}")
    return _softmax_rows, (), tuple(input_shape)


@numba.njit(**_JIT)
def _float_dense(x, kernel_t, bias, out):
    # out[n, o] = bias[o] + x[n] · kernel_t[o]: one dot product of contiguous
    # rows per output (a reduction that vectorizes, the sums in registers);
    # one thread. The former loop (out[n] += x[n, k] · kernel[k] over k) kept
    # the sums in memory: each step waited on the last one's store.
    batch, inputs = x.shape
    for n in range(batch):
        for o in range(kernel_t.shape[0]):
            weights = kernel_t[o]
            total = np.float32(0.0)
            for k in range(inputs):
                total += x[n, k] * weights[k]
            out[n, o] = total + bias[o]
    return out


class FloatDense:
    """``x @ kernel + bias`` for 2-D float32 ``x``, compiled and on the calling thread,
    with the kernel prepared once (transposed) for repeated calls.

    For the small full-precision heads of binary networks (a few thousand
    weights): BLAS would start its own threads for them, which then compete
    for the cores with the binary kernels' threads (1.2× slower BinaryNet VGG
    at batch 1 on 2 cores).
    """

    def __init__(self, kernel, bias=None):
        kernel = np.asarray(kernel, np.float32)
        if kernel.ndim != 2:
            raise ValueError(
                f"`kernel` must be 2-D (inputs, outputs). Received: shape {kernel.shape}"
            )
        self.inputs, self.outputs = kernel.shape
        self.kernel_t = np.ascontiguousarray(kernel.T)
        if bias is None:
            bias = np.zeros(self.outputs, np.float32)
        self.bias = np.ascontiguousarray(bias, np.float32)
        if self.bias.shape != (self.outputs,):
            raise ValueError(
                f"`bias` must have shape ({self.outputs},). Received: {self.bias.shape}"
            )

    def __call__(self, x, out=None):
        """The product for ``x`` (``(batch, inputs)``), in ``out`` if given
        (see :func:`output_array`)."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.inputs:
            raise ValueError(
                f"`x` must be (batch, {self.inputs}) for this FloatDense. Received: shape {x.shape}"
            )
        return _float_dense(
            x, self.kernel_t, self.bias, output_array(out, (x.shape[0], self.outputs))
        )

    def compiled_call(self, input_shape):
        """As :meth:`BinaryConv2D.compiled_call`, for ``(batch, inputs)`` inputs."""
        if len(input_shape) != 2 or input_shape[1] != self.inputs:
            raise ValueError(
                f"the input must be (batch, {self.inputs}) for this FloatDense. "
                f"Received: shape {tuple(input_shape)}"
            )
        return _float_dense, (self.kernel_t, self.bias), (input_shape[0], self.outputs)


def float_dense(x, kernel, bias=None, out=None):
    """``x @ kernel + bias`` for 2-D float32 ``x``: one call of :class:`FloatDense`
    (build that once for repeated calls). ``out`` as in :func:`output_array`."""
    kernel = np.asarray(kernel, np.float32)
    x = np.asarray(x)
    if kernel.ndim != 2 or x.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(
            "`x` must be (batch, inputs) and `kernel` (inputs, outputs). "
            f"Received: shapes {x.shape} and {kernel.shape}"
        )
    return FloatDense(kernel, bias)(x, out)
