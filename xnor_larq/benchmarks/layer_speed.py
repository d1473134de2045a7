"""One training step of a binary conv layer: XNOR-Net (K on) against Larq and float.

Measures forward + backward + SGD update of a single layer, for

- ``xnor_k``: ``ScaledQuantConv2D`` (ste_sign inputs, scaled_sign weights, K on);
- ``xnor_no_k``: the same layer with K off;
- ``larq_magnitude_aware``: Larq's ``QuantConv2D`` with magnitude_aware_sign
  weights and ste_sign inputs (XNOR-Net without K, as Larq ships it);
- ``float``: a float ``Conv2D``;

on the same shapes, interleaving the layers round by round so that drift in the
machine's speed hits all alike, and prints medians and ratios::

    python -m xnor_larq.benchmarks.layer_speed --repeats 10 --json speed.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import xnor_larq  # noqa: F401  (Keras 2 before TensorFlow)

import larq as lq  # isort: skip
import tensorflow as tf  # isort: skip

from xnor_larq.benchmarks._common import finish, machine_info  # noqa: F401  (re-export)
from xnor_larq.layers import ScaledQuantConv2D

#: (name, height, width, c_in, c_out): CIFAR-like and ImageNet-like layers.
SHAPES = {
    "cifar": (32, 32, 128, 128),
    "imagenet": (14, 14, 256, 256),
}


def make_layers(filters):
    common = dict(kernel_size=3, padding="same", use_bias=False)
    binary = dict(input_quantizer="ste_sign", kernel_constraint="weight_clip")
    return {
        "xnor_k": ScaledQuantConv2D(filters, **common),
        "xnor_no_k": ScaledQuantConv2D(filters, input_scaling=False, **common),
        "larq_magnitude_aware": lq.layers.QuantConv2D(
            filters, kernel_quantizer="magnitude_aware_sign", **binary, **common
        ),
        "float": tf.keras.layers.Conv2D(filters, **common),
    }


def make_train_step(layer, inputs):
    layer.build(inputs.shape)
    optimizer = tf.keras.optimizers.SGD(0.01)
    inputs = tf.Variable(inputs)  # gradients flow to the input as in a deep model

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(inputs, training=True)))
        variables = [*layer.trainable_weights, inputs]
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients[:-1], layer.trainable_weights))
        return loss + tf.reduce_sum(gradients[-1][0, 0, 0])

    return step


def time_steps(steps, repeats, warmup=2):
    for step in steps.values():
        for _ in range(warmup):
            step().numpy()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step().numpy()
            times[name].append(time.perf_counter() - start)
    return times


def run(shapes, batch_size, repeats):
    results = []
    for shape_name in shapes:
        height, width, c_in, c_out = SHAPES[shape_name]
        inputs = tf.random.normal((batch_size, height, width, c_in))
        steps = {name: make_train_step(layer, inputs) for name, layer in make_layers(c_out).items()}
        times = time_steps(steps, repeats)
        medians = {name: statistics.median(t) for name, t in times.items()}
        results.append(
            {
                "shape": shape_name,
                "input": [batch_size, height, width, c_in],
                "filters": c_out,
                "median_step_s": medians,
                "min_step_s": {name: min(t) for name, t in times.items()},
                "ratio_xnor_k_over_larq": medians["xnor_k"] / medians["larq_magnitude_aware"],
                "ratio_xnor_k_over_xnor_no_k": medians["xnor_k"] / medians["xnor_no_k"],
                "ratio_xnor_k_over_float": medians["xnor_k"] / medians["float"],
            }
        )
    return results


def format_table(results):
    lines = []
    for r in results:
        b, h, w, c = r["input"]
        lines.append(f"{r['shape']}: {b}x{h}x{w}x{c} -> {r['filters']} (3x3, same)")
        for name, seconds in r["median_step_s"].items():
            lines.append(f"  {name:<22} {seconds * 1000:9.1f} ms/step (median)")
        lines.append(f"  K cost over Larq's layer   x{r['ratio_xnor_k_over_larq']:.3f}")
        lines.append(f"  K on / K off               x{r['ratio_xnor_k_over_xnor_no_k']:.3f}")
        lines.append(f"  XNOR (K) / float Conv2D    x{r['ratio_xnor_k_over_float']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be positive")

    results = run(args.shapes, args.batch_size, args.repeats)
    print(format_table(results))
    return finish(
        "layer_speed", "xnor_larq.benchmarks.layer_speed", argv, args.json, results=results
    )


if __name__ == "__main__":
    main()
