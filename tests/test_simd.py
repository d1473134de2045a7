"""The hand-written kernels of xnor_larq.simd against numpy (and the portable popcount loop)."""

import numba
import numpy as np
import pytest

from xnor_larq import bitpack, simd


def reference_counts(patches, row, weights):
    """counts[4b + j] = Σ_k popcount(patches[row, k] ^ weights[b, k, j]), in numpy."""
    xor = patches[row][None, :, None] ^ weights  # (blocks, words, 4)
    bits = np.unpackbits(xor.view(np.uint8), axis=-1)  # 64 bits per (block, word, j)
    per_word = bits.reshape(*xor.shape, 64).sum(axis=-1)
    return per_word.sum(axis=1).reshape(-1).astype(np.int32)


@numba.njit
def _simd_counts(patches, row, weights, counts):
    simd.popcount_blocks(patches, row, weights, counts)


_NEEDS_AVX2 = pytest.mark.skipif(not simd.AVAILABLE, reason="needs AVX2")
KERNELS = {
    "portable": bitpack._popcount_blocks_portable,
    # unrolled for 1 … simd.FIXED_WORDS words (a switch on the count), else a loop
    "simd": pytest.param(_simd_counts, marks=_NEEDS_AVX2),
}


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("words", [1, 2, 3, 5, 8, 9, 10, 30, 31, 32, 62, 63, 70])
@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_counts_equal_numpy(kernel, words, blocks):
    rng = np.random.default_rng(words * 10 + blocks)
    patches = rng.integers(0, 2**64, (3, words), dtype=np.uint64, endpoint=False)
    weights = rng.integers(0, 2**64, (blocks, words, 4), dtype=np.uint64, endpoint=False)
    counts = np.full(4 * blocks, -1, np.int32)
    kernel(patches, 1, weights, counts)
    np.testing.assert_array_equal(counts, reference_counts(patches, 1, weights))


def _layout_runner(words, vector_blocks):
    kernel = simd.popcount_kernel(words, vector_blocks)

    @numba.njit
    def run(patches, row, weights, counts):
        kernel(patches, row, weights, counts)

    return run


@_NEEDS_AVX2
@pytest.mark.parametrize("vector_blocks", [1, 2, 3])
@pytest.mark.parametrize("fixed", [False, True], ids=["any_words", "fixed_words"])
@pytest.mark.parametrize("words", [3, 40])
def test_every_pass_layout_counts_every_block(vector_blocks, fixed, words):
    # blocks 1 … 8 leave every remainder of the (vector_blocks + 1)-block passes
    run = _layout_runner(words if fixed else None, vector_blocks)
    rng = np.random.default_rng(vector_blocks * 100 + words)
    patches = rng.integers(0, 2**64, (2, words), dtype=np.uint64, endpoint=False)
    for blocks in range(1, 9):
        weights = rng.integers(0, 2**64, (blocks, words, 4), dtype=np.uint64, endpoint=False)
        counts = np.full(4 * blocks, -1, np.int32)
        run(patches, 1, weights, counts)
        np.testing.assert_array_equal(counts, reference_counts(patches, 1, weights))


def test_popcount_kernel_refuses_no_vector_block():
    with pytest.raises(ValueError, match="vector_blocks"):
        simd.popcount_kernel(3, 0)


@pytest.mark.parametrize("kernel", KERNELS.values(), ids=KERNELS.keys())
@pytest.mark.parametrize("words", [31, 32, 93, 100])
def test_all_bits_set_do_not_overflow(kernel, words):
    # Every byte counts 8 per word: the per-byte sums of the vector half must be
    # flushed before they pass 255 (31 words), the totals must reach 64 · words.
    patches = np.full((1, words), np.iinfo(np.uint64).max, np.uint64)
    weights = np.zeros((3, words, 4), np.uint64)
    weights[1, :, 2] = patches[0]  # one channel equal to the patch: count 0
    counts = np.zeros(12, np.int32)
    kernel(patches, 0, weights, counts)
    expected = np.full(12, 64 * words, np.int32)
    expected[6] = 0
    np.testing.assert_array_equal(counts, expected)


def test_kernel_choice_follows_the_cpu():
    expected = simd.popcount_blocks if simd.AVAILABLE else bitpack._popcount_blocks_portable
    assert bitpack._popcount_blocks is expected


def test_simd_kernel_refuses_wrong_types():
    @numba.njit
    def call(patches, weights, counts):
        simd.popcount_blocks(patches, 0, weights, counts)

    with pytest.raises(numba.core.errors.TypingError):
        call(np.zeros((2, 3), np.int64), np.zeros((1, 3, 4), np.uint64), np.zeros(4, np.int32))


@numba.njit
def _pack_signs(values, start, scale, shift, channels, packed, packed_start):
    return simd.pack_signs(values, start, scale, shift, channels, packed, packed_start)


@pytest.mark.parametrize("channels", [1, 7, 8, 16, 63, 64, 65, 72, 130])
def test_pack_signs_equals_numpy(rng, channels):
    # two rows back to back, packed after two words already in the output
    values = rng.normal(size=2 * channels).astype(np.float32)
    scale = rng.normal(size=channels).astype(np.float32)
    shift = rng.normal(size=channels).astype(np.float32)
    words = -(-channels // 64)
    packed = np.full(2 + words, 7, np.uint64)
    total = _pack_signs(values, channels, scale, shift, channels, packed, 2)
    affine = values[channels:] * scale + shift
    expected = [0] * words  # bit c % 64 of word c // 64, as Python integers
    for c in np.flatnonzero(affine < 0):
        expected[c // 64] |= 1 << int(c % 64)
    assert packed[2:].tolist() == expected
    assert packed[:2].tolist() == [7, 7]  # nothing before packed_start is touched
    np.testing.assert_allclose(total, np.abs(affine).sum(), rtol=1e-5)


def test_pack_signs_refuses_wrong_types():
    with pytest.raises(numba.core.errors.TypingError):
        _pack_signs(np.zeros(8), 0, np.ones(8, np.float32), np.zeros(8, np.float32), 8,
                    np.zeros(1, np.uint64), 0)  # fmt: skip
