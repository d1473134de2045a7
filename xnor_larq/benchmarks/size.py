"""Size suite: parameter memory of every model, binary (1 bit) vs float32.

From ``lq.models.ModelProfile``: the memory of the model with its binary
weights stored as bits, against the same model in float32, for the whole
model and for its binary layers alone::

    python -m xnor_larq.benchmarks.size --json docs/results/size.json
"""

from __future__ import annotations

import argparse

from ._common import finish

#: (model, mode, input shape, classes) at the sizes the papers use.
MODELS = [
    ("small_cnn", "xnor", (28, 28, 1), 10),
    ("nin", "xnor", (32, 32, 3), 10),
    ("binarynet_vgg", "bnn", (32, 32, 3), 10),
    ("alexnet", "xnor", (224, 224, 3), 1000),
    ("resnet18", "xnor", (224, 224, 3), 1000),
    ("googlenet", "bwn", (224, 224, 3), 1000),
]


#: Models whose exported files are measured too (the ImageNet ones take long).
FILE_SIZES = ("small_cnn", "nin", "binarynet_vgg")


def file_sizes(model) -> dict:
    """Bytes of the Larq Compute Engine file and of a float32 TFLite file."""
    import larq_compute_engine as lce
    import tensorflow as tf

    from xnor_larq.export import lce_compatible

    exportable = lce_compatible(model)
    lce_bytes = len(lce.convert_keras_model(exportable))
    float_bytes = len(tf.lite.TFLiteConverter.from_keras_model(exportable).convert())
    return {
        "lce_file_bytes": lce_bytes,
        "float32_tflite_bytes": float_bytes,
        "file_ratio": float_bytes / lce_bytes,
    }


def measure(models=MODELS, with_files=FILE_SIZES):
    import larq as lq

    from xnor_larq.models import get_builder

    results = []
    for name, mode, shape, classes in models:
        model = get_builder(name)(mode=mode, input_shape=shape, num_classes=classes)
        profile = lq.models.ModelProfile(model)
        binary_layers = [p for p in profile.layer_profiles if p.weight_count(bitwidth=1) > 0]
        binary_bits = sum(p.memory for p in binary_layers)
        binary_fp_bits = sum(p.fp_equivalent_memory for p in binary_layers)
        results.append(
            {
                "model": name,
                "mode": mode,
                "input_shape": list(shape),
                "parameters": int(model.count_params()),
                "binary_parameters": int(profile.weight_count(bitwidth=1)),
                "memory_bytes": profile.memory / 8,
                "float32_bytes": profile.fp_equivalent_memory / 8,
                "compression": profile.fp_equivalent_memory / profile.memory,
                "binary_layers_compression": binary_fp_bits / binary_bits if binary_bits else None,
                "binarized_mac_ratio": profile.op_count("mac", 1) / profile.op_count("mac"),
                **(file_sizes(model) if name in with_files else {}),
            }
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--files",
        nargs="*",
        choices=list(FILE_SIZES),
        default=list(FILE_SIZES),
        help="models whose exported .tflite files are measured too",
    )
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    results = measure(with_files=args.files)
    for r in results:
        print(
            f"{r['model']:<14} {r['mode']:<5} {r['memory_bytes'] / 2**20:8.2f} MiB vs "
            f"{r['float32_bytes'] / 2**20:8.2f} MiB float32: x{r['compression']:.1f} "
            f"(binary layers x{r['binary_layers_compression']:.1f})"
        )
    return finish("size", "xnor_larq.benchmarks.size", argv, args.json, models=results)


if __name__ == "__main__":
    import xnor_larq  # noqa: F401

    main()
