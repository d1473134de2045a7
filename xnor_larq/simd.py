"""Hand-written kernels for :mod:`xnor_larq.bitpack`, as LLVM IR through numba.

:func:`popcount_blocks` (x86 with AVX2 only) is the binary convolution's
popcount phase; :data:`float_accumulate` (any CPU) the inner loop of the thin
float convolutions that open binary networks.

The binary convolution spends most of its time in one loop: for one output
pixel, ``counts[o] = Σ_k popcount(patch[k] XOR weight[o, k])`` over the
packed receptive field. Left to itself, the compiler runs every output channel
through AVX2's nibble-lookup popcount (``vpshufb``), which keeps the vector
unit busy while the scalar integer units sit idle. This kernel splits the work
between them: each pass over the words handles :data:`VECTOR_BLOCKS` blocks of
four output channels in AVX2 registers (3 on full-width AVX2 CPUs, 1 on Zen 1)
and the next block with scalar ``popcnt``, so both units run at once (the
speed-ups over the compiler's loop are in ``docs/RESULTS.md``, from
``xnor-larq bench inference``). The vector half also adds the per-byte counts
up for 31 words before one horizontal sum (``vpsadbw``), instead of after each
word.

:data:`AVAILABLE` says whether the CPU has AVX2 and ``popcnt``; without them
:mod:`xnor_larq.bitpack` uses its portable loop.

For developers: numba caches :mod:`xnor_larq.bitpack`'s compiled functions
(``cache=True``) keyed on ``bitpack.py`` alone, so after editing this module
delete ``xnor_larq/__pycache__/*.nbi`` and ``*.nbc``, or the cached kernels
keep the old code. (An installed package is rewritten as a whole, so users are
not affected; the cache is per CPU model.)
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

__all__ = [
    "AVAILABLE",
    "FIXED_WORDS",
    "FLOAT_LANES",
    "float_accumulate",
    "pack_signs",
    "popcount_blocks",
    "popcount_kernel",
    "VECTOR_BLOCKS",
]


def _host_supports_kernel() -> bool:
    if config.CPU_NAME not in (None, "host"):  # compiling for another CPU (NUMBA_CPU_NAME)
        return False
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
    except RuntimeError:  # the host's features are unknown on some platforms
        return False
    return bool(features.get("avx2", False) and features.get("popcnt", False))


#: True if the host CPU can run :func:`popcount_blocks`.
AVAILABLE = _host_supports_kernel()

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BYTES = ir.VectorType(ir.IntType(8), 32)
_QUADS = ir.VectorType(_I64, 4)
_COUNTS = ir.VectorType(_I32, 4)
_EIGHT_COUNTS = ir.VectorType(_I32, 8)
#: Words summed per byte before a horizontal sum: a byte counts at most 8 set
#: bits a word, and 31 · 8 = 248 still fits.
_WORDS_PER_BYTE_SUM = 31


def _i64(value):
    return ir.Constant(_I64, value)


def _bytes(values):
    return ir.Constant(_BYTES, [ir.Constant(ir.IntType(8), v) for v in values])


class _Emitter:
    """IR for one call: the vector and scalar popcount steps and their loops."""

    def __init__(self, context, builder, signature, args, words=None):
        self.builder = builder
        patches = context.make_array(signature.args[0])(context, builder, args[0])
        weights = context.make_array(signature.args[2])(context, builder, args[2])
        counts = context.make_array(signature.args[3])(context, builder, args[3])
        self.words = cgutils.unpack_tuple(builder, patches.shape, 2)[1]
        if words is not None:  # a known count: the compiler unrolls the word loop
            self.words = _i64(words)
        self.blocks = cgutils.unpack_tuple(builder, weights.shape, 3)[0]
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        self.patch = builder.gep(patches.data, [builder.mul(row, self.words)])
        self.weights = weights.data
        self.weight_quads = builder.bitcast(weights.data, _QUADS.as_pointer())
        self.counts = counts.data
        module = builder.module
        self.pshufb = cgutils.get_or_insert_function(
            module, ir.FunctionType(_BYTES, [_BYTES, _BYTES]), "llvm.x86.avx2.pshuf.b"
        )
        self.psadbw = cgutils.get_or_insert_function(
            module, ir.FunctionType(_QUADS, [_BYTES, _BYTES]), "llvm.x86.avx2.psad.bw"
        )
        self.ctpop = cgutils.get_or_insert_function(
            module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64"
        )
        self.nibble_counts = _bytes([bin(i).count("1") for i in range(16)] * 2)
        self.low_nibble = _bytes([15] * 32)
        self.four = _bytes([4] * 32)
        self.zero_bytes = ir.Constant(_BYTES, None)

    def broadcast(self, word):
        b = self.builder
        vector = b.insert_element(ir.Constant(_QUADS, ir.Undefined), word, ir.Constant(_I32, 0))
        return b.shuffle_vector(
            vector, ir.Constant(_QUADS, ir.Undefined), ir.Constant(_COUNTS, [0, 0, 0, 0])
        )

    def vector_step(self, block, k, word, byte_sums):
        """byte_sums += per-byte popcount(word XOR weights[block, k, 0:4])."""
        b = self.builder
        weights = b.load(b.gep(self.weight_quads, [b.add(b.mul(block, self.words), k)]), align=8)
        x = b.bitcast(b.xor(self.broadcast(word), weights), _BYTES)
        low = b.call(self.pshufb, [self.nibble_counts, b.and_(x, self.low_nibble)])
        high_nibble = b.and_(b.lshr(x, self.four), self.low_nibble)
        high = b.call(self.pshufb, [self.nibble_counts, high_nibble])
        b.store(b.add(b.load(byte_sums), b.add(low, high)), byte_sums)

    def scalar_step(self, block, k, word, sums):
        """sums[j] += popcount(word XOR weights[block, k, j]) for j < 4."""
        b = self.builder
        row = b.mul(b.add(b.mul(block, self.words), k), _i64(4))
        for j, total in enumerate(sums):
            weight = b.load(b.gep(self.weights, [b.add(row, _i64(j))]))
            b.store(b.add(b.load(total), b.call(self.ctpop, [b.xor(word, weight)])), total)

    def store(self, blocks, quads):
        """Store the counts of consecutive ``blocks`` (their ``quads``), two blocks
        a 32-byte store: the epilogue reads the counts eight at a time, and a
        load that spans two stores waits for both to retire (store-to-load
        forwarding needs one store to cover the whole load)."""
        b = self.builder
        for i in range(0, len(blocks), 2):
            counts = b.trunc(quads[i], _COUNTS)
            vector_type = _COUNTS
            if i + 1 < len(blocks):
                lanes = ir.Constant(_EIGHT_COUNTS, list(range(8)))
                counts = b.shuffle_vector(counts, b.trunc(quads[i + 1], _COUNTS), lanes)
                vector_type = _EIGHT_COUNTS
            target = b.gep(self.counts, [b.mul(blocks[i], _i64(4))])
            b.store(counts, b.bitcast(target, vector_type.as_pointer()), align=4)

    def blocks_pass(self, vector_blocks, scalar_block=None):
        """Counts of some vector blocks (and one scalar block) in one pass over the words."""
        b = self.builder
        quads = [cgutils.alloca_once_value(b, ir.Constant(_QUADS, None)) for _ in vector_blocks]
        byte_sums = [cgutils.alloca_once_value(b, self.zero_bytes) for _ in vector_blocks]
        sums = [cgutils.alloca_once_value(b, _i64(0)) for _ in range(4 if scalar_block else 0)]
        step = _i64(_WORDS_PER_BYTE_SUM)
        chunks = b.udiv(b.add(self.words, _i64(_WORDS_PER_BYTE_SUM - 1)), step)
        with cgutils.for_range(b, chunks) as chunk:
            start = b.mul(chunk.index, step)
            stop = b.add(start, step)
            stop = b.select(b.icmp_unsigned("<", self.words, stop), self.words, stop)
            for byte_sum in byte_sums:
                b.store(self.zero_bytes, byte_sum)
            with cgutils.for_range_slice(b, start, stop, _i64(1), inc=True) as (k, _):
                word = b.load(b.gep(self.patch, [k]))
                for block, byte_sum in zip(vector_blocks, byte_sums):
                    self.vector_step(block, k, word, byte_sum)
                if scalar_block is not None:
                    self.scalar_step(scalar_block, k, word, sums)
            for total, byte_sum in zip(quads, byte_sums):
                horizontal = b.call(self.psadbw, [b.load(byte_sum), self.zero_bytes])
                b.store(b.add(b.load(total), horizontal), total)
        blocks = list(vector_blocks)
        results = [b.load(total) for total in quads]
        if scalar_block is not None:
            scalar = ir.Constant(_QUADS, ir.Undefined)
            for j, total in enumerate(sums):
                scalar = b.insert_element(scalar, b.load(total), ir.Constant(_I32, j))
            blocks.append(scalar_block)
            results.append(scalar)
        self.store(blocks, results)


def _vector_blocks_for_host() -> int:
    """Blocks counted in AVX2 per pass beside the scalar one (see :data:`VECTOR_BLOCKS`)."""
    try:
        import llvmlite.binding as llvm

        name = llvm.get_host_cpu_name()
    except RuntimeError:
        return 3
    # Zen 1 splits every 256-bit operation in two: its vector half is as slow
    # as the scalar one, so they share the work evenly.
    return 1 if name == "znver1" else 3


#: Blocks of four output channels each pass over a field's words counts in
#: AVX2 registers, beside the one block counted with scalar ``popcnt``: 1 on
#: Zen 1 (half-width AVX2 units; the split tuned there), 3 on other AVX2 CPUs,
#: where the vector units are full width. Odd, so that a pass's blocks pair up
#: into the 32-byte count stores of :meth:`_Emitter.store` at the offsets the
#: epilogue reads. Measured on a Zen 3 (one thread, whole binary layers, with
#: the paired stores): 3 against the former 2, 1.05–1.23× faster.
VECTOR_BLOCKS = _vector_blocks_for_host()


#: Fields of at most this many words get the word loop unrolled (the count a
#: constant): 1.2–1.4× faster at the 3–9 words of thin layers' fields (3×3 over
#: 16–64 channels; one thread, Zen 1).
FIXED_WORDS = 9


def _emit_passes(emit, vector_blocks):
    """Every block of the weights, ``vector_blocks`` in AVX2 + one scalar a pass."""
    b = emit.builder
    per_pass = vector_blocks + 1
    passes = b.udiv(emit.blocks, _i64(per_pass))
    with cgutils.for_range(b, passes) as pass_:
        first = b.mul(pass_.index, _i64(per_pass))
        blocks = [b.add(first, _i64(i)) for i in range(per_pass)]
        emit.blocks_pass(blocks[:-1], blocks[-1])
    # the 1 … vector_blocks blocks left over: one pass, the last one scalar
    # where there are two or more
    done = b.mul(passes, _i64(per_pass))
    left = b.sub(emit.blocks, done)
    for count in range(1, per_pass):
        with b.if_then(b.icmp_unsigned("==", left, _i64(count))):
            blocks = [b.add(done, _i64(i)) for i in range(count)]
            if count == 1:
                emit.blocks_pass(blocks)
            else:
                emit.blocks_pass(blocks[:-1], blocks[-1])


def _popcount_codegen(words, vector_blocks):
    def codegen(context, builder, signature, args):
        if words is not None:
            _emit_passes(_Emitter(context, builder, signature, args, words), vector_blocks)
            return context.get_dummy_value()
        # any count: a switch to a copy unrolled for each count up to FIXED_WORDS
        patches = context.make_array(signature.args[0])(context, builder, args[0])
        count = cgutils.unpack_tuple(builder, patches.shape, 2)[1]
        end = builder.append_basic_block("popcount.end")
        loop = builder.append_basic_block("popcount.any_words")
        switch = builder.switch(count, loop)
        for fixed in range(1, FIXED_WORDS + 1):
            block = builder.append_basic_block(f"popcount.{fixed}_words")
            switch.add_case(_i64(fixed), block)
            builder.position_at_end(block)
            _emit_passes(_Emitter(context, builder, signature, args, fixed), vector_blocks)
            builder.branch(end)
        builder.position_at_end(loop)
        _emit_passes(_Emitter(context, builder, signature, args), vector_blocks)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return codegen


def popcount_kernel(words=None, vector_blocks=None):
    """A :func:`popcount_blocks` for fields of exactly ``words`` words (any count if
    None, unrolled for counts up to :data:`FIXED_WORDS`), counting ``vector_blocks``
    blocks per pass in AVX2 (default :data:`VECTOR_BLOCKS`) beside one in scalar
    ``popcnt``."""
    vector_blocks = VECTOR_BLOCKS if vector_blocks is None else vector_blocks
    if vector_blocks < 1:
        raise ValueError(f"`vector_blocks` must be at least 1. Received: {vector_blocks}")

    @intrinsic
    def popcount_blocks(typingctx, patches, row, weights, counts):
        """``counts[4b + j] = Σ_k popcount(patches[row, k] ^ weights[b, k, j])``.

        ``patches``: C-contiguous ``(pixels, words)`` uint64; ``weights``: the
        ``(blocks, words, 4)`` uint64 array of :func:`xnor_larq.bitpack.pack_weights`;
        ``counts``: int32 with room for ``4 · blocks``. Nothing is bounds-checked.
        Only for CPUs with AVX2 (:data:`AVAILABLE`).
        """
        if not _popcount_types(patches, row, weights, counts):
            return None
        return types.void(patches, row, weights, counts), _popcount_codegen(words, vector_blocks)

    return popcount_blocks


def _popcount_types(patches, row, weights, counts):
    def c_array(a, dtype, ndim):
        return isinstance(a, types.Array) and (a.dtype, a.ndim, a.layout) == (dtype, ndim, "C")

    return (
        c_array(patches, types.uint64, 2)
        and c_array(weights, types.uint64, 3)
        and c_array(counts, types.int32, 1)
        and isinstance(row, types.Integer)
    )


#: ``counts[4b + j] = Σ_k popcount(patches[row, k] ^ weights[b, k, j])`` for
#: any word count (see :func:`popcount_kernel`).
popcount_blocks = popcount_kernel()

# ------------------------------------------------------ thin float convolutions

_FLOATS = ir.VectorType(ir.FloatType(), 8)
#: Output channels one vector register holds; :data:`float_accumulate` keeps
#: 1–4 of them (8–32 channels) in registers for a whole output pixel.
FLOAT_LANES = 8


def _float_accumulate(registers, pixels):
    @intrinsic
    def accumulate(typingctx, x, offsets, kernel_rows, taps, channels, kernel, lane, out, start,
                   pixel_step, out_step):  # fmt: skip
        """``out[start + p·out_step + lane + i] = Σ_t Σ_c x[offsets[t] + p·pixel_step + c] ·
        kernel[kernel_rows[t] + c, lane + i]`` for ``i < 8 · registers`` and each of
        ``pixels`` output pixels ``p``, the sums kept in vector registers.

        ``x``, ``offsets``/``kernel_rows`` (int64) and ``out`` are 1-D, ``kernel``
        2-D, all C-contiguous float32 (int64 for the offsets); ``taps`` entries of
        the offsets are used. The pixels share each weight load (and their sums
        are independent chains, so the additions' latency overlaps). Nothing is
        bounds-checked.
        """
        arrays = (x, offsets, kernel_rows, kernel, out)
        if not all(isinstance(a, types.Array) and a.layout == "C" for a in arrays):
            return None
        if (x.dtype, kernel.dtype, out.dtype) != (types.float32,) * 3 or kernel.ndim != 2:
            return None
        if (offsets.dtype, kernel_rows.dtype) != (types.int64, types.int64):
            return None
        signature = types.void(
            x, offsets, kernel_rows, taps, channels, kernel, lane, out, start, pixel_step, out_step
        )

        def codegen(context, builder, sig, args):
            b = builder

            def data(index):
                return context.make_array(sig.args[index])(context, b, args[index]).data

            x_data, offset_data, row_data, out_data = data(0), data(1), data(2), data(7)
            kernel_array = context.make_array(sig.args[5])(context, b, args[5])
            taps_, channels_, lane_, start_, pixel_step_, out_step_ = (
                context.cast(b, args[i], sig.args[i], types.intp) for i in (3, 4, 6, 8, 9, 10)
            )
            lanes = cgutils.unpack_tuple(b, kernel_array.shape, 2)[1]
            zero = ir.Constant(_FLOATS, None)
            sums = [
                [cgutils.alloca_once_value(b, zero) for _ in range(registers)]
                for _ in range(pixels)
            ]
            every_lane = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
            with cgutils.for_range(b, taps_) as tap:
                first = b.load(b.gep(offset_data, [tap.index]))
                first_row = b.load(b.gep(row_data, [tap.index]))
                with cgutils.for_range(b, channels_) as channel:
                    row = b.add(b.mul(b.add(first_row, channel.index), lanes), lane_)
                    weights = []
                    for register in range(registers):
                        address = b.gep(kernel_array.data, [b.add(row, _i64(8 * register))])
                        weights.append(b.load(b.bitcast(address, _FLOATS.as_pointer()), align=4))
                    source = b.add(first, channel.index)
                    for pixel in range(pixels):
                        index = b.add(source, b.mul(pixel_step_, _i64(pixel)))
                        value = b.load(b.gep(x_data, [index]))
                        vector = b.insert_element(
                            ir.Constant(_FLOATS, ir.Undefined), value, ir.Constant(_I32, 0)
                        )
                        vector = b.shuffle_vector(
                            vector, ir.Constant(_FLOATS, ir.Undefined), every_lane
                        )
                        for total, weight in zip(sums[pixel], weights):
                            product = b.fmul(vector, weight, flags=("fast",))
                            b.store(b.fadd(b.load(total), product, flags=("fast",)), total)
            for pixel in range(pixels):
                first_out = b.add(b.add(start_, lane_), b.mul(out_step_, _i64(pixel)))
                for register, total in enumerate(sums[pixel]):
                    address = b.gep(out_data, [b.add(first_out, _i64(8 * register))])
                    b.store(b.load(total), b.bitcast(address, _FLOATS.as_pointer()), align=4)
            return context.get_dummy_value()

        return signature, codegen

    return accumulate


#: ``float_accumulate[r, p]``: the kernel keeping ``r`` registers (8·r channels)
#: of ``p`` pixels: r = 1…4, p = 1, 2 or 4, at most 8 sums (of 16 AVX
#: registers; the rest hold weights and inputs).
float_accumulate = {
    (registers, pixels): _float_accumulate(registers, pixels)
    for registers in (1, 2, 3, 4)
    for pixels in (1, 2, 4)
    if registers * pixels <= 8
}


# ------------------------------------------------------------------ packing


@intrinsic
def pack_signs(typingctx, values, start, scale, shift, channels, packed, packed_start):
    """Pack the signs of ``a[c] = values[start + c] · scale[c] + shift[c]``, ``c <
    channels``, into ``packed[packed_start:]`` (bit ``c % 64`` of word ``c // 64``
    set where ``a[c] < 0``, the tail of the last word clear); returns ``Σ_c |a[c]|``.

    Eight channels at a time: a vector multiply-add, a compare and the compare's
    sign mask (``vmovmskps`` on x86) give eight bits at once; the last ``channels
    % 8`` one by one. ``values``, ``scale``, ``shift`` 1-D C-contiguous float32,
    ``packed`` 1-D C-contiguous uint64. Nothing is bounds-checked.
    """
    floats = (values, scale, shift)
    if not all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 1 for a in floats):
        return None
    if not all(a.dtype == types.float32 for a in floats):
        return None
    if not (isinstance(packed, types.Array) and packed.layout == "C" and packed.ndim == 1):
        return None
    if packed.dtype != types.uint64:
        return None
    signature = types.float32(values, start, scale, shift, channels, packed, packed_start)

    def codegen(context, builder, sig, args):
        b = builder

        def data(index):
            return context.make_array(sig.args[index])(context, b, args[index]).data

        value_data, scale_data, shift_data, packed_data = data(0), data(2), data(3), data(5)
        start_, channels_, packed_start_ = (
            context.cast(b, args[i], sig.args[i], types.intp) for i in (1, 4, 6)
        )
        float_type = ir.FloatType()
        fabs_vector = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(_FLOATS, [_FLOATS]), "llvm.fabs.v8f32"
        )
        fabs = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(float_type, [float_type]), "llvm.fabs.f32"
        )
        vector_sum = cgutils.alloca_once_value(b, ir.Constant(_FLOATS, None))
        scalar_sum = cgutils.alloca_once_value(b, ir.Constant(float_type, 0.0))
        word = cgutils.alloca_once_value(b, _i64(0))
        flags = ("fast",)

        def load_vector(pointer, index):
            address = b.bitcast(b.gep(pointer, [index]), _FLOATS.as_pointer())
            return b.load(address, align=4)

        def pack_chunk(index, base):
            # channels base + 8·index … + 7 of the word: their bits and |a|
            channel = b.add(base, b.mul(_i64(index), _i64(8)))
            value = load_vector(value_data, b.add(start_, channel))
            affine = b.fadd(
                b.fmul(value, load_vector(scale_data, channel), flags=flags),
                load_vector(shift_data, channel),
                flags=flags,
            )
            b.store(
                b.fadd(b.load(vector_sum), b.call(fabs_vector, [affine]), flags=flags),
                vector_sum,
            )
            negative = b.fcmp_ordered("<", affine, ir.Constant(_FLOATS, None))
            mask = b.zext(b.bitcast(negative, ir.IntType(8)), _I64)
            shifted = b.shl(mask, b.mul(_i64(index), _i64(8)))
            b.store(b.or_(b.load(word), shifted), word)

        words = b.lshr(b.add(channels_, _i64(63)), _i64(6))
        with cgutils.for_range(b, words) as w:
            base = b.mul(w.index, _i64(64))
            remaining = b.sub(channels_, base)
            bits = b.select(b.icmp_signed("<", remaining, _i64(64)), remaining, _i64(64))
            b.store(_i64(0), word)
            chunks = b.lshr(bits, _i64(3))
            # a word's (at most 8) chunks unrolled, each behind a test: as a loop
            # with a runtime count they did not unroll. In-process A/B (batch
            # 64, 2 threads): 1.16-1.4x at 48, 96 and 100 channels; the widths
            # bitpack gives a constant count fold the tests away (unchanged).
            for index in range(8):
                guard = b.icmp_unsigned("<", _i64(index), chunks)
                with b.if_then(guard, likely=True):
                    pack_chunk(index, base)
            tail_start = b.and_(bits, _i64(~7))
            with cgutils.for_range_slice(b, tail_start, bits, _i64(1), inc=True) as (bit, _):
                channel = b.add(base, bit)
                value = b.load(b.gep(value_data, [b.add(start_, channel)]))
                affine = b.fadd(
                    b.fmul(value, b.load(b.gep(scale_data, [channel])), flags=flags),
                    b.load(b.gep(shift_data, [channel])),
                    flags=flags,
                )
                b.store(b.fadd(b.load(scalar_sum), b.call(fabs, [affine]), flags=flags), scalar_sum)
                negative = b.fcmp_ordered("<", affine, ir.Constant(float_type, 0.0))
                b.store(b.or_(b.load(word), b.shl(b.zext(negative, _I64), bit)), word)
            b.store(b.load(word), b.gep(packed_data, [b.add(packed_start_, w.index)]))
        # the vector's lanes summed as a tree (3 dependent adds, not 8)
        vector = b.load(vector_sum)
        for half in (4, 2, 1):
            lanes = ir.Constant(ir.VectorType(_I32, 8), [(i + half) % 8 for i in range(8)])
            moved = b.shuffle_vector(vector, ir.Constant(_FLOATS, ir.Undefined), lanes)
            vector = b.fadd(vector, moved, flags=flags)
        element = b.extract_element(vector, ir.Constant(_I32, 0))
        return b.fadd(b.load(scalar_sum), element, flags=flags)

    return signature, codegen
