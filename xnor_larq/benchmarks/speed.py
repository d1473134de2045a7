"""Speed suite: single binary conv layers and whole models, side by side.

Layers: one training step of ``ScaledQuantConv2D`` (K), the same without K,
Larq's ``QuantConv2D`` and a float ``Conv2D`` (see ``layer_speed``). Models:
training and inference images/s of the CNNs in float and binary modes, measured
interleaved in one process and reported as ratios to the float twin::

    python -m xnor_larq.benchmarks.speed --json docs/results/speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import layer_speed

#: (builder, input shape, builder arguments) of the whole-model measurements.
MODELS = {
    "small_cnn": ("small_cnn", (28, 28, 1), {}),
    "binarynet_vgg": ("binarynet_vgg", (32, 32, 3), {}),
    "nin": ("nin", (32, 32, 3), {}),
}
MODEL_MODES = ("fp", "xnor", "larq")


def _model_steps(name, mode, batch_size):
    import numpy as np
    import tensorflow as tf

    from xnor_larq.models import get_builder

    builder, shape, kwargs = MODELS[name]
    model = get_builder(builder)(mode=mode, input_shape=shape, num_classes=10, **kwargs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = tf.constant(np.random.default_rng(0).normal(size=(batch_size, *shape)), tf.float32)
    y = tf.constant(np.arange(batch_size) % 10)
    predict = tf.function(lambda: model(x, training=False))
    return (lambda: model.train_on_batch(x, y)), (lambda: predict().numpy())


def measure_models(names, modes, batch_size, repeats):
    results = []
    for name in names:
        steps = {mode: _model_steps(name, mode, batch_size) for mode in modes}
        for kind, index in (("train", 0), ("inference", 1)):
            for mode in modes:  # warm up (tracing)
                for _ in range(2):
                    steps[mode][index]()
            times = {mode: [] for mode in modes}
            for _ in range(repeats):
                for mode in modes:
                    start = time.perf_counter()
                    steps[mode][index]()
                    times[mode].append(time.perf_counter() - start)
            medians = {mode: statistics.median(t) for mode, t in times.items()}
            results.append(
                {
                    "model": name,
                    "kind": kind,
                    "batch_size": batch_size,
                    "images_per_s": {m: batch_size / s for m, s in medians.items()},
                    "ratio_to_fp": {m: medians["fp"] / s for m, s in medians.items()},
                }
            )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layer-shapes",
        nargs="*",
        choices=sorted(layer_speed.SHAPES),
        default=list(layer_speed.SHAPES),
    )
    parser.add_argument("--layer-batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--model-batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)

    layers = layer_speed.run(args.layer_shapes, args.layer_batch_size, args.repeats)
    print(layer_speed.format_table(layers))
    models = measure_models(args.models, MODEL_MODES, args.model_batch_size, args.repeats)
    for r in models:
        line = ", ".join(
            f"{m} {v:,.0f} img/s (x{r['ratio_to_fp'][m]:.2f})" for m, v in r["images_per_s"].items()
        )
        print(f"{r['model']} {r['kind']}: {line}")
    return layer_speed.finish(
        "speed", "xnor_larq.benchmarks.speed", argv, args.json, layers=layers, models=models
    )


if __name__ == "__main__":
    import xnor_larq  # noqa: F401

    main()
