"""CPU inference speed: our bitpacked path against TF float, float TFLite and LCE.

For one binary 3×3 conv layer at a CIFAR-like (32×32×128→128) and an
ImageNet-like (14×14×256→256) shape, and for whole models (small CNN,
BinaryNet VGG), measured interleaved in one process:

- ``compiled``: :func:`xnor_larq.inference.compile` of the XNOR model;
- ``tf_float``: the float twin in TensorFlow (a ``tf.function`` call);
- ``tflite_float``: the float twin converted to TFLite;
- ``lce``: the XNOR model converted with Larq Compute Engine, on its x86
  interpreter (one image at a time, as LCE runs).

Latency per image at batch 1 and throughput at batch 64 (medians over
interleaved rounds; in each round every method runs once untimed, then is
timed, 5 calls in a row at batch 1), with how many times faster ``compiled``
is than each::

    python -m xnor_larq.benchmarks.inference --json docs/results/inference.json

It also times the binary convolution's popcount phase alone, the portable
compiled loop against the AVX2 + scalar kernels of :mod:`xnor_larq.simd` (as
the convolution picks them: unrolled for fields of up to 9 words), one
thread, side by side (:data:`POPCOUNT_SHAPES`), and the machine's ceiling for
a binary layer against a float one: the xor-popcount GEMM's rate against
float TFLite's GEMM on the same threads (:func:`gemm_ceiling`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

#: name → (input shape, builder of the float and xnor Keras models)
LAYERS = {"conv_32x32x128": ((32, 32, 128), 128), "conv_14x14x256": ((14, 14, 256), 256)}
MODELS = {"small_cnn": (28, 28, 1), "binarynet_vgg": (32, 32, 3)}
METHODS = ("compiled", "tf_float", "tflite_float", "lce")
#: Timed calls in a row per method and round at batch 1 (one at the large batch).
BATCH_1_BLOCK = 5
#: (words per receptive field, output channels) of the popcount-phase timing:
#: small_cnn's binary layers (3, 5, 9 words) and the two benchmark layers (18, 36).
POPCOUNT_SHAPES = ((3, 32), (5, 64), (9, 64), (18, 128), (36, 256))


def _layer_models(input_shape, filters):
    import tensorflow as tf

    from xnor_larq import ScaledQuantConv2D

    def single(layer):
        inputs = tf.keras.Input(input_shape)
        return tf.keras.Model(inputs, layer(inputs))

    float_model = single(tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False))
    xnor_model = single(ScaledQuantConv2D(filters, 3, padding="same", use_bias=False))
    return float_model, xnor_model


def _whole_models(name):
    from xnor_larq.models import get_builder

    builder = get_builder(name)
    shape = MODELS[name]
    return (
        builder(mode="fp", input_shape=shape, num_classes=10),
        builder(mode="xnor", input_shape=shape, num_classes=10),
    )


def _runners(float_model, xnor_model, batch_size, threads):
    """name → function running one batch of ``batch_size`` images."""
    import larq_compute_engine as lce
    import numpy as np
    import tensorflow as tf

    from xnor_larq import inference

    shape = float_model.input_shape[1:]
    x = np.random.default_rng(0).uniform(-1, 1, (batch_size, *shape)).astype(np.float32)
    compiled = inference.compile(xnor_model, threads=threads)
    float_call = tf.function(lambda batch: float_model(batch, training=False))
    tflite = tf.lite.Interpreter(
        model_content=tf.lite.TFLiteConverter.from_keras_model(float_model).convert(),
        num_threads=threads,
    )
    tflite.resize_tensor_input(tflite.get_input_details()[0]["index"], x.shape)
    tflite.allocate_tensors()
    lce_interpreter = lce.testing.Interpreter(
        lce.convert_keras_model(xnor_model), num_threads=threads
    )
    x_tf = tf.constant(x)

    def run_tflite():
        tflite.set_tensor(tflite.get_input_details()[0]["index"], x)
        tflite.invoke()
        return tflite.get_tensor(tflite.get_output_details()[0]["index"])

    return {
        "compiled": lambda: compiled.predict(x),
        "tf_float": lambda: float_call(x_tf).numpy(),
        "tflite_float": run_tflite,
        "lce": lambda: lce_interpreter.predict(x),
    }


def _measure(runners, rounds, block):
    """Median seconds per call of each runner: ``rounds`` interleaved rounds, in
    each one untimed call then ``block`` timed calls of a runner in a row.

    Calls of one runner are kept together: runtimes' worker threads spin for a
    while after their work (OpenMP, Eigen, pthreadpool), and a lone call timed
    right after another runtime's would share the cores with its spinning
    threads; after an idle pause instead, a virtual machine's sleeping cores
    take milliseconds to wake. Neither is what a user running one of them sees.
    """
    for run in runners.values():  # warm up: tracing, JIT, allocation
        run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run()
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(kind, name, float_model, xnor_model, *, repeats, large_repeats, large_batch, threads):
    rows = []
    for batch_size, rounds, block in ((1, repeats, BATCH_1_BLOCK), (large_batch, large_repeats, 1)):
        seconds = _measure(_runners(float_model, xnor_model, batch_size, threads), rounds, block)
        row = {"kind": kind, "name": name, "batch_size": batch_size}
        if batch_size == 1:
            row["latency_ms"] = {m: s * 1e3 for m, s in seconds.items()}
        else:
            row["images_per_s"] = {m: batch_size / s for m, s in seconds.items()}
        row["speedup_of_compiled"] = {m: s / seconds["compiled"] for m, s in seconds.items()}
        rows.append(row)
    return rows


def popcount_phase(rounds=5, word_products=40_000_000):
    """ns per word-product of the popcount phase, portable loop against xnor_larq.simd.

    One thread; every round times each kernel once on the same random bits
    (about ``word_products`` xor-popcounts); medians over the rounds. Empty
    where the CPU has no AVX2 (the portable loop is then the only one).
    """
    import numpy as np

    from xnor_larq import bitpack, simd

    if not simd.AVAILABLE:
        return []
    # "simd": what the convolution runs (unrolled for fields of up to 9 words)
    kernels = {"portable": bitpack._popcount_blocks_portable, "simd": bitpack._popcount_blocks}
    runners = {name: _pixel_loop(kernel) for name, kernel in kernels.items()}
    rng = np.random.default_rng(0)
    rows = []  # the pixel loop is not parallel: one thread
    for words, outputs in POPCOUNT_SHAPES:
        pixels = max(word_products // (words * outputs), 2)
        patches = rng.integers(0, 2**63, (pixels, words), dtype=np.uint64)
        weights = rng.integers(0, 2**63, (outputs // 4, words, 4), dtype=np.uint64)
        counts = {name: np.empty((pixels, outputs), np.int32) for name in runners}
        times = {name: [] for name in runners}
        for name, run in runners.items():
            run(patches[:2], weights, counts[name][:2])  # compile
        for _ in range(rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(patches, weights, counts[name])
                times[name].append(time.perf_counter() - start)
        if not np.array_equal(counts["portable"], counts["simd"]):
            raise AssertionError(f"the popcount kernels disagree at {words} words")
        products = pixels * words * outputs
        ns = {name: statistics.median(t) * 1e9 / products for name, t in times.items()}
        rows.append(
            {
                "words": words,
                "outputs": outputs,
                "pixels": pixels,
                "ns_per_word_product": ns,
                "simd_speedup": ns["portable"] / ns["simd"],
            }
        )
    return rows


#: The GEMM of the 32×32×128 → 128 layer, 3×3 (rows: 4 images' pixels).
CEILING_GEMM = (4096, 1152, 128)


def gemm_ceiling(threads, rounds=5, shape=CEILING_GEMM):
    """The machine's ceiling for a binary layer against a float one.

    Two bare GEMMs of ``shape`` ``(rows, depth, outputs)`` on ``threads``
    threads, with no packing, gathering or epilogue: xnor_larq's xor-popcount
    kernel (depth bits a row, 64 a word; binary multiply-accumulates a second)
    and float TFLite's fully connected layer (XNNPACK; float ones). Their ratio
    bounds what any whole binary layer can gain over float TFLite here.
    Medians of ``rounds`` interleaved rounds.
    """
    import numpy as np
    import tensorflow as tf

    from xnor_larq import bitpack, inference

    rows, depth, outputs = shape
    words = bitpack.words_for(depth)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 2**63, (rows, words), dtype=np.uint64)
    weights = rng.integers(0, 2**63, (-(-outputs // 4), words, 4), dtype=np.uint64)
    counts = np.empty((rows, weights.shape[0] * 4), np.int32)
    popcount = _pixel_loop(bitpack._popcount_blocks, parallel=True)

    inputs = tf.keras.Input((depth,), batch_size=rows)
    dense = tf.keras.Model(inputs, tf.keras.layers.Dense(outputs, use_bias=False)(inputs))
    tflite = tf.lite.Interpreter(
        model_content=tf.lite.TFLiteConverter.from_keras_model(dense).convert(),
        num_threads=threads,
    )
    tflite.allocate_tensors()
    x = rng.uniform(-1, 1, (rows, depth)).astype(np.float32)
    tflite.set_tensor(tflite.get_input_details()[0]["index"], x)

    caller_threads = inference._numba_threads(threads)
    try:
        runners = {"binary": lambda: popcount(patches, weights, counts), "float": tflite.invoke}
        times = {name: [] for name in runners}
        for run in runners.values():  # compile, warm up
            run()
        for _ in range(rounds):
            for name, run in runners.items():
                run()  # untimed: wakes the runtime's threads
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        inference._numba_threads(caller_threads)
    macs = rows * depth * outputs
    gmacs = {name: macs / statistics.median(t) / 1e9 for name, t in times.items()}
    return {
        "rows": rows,
        "depth": depth,
        "outputs": outputs,
        "threads": threads,
        "gmacs_per_s": gmacs,
        "binary_over_float": gmacs["binary"] / gmacs["float"],
    }


def _pixel_loop(kernel, parallel=False):
    import numba

    @numba.njit(parallel=parallel)
    def run(patches, weights, counts):
        for pixel in numba.prange(patches.shape[0]):  # a plain range unless parallel
            kernel(patches, pixel, weights, counts[pixel])

    return run


def format_rows(rows) -> str:
    lines = []
    for r in rows:
        values = r.get("latency_ms") or r["images_per_s"]
        unit = "ms/image" if "latency_ms" in r else "images/s"
        parts = ", ".join(
            f"{m} {values[m]:,.2f} (compiled x{r['speedup_of_compiled'][m]:.1f})" for m in values
        )
        lines.append(f"{r['kind']} {r['name']} batch {r['batch_size']} [{unit}]: {parts}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="*", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=64, help="the throughput batch")
    parser.add_argument(
        "--repeats",
        type=int,
        default=4,
        help=f"rounds at batch 1 ({BATCH_1_BLOCK} timed calls each)",
    )
    parser.add_argument(
        "--large-repeats", type=int, default=3, help="rounds at --batch-size (LCE is slow there)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--popcount-rounds",
        type=int,
        default=5,
        help="rounds of the popcount-phase and GEMM-ceiling timings (0: skip them)",
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    options = dict(
        repeats=args.repeats,
        large_repeats=args.large_repeats,
        large_batch=args.batch_size,
        threads=args.threads,
    )
    rows = []
    for name in args.layers:
        shape, filters = LAYERS[name]
        rows += measure("layer", name, *_layer_models(shape, filters), **options)
        print(format_rows(rows[-2:]), flush=True)
    for name in args.models:
        rows += measure("model", name, *_whole_models(name), **options)
        print(format_rows(rows[-2:]), flush=True)
    popcount = popcount_phase(args.popcount_rounds) if args.popcount_rounds > 0 else []
    for r in popcount:
        ns = r["ns_per_word_product"]
        print(
            f"popcount phase, {r['words']} words x {r['outputs']} outputs: portable "
            f"{ns['portable']:.3f} ns, simd {ns['simd']:.3f} ns (x{r['simd_speedup']:.2f})"
        )
    ceiling = gemm_ceiling(args.threads, args.popcount_rounds) if args.popcount_rounds > 0 else {}
    if ceiling:
        g = ceiling["gmacs_per_s"]
        print(
            f"GEMM ceiling {ceiling['rows']}x{ceiling['depth']}x{ceiling['outputs']}, "
            f"{ceiling['threads']} threads: xor-popcount {g['binary']:.0f} GMAC/s, float TFLite "
            f"{g['float']:.0f} GMAC/s (binary x{ceiling['binary_over_float']:.1f})"
        )
    from xnor_larq.benchmarks._common import finish

    return finish(
        "inference",
        "xnor_larq.benchmarks.inference",
        argv,
        args.json,
        settings={
            "threads": args.threads,
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "batch_size": args.batch_size,
            "batch_1_calls_per_round": BATCH_1_BLOCK,
            "popcount_rounds": args.popcount_rounds,
        },
        rows=rows,
        popcount_phase=popcount,
        gemm_ceiling=ceiling,
    )


if __name__ == "__main__":
    import xnor_larq  # noqa: F401

    main()
