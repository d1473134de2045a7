"""ImageNet from a class-per-folder tree or from TFRecord shards.

- Folder tree: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``;
  classes are the sorted folder names of ``train``.
- TFRecords: shards ``train-*`` / ``validation-*`` with the widely used
  ``image/encoded`` (JPEG bytes) and ``image/class/label`` (int64) features. In
  that format labels run from 1 to 1000 (0 was a background class), so
  ``label_offset=1`` is subtracted by default.

Training images get a random-resized crop and a horizontal flip; evaluation
images are resized (shorter side ``image_size / 0.875``) and center-cropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from .errors import DatasetNotFoundError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# numpy, not tf.constant: importing must not initialise TensorFlow's devices.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0


def _normalize(image):
    return (tf.cast(image, tf.float32) - _MEAN) / _STD


def _decode(encoded):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def random_resized_crop(encoded, image_size, seed=None):
    """Inception-style crop: 8–100% of the area, aspect 3/4–4/3, then flip."""
    image = _decode(encoded)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
        min_object_covered=0.08,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (image_size, image_size))
    image = tf.image.random_flip_left_right(image, seed=seed)
    return _normalize(image)


def center_crop(encoded, image_size, crop_fraction=0.875):
    image = _decode(encoded)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (image_size / crop_fraction) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized)
    top = (resized[0] - image_size) // 2
    left = (resized[1] - image_size) // 2
    image = image[top : top + image_size, left : left + image_size]
    return _normalize(tf.ensure_shape(image, (image_size, image_size, 3)))


def list_image_folder(split_dir, class_names=None):
    """(paths, labels, class_names) of a ``<split>/<class>/<image>`` tree."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"{split_dir} does not exist or is not a folder")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if class_names is None:
        class_names = found
    unknown = set(found) - set(class_names)
    if unknown:
        raise ValueError(f"{split_dir}: class folders not in the training set: {sorted(unknown)}")
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for name in found:
        for path in sorted((split_dir / name).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(path))
                labels.append(index[name])
    if not paths:
        raise DatasetNotFoundError(
            f"{split_dir}: no images found (expected {split_dir}/<class>/*.JPEG)"
        )
    return paths, labels, class_names


def _pipeline(dataset, *, training, image_size, batch_size, seed, shuffle_buffer):
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def prepare(encoded, label):
        if training:
            return random_resized_crop(encoded, image_size, seed), label
        return center_crop(encoded, image_size), label

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def image_folder_dataset(
    split_dir,
    *,
    training,
    image_size=224,
    batch_size=256,
    seed=None,
    class_names=None,
    shuffle_buffer=10000,
):
    """A batched ``tf.data`` pipeline over an ImageFolder split, and its class names."""
    paths, labels, class_names = list_image_folder(split_dir, class_names)
    dataset = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    dataset = dataset.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = _pipeline(
        dataset,
        training=training,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
    return dataset, class_names


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized, label_offset=1):
    features = tf.io.parse_single_example(serialized, _FEATURES)
    return features["image/encoded"], features["image/class/label"] - label_offset


def tfrecord_dataset(
    pattern,
    *,
    training,
    image_size=224,
    batch_size=256,
    seed=None,
    label_offset=1,
    shuffle_buffer=10000,
):
    """A batched ``tf.data`` pipeline over TFRecord shards matching ``pattern``."""
    files = sorted(tf.io.gfile.glob(str(pattern)))
    if not files:
        raise DatasetNotFoundError(f"no TFRecord shards match {pattern}")
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=4,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )
    dataset = dataset.map(
        lambda s: parse_example(s, label_offset), num_parallel_calls=tf.data.AUTOTUNE
    )
    return _pipeline(
        dataset,
        training=training,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )


def load_imagenet(data_dir, *, image_size=224, batch_size=256, seed=None, label_offset=1):
    """(train, validation, num_classes) from a folder tree or TFRecord shards.

    ``data_dir`` holds either ``train/`` and ``val/`` class folders or
    ``train-*`` and ``validation-*`` TFRecord shards.
    """
    root = Path(data_dir) if data_dir else None
    if root is None or not root.is_dir():
        raise DatasetNotFoundError(
            f"ImageNet needs --data-dir: a folder with train/<wnid>/*.JPEG and "
            f"val/<wnid>/*.JPEG, or TFRecord shards train-* and validation-*. "
            f"Received: {data_dir!r}"
        )
    if (root / "train").is_dir():
        train, classes = image_folder_dataset(
            root / "train", training=True, image_size=image_size, batch_size=batch_size, seed=seed
        )
        val_dir = root / "val" if (root / "val").is_dir() else root / "validation"
        val, _ = image_folder_dataset(
            val_dir,
            training=False,
            image_size=image_size,
            batch_size=batch_size,
            class_names=classes,
        )
        return train, val, len(classes)
    if list(root.glob("train-*")):
        common = dict(image_size=image_size, batch_size=batch_size, label_offset=label_offset)
        train = tfrecord_dataset(root / "train-*", training=True, seed=seed, **common)
        val = tfrecord_dataset(root / "validation-*", training=False, **common)
        return train, val, 1000
    raise DatasetNotFoundError(
        f"{root}: found neither train/ class folders nor train-* TFRecord shards"
    )
