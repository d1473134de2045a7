"""ImageNet from a class-per-folder tree or from TFRecord shards.

- Folder tree: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``;
  classes are the sorted folder names of ``train``. The number of images is
  known from the listing.
- TFRecords: shards ``train-*`` / ``validation-*`` with the widely used
  ``image/encoded`` (JPEG bytes) and ``image/class/label`` (int64) features. In
  that format labels run from 1 to 1000 (0 was a background class), so
  ``label_offset=1`` is subtracted by default. Records are counted once per
  shard (from the record framing, without decoding) and the counts cached in
  ``$XDG_CACHE_HOME/xnor_larq`` (``~/.cache``), keyed by path, size and mtime.

Training images get Inception's random-resized crop (8–100% of the area,
aspect 3/4–4/3) and a horizontal flip; evaluation images are center-cropped
(a square of 87.5% of the shorter side) and resized. JPEGs are decoded only
inside the crop window (``decode_and_crop_jpeg``); other formats are decoded
whole, then cropped. Random choices are stateless (see
:mod:`xnor_larq.data.pipeline`). Images leave as uint8; the mean/std
normalization runs in the model (or, for ``uint8=False``, in the pipeline).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

from .errors import BAD_DATA, CorruptDataError, DatasetNotFoundError
from .pipeline import InputLayout, Source, _output, element_seed

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
AUGMENTATIONS = ("inception", "none")


# --- decoding inside a crop window ------------------------------------------


def _decode_window(encoded, window, full_decode=False):
    """Decode ``encoded`` inside ``window(shape) -> (top, left, height, width)``."""

    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        top, left, height, width = window(shape)
        return tf.image.decode_and_crop_jpeg(
            encoded, tf.stack([top, left, height, width]), channels=3
        )

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        top, left, height, width = window(tf.shape(image))
        return image[top : top + height, left : left + width]

    if full_decode:
        return other()
    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _inception_window(seed):
    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=(1, 1, 4)),
            seed=seed,
            min_object_covered=0.08,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin[0], begin[1], size[0], size[1]

    return window


def _center_window(crop_fraction=0.875):
    def window(shape):
        side = tf.cast(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * crop_fraction, tf.int32)
        side = tf.maximum(side, 1)
        return (shape[0] - side) // 2, (shape[1] - side) // 2, side, side

    return window


def _checked_image(encoded, name):
    """``encoded`` once its header says JPEG, PNG, GIF or BMP; else an error naming it."""
    ok = (
        tf.io.is_jpeg(encoded)
        | tf.equal(tf.strings.substr(encoded, 0, 4), b"\x89PNG")
        | tf.equal(tf.strings.substr(encoded, 0, 3), b"GIF")
        | tf.equal(tf.strings.substr(encoded, 0, 2), b"BM")
    )
    check = tf.debugging.Assert(
        ok, [f"{BAD_DATA} not a JPEG, PNG, GIF or BMP image (remove or replace it):", name]
    )
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def _checked_label(label, num_classes, name):
    check = tf.debugging.Assert(
        (label >= 0) & (label < num_classes),
        [f"{BAD_DATA} a label outside 0..{num_classes - 1} (after the label offset) in", name,
         "label:", label],
    )
    with tf.control_dependencies([check]):
        return tf.identity(label)


def find_undecodable(paths, *, limit=None):
    """The first of ``paths`` that TensorFlow cannot decode as an image, or None."""
    for path in paths[:limit]:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
            return path
    return None


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def prepare_image(encoded, *, training, image_size, seed=None, augment="inception",
                  full_decode=False):
    """One encoded image as a uint8 ``(image_size, image_size, 3)`` crop.

    ``full_decode=True`` decodes the whole image before cropping (the slower,
    format-agnostic path, kept for the pipeline benchmark).
    """
    if training and augment == "inception":
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = _decode_window(encoded, _inception_window(crop_seed), full_decode)
        image = tf.image.resize(image, (image_size, image_size))
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    else:
        image = _decode_window(encoded, _center_window(), full_decode)
        image = tf.image.resize(image, (image_size, image_size))
    return _to_uint8(image)


# --- image folders -----------------------------------------------------------


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
    empty = []
    for name in found:
        images = [p for p in sorted((split_dir / name).iterdir())
                  if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            empty.append(name)
        paths += [str(p) for p in images]
        labels += [index[name]] * len(images)
    if empty and paths:
        raise CorruptDataError(
            f"{split_dir}: class folder(s) {', '.join(empty[:5])}"
            f"{' ...' if len(empty) > 5 else ''} hold no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "remove them or add their images"
        )
    if not paths:
        raise DatasetNotFoundError(
            f"{split_dir}: no images found (expected {split_dir}/<class>/*.JPEG)"
        )
    return paths, labels, class_names


def folder_source(paths, labels, *, image_size, augment="inception", full_decode=False,
                  description=""):
    """A :class:`Source` over image files: only the indices a pipeline owns are read."""
    if augment not in AUGMENTATIONS:
        raise ValueError(
            f"--augment {augment!r} is not an ImageNet augmentation; use one of "
            f"{AUGMENTATIONS} (inception: random-resized crop and flip, the default)."
        )
    paths_tensor = tf.constant(list(paths))
    labels = np.asarray(labels, np.int64)
    labels_tensor = tf.constant(labels)

    def load(index):
        path = tf.gather(paths_tensor, index)
        return _checked_image(tf.io.read_file(path), path), tf.gather(labels_tensor, index)

    def prepare(encoded, training, seed):
        return prepare_image(
            encoded,
            training=training,
            image_size=image_size,
            seed=seed,
            augment=augment,
            full_decode=full_decode,
        )

    source = Source(
        size=len(labels),
        labels=labels,
        load=load,
        prepare=prepare,
        image_shape=(image_size, image_size, 3),
        mean=MEAN,
        std=STD,
        description=description,
    )
    source.paths = list(paths)  # for naming a file that fails to decode
    return source


def image_folder_dataset(
    split_dir,
    *,
    training,
    image_size=224,
    batch_size=256,
    seed=None,
    class_names=None,
    uint8=False,
):
    """One epoch of batches over an ImageFolder split, and its class names."""
    from . import simple_evaluation_dataset, simple_training_dataset

    paths, labels, class_names = list_image_folder(split_dir, class_names)
    source = folder_source(paths, labels, image_size=image_size, description=str(split_dir))
    if training:
        dataset = simple_training_dataset(source, batch_size=batch_size, seed=seed or 0,
                                          uint8=uint8)
    else:
        dataset = simple_evaluation_dataset(source, batch_size=batch_size, uint8=uint8)
    return dataset, class_names


# --- TFRecord shards ----------------------------------------------------------

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized, label_offset=1):
    features = tf.io.parse_single_example(serialized, _FEATURES)
    return features["image/encoded"], features["image/class/label"] - label_offset


def count_records(path) -> int:
    """Records in one TFRecord file, from its framing (length, CRCs), without decoding."""
    count = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while True:
            header = f.read(12)
            if not header:
                return count
            if len(header) < 12:
                raise CorruptDataError(f"{path}: truncated TFRecord header after {count} records")
            (length,) = struct.unpack("<Q", header[:8])
            if f.tell() + length + 4 > size:
                raise CorruptDataError(
                    f"{path}: record {count} claims {length} bytes but the file ends first; "
                    "the shard is truncated"
                )
            f.seek(length + 4, os.SEEK_CUR)
            count += 1


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xnor_larq"


def shard_counts(files) -> list[int]:
    """Record counts of ``files``, counted once and cached (path, size, mtime as key)."""
    keys = []
    for name in files:
        stat = os.stat(name)
        keys.append(f"{os.path.abspath(name)}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
    cache = _cache_dir() / f"tfrecord-counts-{digest}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("keys") == keys:
            return [int(c) for c in cached["counts"]]
    except (OSError, ValueError, KeyError):
        pass
    counts = [count_records(name) for name in files]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"keys": keys, "counts": counts}))
        tmp.replace(cache)
    except OSError:
        pass  # an unwritable cache only costs a recount next time
    return counts


class TFRecordShards:
    """TFRecord shards of one split, with their record counts.

    Streams rather than indexes: each epoch permutes the shards (stateless,
    keyed on the seed and the epoch), gives each input pipeline its own shards
    (or, when there are too few to balance, every pipeline reads all and keeps
    every W-th record before decoding), interleaves them and shuffles records
    through a buffer seeded the same way.
    """

    def __init__(self, pattern, *, image_size, label_offset=1, augment="inception", size=None):
        if augment not in AUGMENTATIONS:
            raise ValueError(
                f"--augment {augment!r} is not an ImageNet augmentation; use one of "
                f"{AUGMENTATIONS}."
            )
        self.files = sorted(tf.io.gfile.glob(str(pattern)))
        if not self.files:
            raise DatasetNotFoundError(f"no TFRecord shards match {pattern}")
        self.pattern = str(pattern)
        self.counts = shard_counts(self.files) if size is None else None
        self.size = int(size) if size is not None else sum(self.counts)
        self.image_size = image_size
        self.label_offset = label_offset
        self.num_classes = 1000
        self.augment = augment
        self.image_shape = (image_size, image_size, 3)
        self.mean, self.std = MEAN, STD

    def normalize(self, image):
        return (tf.cast(image, tf.float32) - self.mean) / self.std

    def _records(self, files, layout, shard_records):
        """``(record, shard name)`` pairs, interleaved in order."""
        dataset = tf.data.Dataset.from_tensor_slices(files)
        dataset = dataset.interleave(
            lambda name: tf.data.TFRecordDataset(name).map(lambda record: (record, name)),
            cycle_length=min(len(self.files), 8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shard_records:
            dataset = dataset.shard(layout.num_pipelines, layout.pipeline_id)
        return dataset

    def _parse(self, record, shard):
        encoded, label = parse_example(record, self.label_offset)
        return _checked_image(encoded, shard), _checked_label(label, self.num_classes, shard)

    def _file_sharding(self, layout, needed):
        """Whether each pipeline's own shards hold ``needed`` records."""
        if layout.num_pipelines == 1:
            return True
        if self.counts is None or len(self.files) < layout.num_pipelines:
            return False
        ordered = sorted(self.counts)  # the worst case over all permutations
        smallest = sum(ordered[: len(self.files) // layout.num_pipelines])
        return smallest >= needed

    def training_dataset(self, *, global_batch, steps_per_epoch, epochs, seed=0, first_step=0,
                         layout=None, uint8=False, shuffle_buffer=10000):
        layout = layout or InputLayout()
        per_pipeline = global_batch // layout.num_pipelines
        per_replica = global_batch // layout.num_replicas
        needed = steps_per_epoch * per_pipeline
        by_file = self._file_sharding(layout, needed)
        first_epoch, first_row = divmod(int(first_step), int(steps_per_epoch))
        files = tf.constant(self.files)
        seed = int(seed)

        def epoch_records(epoch):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(len(self.files)), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
            )
            shards = tf.gather(files, order)
            if by_file and layout.num_pipelines > 1:
                shards = shards[layout.pipeline_id :: layout.num_pipelines]
            records = self._records(shards, layout, shard_records=not by_file)
            records = records.batch(shuffle_buffer).enumerate().flat_map(
                lambda block, chunk: _shuffled(chunk, element_seed(seed, epoch, block))
            )
            records = records.take(needed)
            skip = tf.where(
                epoch == first_epoch, tf.constant(first_row * per_pipeline, tf.int64), 0
            )
            positions = tf.data.Dataset.range(needed)
            return tf.data.Dataset.zip((records, positions)).skip(skip).map(
                lambda record, position: (record, position, epoch)
            )

        def element(record, position, epoch):
            record, shard = record
            encoded, label = self._parse(record, shard)
            key = position * layout.num_pipelines + layout.pipeline_id
            image = prepare_image(
                encoded,
                training=True,
                image_size=self.image_size,
                seed=element_seed(seed, epoch, key),
                augment=self.augment,
            )
            return _output(self, image, label, uint8)

        dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_records)
        dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def evaluation_dataset(self, *, global_batch, layout=None, uint8=False):
        layout = layout or InputLayout()
        per_pipeline = global_batch // layout.num_pipelines
        per_replica = global_batch // layout.num_replicas
        steps = -(-self.size // global_batch)
        mine = len(range(layout.pipeline_id, self.size, layout.num_pipelines))
        records = self._records(tf.constant(self.files), layout, layout.num_pipelines > 1)
        weights = tf.data.Dataset.from_tensor_slices(
            np.concatenate([np.ones(mine), np.zeros(steps * per_pipeline - mine)]).astype(
                np.float32
            )
        )
        records = records.concatenate(
            records.take(1).repeat(steps * per_pipeline - mine)
        ) if steps * per_pipeline > mine else records

        def element(record, weight):
            record, shard = record
            encoded, label = self._parse(record, shard)
            image = prepare_image(encoded, training=False, image_size=self.image_size)
            return _output(self, image, label, uint8, weight)

        dataset = tf.data.Dataset.zip((records, weights))
        dataset = dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _shuffled(chunk, seed):
    """The records of one chunk (a structure of tensors) in a stateless random order."""
    first = tf.nest.flatten(chunk)[0]
    order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(first)[0]), seed=seed)
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda t: tf.gather(t, order), chunk)
    )


def tfrecord_dataset(
    pattern,
    *,
    training,
    image_size=224,
    batch_size=256,
    seed=None,
    label_offset=1,
    uint8=False,
):
    """One epoch of batches over TFRecord shards matching ``pattern``."""
    from . import simple_evaluation_dataset, simple_training_dataset

    shards = TFRecordShards(pattern, image_size=image_size, label_offset=label_offset)
    if training:
        return simple_training_dataset(shards, batch_size=batch_size, seed=seed or 0, uint8=uint8)
    return simple_evaluation_dataset(shards, batch_size=batch_size, uint8=uint8)


def imagenet_sources(data_dir, *, image_size=224, label_offset=1, augment=None, train_subset=0,
                     train_size=None, subset_seed=0):
    """``(train, validation, num_classes)`` sources from a folder tree or TFRecord shards.

    ``train_subset`` keeps N training images (folders only): a fixed random
    draw (``subset_seed``), so that a subset holds every class. ``train_size``
    (TFRecords only) skips counting the training shards.
    """
    augment = "inception" if augment is None else (augment or "none")
    root = Path(data_dir) if data_dir else None
    if root is None or not root.is_dir():
        raise DatasetNotFoundError(
            f"ImageNet needs --data-dir: a folder with train/<wnid>/*.JPEG and "
            f"val/<wnid>/*.JPEG, or TFRecord shards train-* and validation-*. "
            f"Received: {data_dir!r}"
        )
    if (root / "train").is_dir():
        if train_size is not None:
            raise ValueError(
                "--train-size is for TFRecord shards; an image folder is counted from its "
                "listing. Drop --train-size."
            )
        paths, labels, classes = list_image_folder(root / "train")
        if train_subset:
            keep = np.sort(np.random.default_rng(subset_seed).permutation(len(paths))[:train_subset])
            paths = [paths[i] for i in keep]
            labels = [labels[i] for i in keep]
        val_dir = root / "val" if (root / "val").is_dir() else root / "validation"
        val_paths, val_labels, _ = list_image_folder(val_dir, classes)
        train = folder_source(
            paths, labels, image_size=image_size, augment=augment, description=str(root / "train")
        )
        val = folder_source(
            val_paths, val_labels, image_size=image_size, description=str(val_dir)
        )
        return train, val, len(classes)
    if list(root.glob("train-*")):
        if train_subset:
            raise ValueError(
                "--train-subset needs an image folder; with TFRecord shards, point "
                "--data-dir at a folder holding fewer train-* shards instead."
            )
        common = dict(image_size=image_size, label_offset=label_offset)
        train = TFRecordShards(root / "train-*", augment=augment, size=train_size, **common)
        val = TFRecordShards(root / "validation-*", **common)
        return train, val, 1000
    raise DatasetNotFoundError(
        f"{root}: found neither train/ class folders nor train-* TFRecord shards"
    )


def load_imagenet(data_dir, *, image_size=224, batch_size=256, seed=None, label_offset=1):
    """(train, validation, num_classes): one epoch of float batches each.

    ``data_dir`` holds either ``train/`` and ``val/`` class folders or
    ``train-*`` and ``validation-*`` TFRecord shards.
    """
    from . import as_datasets

    train, val, classes = imagenet_sources(
        data_dir, image_size=image_size, label_offset=label_offset
    )
    train_ds, val_ds = as_datasets(train, val, batch_size=batch_size, seed=seed or 0)
    return train_ds, val_ds, classes
