"""ImageNet input pipeline: training images/s per CPU core, before and after the
crop-window decode and the uint8 transfer.

Writes ImageNet-like JPEGs (``--images`` of ``--height``×``--width``, the
median ImageNet training image is about 500×375) into a temporary class-folder
tree and times passes of the training pipeline over them (the variants in
turn, ``--repeats`` rounds, medians), on one core
(tf.data's private thread pool of one thread, one intra-op thread) and on all
cores, for four variants:

- ``full decode, float32``: decode the whole JPEG, crop, resize, normalize in
  the pipeline (what the pipeline did before);
- ``full decode, uint8``;
- ``crop-window decode, float32``;
- ``crop-window decode, uint8``: ``decode_and_crop_jpeg`` inside the random
  crop, uint8 out (normalized in the model on the device: what it does now).

Bytes per image leaving the pipeline are reported too. ``--gpu-images-per-s``
states a GPU's training rate; the report gives the cores that rate needs with
each variant (rate ÷ images/s per core).

    python -m xnor_larq.benchmarks.pipeline --json docs/results/pipeline.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "full decode, float32": dict(full_decode=True, uint8=False),
    "full decode, uint8": dict(full_decode=True, uint8=True),
    "crop-window decode, float32": dict(full_decode=False, uint8=False),
    "crop-window decode, uint8": dict(full_decode=False, uint8=True),
}


def write_images(root: Path, images: int, classes: int, height: int, width: int, seed=0):
    """Smooth colour fields with noise: JPEG sizes near real photos' (~100 KB at 500×375)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    for i in range(images):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 2 * np.pi, 3)
        frequency = rng.uniform(0.005, 0.05, 3)
        field = np.stack(
            [127 + 100 * np.sin(frequency[c] * (rows + cols * (c + 1)) + phase[c]) for c in range(3)],
            axis=-1,
        )
        image = np.clip(field + rng.normal(0, 18, field.shape), 0, 255).astype(np.uint8)
        (folder / f"img_{i}.JPEG").write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def build_variant(paths, labels, *, image_size, batch_size, full_decode, uint8, threads):
    import tensorflow as tf

    from xnor_larq.data import imagenet, pipeline

    source = imagenet.folder_source(paths, labels, image_size=image_size, full_decode=full_decode)
    steps = len(paths) // batch_size
    dataset = pipeline.training_dataset(
        source, global_batch=batch_size, steps_per_epoch=steps, epochs=1, uint8=uint8
    )
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    dataset = dataset.with_options(options)
    for _ in dataset.take(1):  # warm-up: traces, opens files
        pass
    return dataset


def time_pass(dataset):
    """(images/s, bytes of one output image) of one pass over ``dataset``."""
    start = time.perf_counter()
    count, item_bytes = 0, None
    for images, _labels in dataset:
        count += int(images.shape[0])
        item_bytes = int(np.prod(images.shape[1:])) * images.dtype.size
    return count / (time.perf_counter() - start), item_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--gpu-images-per-s",
        type=float,
        default=2500.0,
        help="a GPU's training rate to size the CPU side for (default: 2500, an assumed "
        "rate for ResNet-18-sized training at 224x224 on one current GPU)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import xnor_larq  # noqa: F401

    from xnor_larq.benchmarks._common import finish
    from xnor_larq.data import imagenet

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.images, args.classes, args.height, args.width)
        paths, labels, _ = imagenet.list_image_folder(root / "train")
        jpeg_bytes = statistics.median(os.path.getsize(p) for p in paths)
        common = dict(image_size=args.image_size, batch_size=args.batch_size)
        cells = [(name, threads) for name in VARIANTS for threads in (1, None)]
        datasets = {
            cell: build_variant(paths, labels, threads=cell[1], **common, **VARIANTS[cell[0]])
            for cell in cells
        }
        # Round-robin over the variants, repeat by repeat: a slow period of this
        # shared machine then costs every variant alike.
        rates = {cell: [] for cell in cells}
        item_bytes = {}
        for _ in range(args.repeats):
            for cell in cells:
                rate, item_bytes[cell[0]] = time_pass(datasets[cell])
                rates[cell].append(rate)
        rows = []
        for name, variant in VARIANTS.items():
            per_core = statistics.median(rates[(name, 1)])
            all_cores = statistics.median(rates[(name, None)])
            rows.append(
                {
                    "variant": name,
                    **variant,
                    "images_per_s_one_core": per_core,
                    "images_per_s_all_cores": all_cores,
                    "one_core_runs": rates[(name, 1)],
                    "bytes_per_image_out": item_bytes[name],
                    "cores_for_gpu_rate": args.gpu_images_per_s / per_core,
                }
            )
            print(
                f"{name:30s} {per_core:8.1f} img/s on one core, {all_cores:8.1f} on "
                f"{os.cpu_count()} cores, {item_bytes[name] / 1024:.0f} KiB/image out, "
                f"{args.gpu_images_per_s / per_core:.1f} cores for "
                f"{args.gpu_images_per_s:.0f} img/s"
            )
    before, after = rows[0], rows[-1]
    return finish(
        "pipeline",
        "xnor_larq.benchmarks.pipeline",
        argv,
        json_path=args.json,
        settings={
            "images": args.images,
            "source_height": args.height,
            "source_width": args.width,
            "median_jpeg_bytes": jpeg_bytes,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "gpu_images_per_s": args.gpu_images_per_s,
        },
        variants=rows,
        speedup_per_core=after["images_per_s_one_core"] / before["images_per_s_one_core"],
        bytes_ratio=before["bytes_per_image_out"] / after["bytes_per_image_out"],
    )


if __name__ == "__main__":
    main()
