"""Training throughput: images/s per replica for each model and mode, 1 vs N
replicas (scaling efficiency), mixed precision and XLA on and off.

Runs on whatever devices exist: every GPU, or else ``--replicas`` virtual CPU
devices (which share this machine's cores, so CPU "scaling" measures the
distribution overhead, not added compute). Each cell trains ``--steps`` steps
of ``model.fit`` on random in-memory data after ``--warmup`` steps and reports
the median of ``--repeats`` timed windows. XLA runs on one replica where the
replicas are virtual CPUs (TensorFlow cannot compile one step over them).

    python -m xnor_larq.benchmarks.throughput --json docs/results/throughput.json
"""

from __future__ import annotations

import argparse
import statistics
import time

MODELS = {
    # name: (builder, input shape, builder options)
    "small_cnn": ("small_cnn", (28, 28, 1), {}),
    "binarynet_vgg": ("binarynet_vgg", (32, 32, 3), {"width": 32}),
    "resnet18": ("resnet18", (64, 64, 3), {}),
}
SETTINGS = {
    "float32, 1 replica": dict(replicas=1, precision="float32", jit_compile=False),
    "float32, N replicas": dict(replicas=None, precision="float32", jit_compile=False),
    "bfloat16, 1 replica": dict(replicas=1, precision="bfloat16", jit_compile=False),
    "float32 + XLA, 1 replica": dict(replicas=1, precision="float32", jit_compile=True),
}


def _window_timer(warmup):
    """A callback that records the time after ``warmup`` batches and at the end."""
    import tensorflow as tf

    class WindowTimer(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return WindowTimer()


def measure(model_name, mode, *, replicas, precision, jit_compile, batch_per_replica, steps,
            warmup, repeats, devices):
    import numpy as np
    import tensorflow as tf

    from xnor_larq import training
    from xnor_larq.models import get_builder

    builder, shape, options = MODELS[model_name]
    chosen = devices[:replicas]
    strategy = training.make_strategy("mirrored", chosen)
    global_batch = batch_per_replica * len(chosen)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(training.PRECISIONS[precision])
    try:
        with strategy.scope():
            model = get_builder(builder)(mode=mode, input_shape=shape, num_classes=10, **options)
            model.compile(
                tf.keras.optimizers.Adam(1e-3),
                "sparse_categorical_crossentropy",
                jit_compile=jit_compile,
            )
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(global_batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=global_batch)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    rates = []
    for _ in range(repeats):
        timer = _window_timer(warmup)
        model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
        rates.append(steps * global_batch / (timer.end - timer.start))
    return statistics.median(rates) / len(chosen), len(chosen)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "binarynet_vgg"],
                        choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["fp", "xnor", "bnn"])
    parser.add_argument("--replicas", type=int, default=2, help="virtual CPU devices (no GPU)")
    parser.add_argument("--batch-per-replica", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import xnor_larq  # noqa: F401
    import tensorflow as tf  # isort: skip

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas
            )
        except RuntimeError:  # TensorFlow already started: use the devices it has
            pass
        available = len(tf.config.list_logical_devices("CPU"))
        devices = [f"/cpu:{i}" for i in range(min(args.replicas, available))]
    else:
        devices = [f"/gpu:{i}" for i in range(len(gpus))]
    from xnor_larq.benchmarks._common import finish

    rows = []
    for model_name in args.models:
        for mode in args.modes:
            cells = {}
            for setting, options in SETTINGS.items():
                replicas = options["replicas"] or len(devices)
                if options["jit_compile"] and replicas > 1 and not gpus:
                    continue
                rate, used = measure(
                    model_name, mode, replicas=replicas, precision=options["precision"],
                    jit_compile=options["jit_compile"], batch_per_replica=args.batch_per_replica,
                    steps=args.steps, warmup=args.warmup, repeats=args.repeats, devices=devices,
                )
                cells[setting] = {"images_per_s_per_replica": rate, "replicas": used}
                print(f"{model_name:14s} {mode:5s} {setting:26s} {rate:9.1f} img/s per replica")
            one = cells["float32, 1 replica"]["images_per_s_per_replica"]
            many = cells["float32, N replicas"]
            rows.append(
                {
                    "model": model_name,
                    "mode": mode,
                    "cells": cells,
                    "scaling_efficiency": many["images_per_s_per_replica"] / one,
                }
            )
    for row in rows:
        fp = next((r for r in rows if r["model"] == row["model"] and r["mode"] == "fp"), None)
        if fp:
            row["cost_over_fp"] = {
                s: fp["cells"][s]["images_per_s_per_replica"] / c["images_per_s_per_replica"]
                for s, c in row["cells"].items()
                if s in fp["cells"]
            }
    return finish(
        "throughput",
        "xnor_larq.benchmarks.throughput",
        argv,
        json_path=args.json,
        devices=devices,
        settings=vars(args) | {"json": None},
        rows=rows,
    )


if __name__ == "__main__":
    main()
