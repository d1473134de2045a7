"""Writers of small datasets in the real on-disk formats (idx, CIFAR pickles,
ImageNet class folders and TFRecord shards), for the loader and training tests."""

import gzip
import pickle
import struct

import numpy as np
import tensorflow as tf

from xnor_larq.data import cifar, mnist


def write_idx(path, array):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_idx_dataset(directory, rng, num_train=12, num_test=5, classes=10):
    """The four idx .gz files of an MNIST-format set; returns the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (images_file, labels_file) in mnist.FILES.items():
        n = num_train if split == "train" else num_test
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n)
        write_idx(directory / images_file, images)
        write_idx(directory / labels_file, labels)
        arrays[split] = (images, labels)
    return arrays


def write_cifar(directory, name, rng, per_batch=6):
    layout = cifar._LAYOUT[name]
    folder = directory / layout["folder"]
    folder.mkdir(parents=True)
    written = {}
    for split in ("train", "test"):
        for filename in layout[split]:
            pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, layout["classes"], size=per_batch).tolist()
            batch = {
                b"batch_label": b"testing batch",
                b"data": pixels,
                layout["label_key"]: labels,
                b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
            }
            if name == "cifar100":
                batch[b"coarse_labels"] = [0] * per_batch
            with open(folder / filename, "wb") as f:
                pickle.dump(batch, f, protocol=2)
            written[filename] = (pixels, labels)
    return folder, written


def jpeg(colour, height=40, width=50, rng=None):
    image = np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()
    if rng is not None:
        image = np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255)
    return tf.io.encode_jpeg(image.astype(np.uint8), quality=95).numpy()


def class_colour(index, classes):
    hue = index / classes
    return tuple(int(255 * (0.5 + 0.5 * np.sin(2 * np.pi * (hue + k / 3)))) for k in range(3))


def write_image_folder(root, rng, classes=16, per_class=4, val_per_class=2, size=(20, 24)):
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``; returns the counts."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"n{c:08d}_{i}.JPEG").write_bytes(
                    jpeg(class_colour(c, classes), *size, rng=rng)
                )
    return classes * per_class, classes * val_per_class


def example(encoded, label):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


def write_tfrecords(root, rng, prefix, shards, per_shard, classes=10, size=(20, 24)):
    """``root/<prefix>-0000i-of-0000n`` shards with 1-based labels; returns the labels."""
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for s in range(shards):
        with tf.io.TFRecordWriter(str(root / f"{prefix}-{s:05d}-of-{shards:05d}")) as writer:
            for _ in range(per_shard):
                label = int(rng.integers(0, classes))
                writer.write(example(jpeg(class_colour(label, classes), *size, rng=rng), label + 1))
                labels.append(label)
    return labels
