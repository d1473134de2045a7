"""MNIST and Fashion-MNIST from idx ``.gz`` files.

Searched in order: ``data_dir``, Keras's cache (``~/.keras/datasets/<name>``)
and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist`` package). Only when none holds the files does it fall
back to ``tf.keras.datasets`` (which downloads).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .errors import CorruptDataError, DatasetNotFoundError, check_labels

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

NUM_CLASSES = 10
_KERAS_CACHE = {"fashion_mnist": "fashion-mnist", "mnist": "mnist"}
_SYSTEM_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": []}
_HOW_TO_GET = {
    "fashion_mnist": "install Debian's package (`apt-get install dataset-fashion-mnist`), "
    "or put the four idx .gz files in a folder and pass it as --data-dir",
    "mnist": "put the four idx .gz files (train-images-idx3-ubyte.gz, ...) in a "
    "folder and pass it as --data-dir",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one idx file (gzip-compressed or not) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:
        raise CorruptDataError(f"{path}: not a readable idx file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise CorruptDataError(f"{path}: not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: idx header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise CorruptDataError(
            f"{path}: idx header promises shape {shape} ({expected} bytes) but the "
            f"file holds {len(data) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def candidate_dirs(name: str, data_dir=None) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "datasets" / _KERAS_CACHE[name])
    dirs.extend(Path(d) for d in _SYSTEM_DIRS[name])
    return dirs


def find_idx_dir(name: str, data_dir=None) -> Path | None:
    """The first searched folder that holds all four files, or None."""
    needed = [f for pair in FILES.values() for f in pair]
    for directory in candidate_dirs(name, data_dir):
        if all((directory / f).is_file() for f in needed):
            return directory
    return None


def load_idx_dataset(name: str = "fashion_mnist", data_dir=None, download: bool = True):
    """``((x_train, y_train), (x_test, y_test))`` as uint8 images and int labels.

    Raises DatasetNotFoundError naming every folder searched when nothing
    local exists and ``download`` is False or the download fails.
    """
    if name not in _KERAS_CACHE:
        raise ValueError(f"Unknown idx dataset {name!r}; choose from {sorted(_KERAS_CACHE)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DatasetNotFoundError(f"--data-dir {data_dir} does not exist or is not a folder")
    directory = find_idx_dir(name, data_dir)
    if directory is not None:
        splits = []
        for images_file, labels_file in FILES.values():
            images = read_idx(directory / images_file)
            labels = read_idx(directory / labels_file).astype(np.int64)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise CorruptDataError(
                    f"{directory / images_file} and {directory / labels_file}: expected "
                    f"(n, h, w) images and n labels, got {images.shape} and {labels.shape}"
                )
            check_labels(
                labels,
                NUM_CLASSES,
                directory / labels_file,
                "; the file is corrupt or of another dataset",
            )
            splits.append((images, labels))
        return tuple(splits)

    searched = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    message = f"{name} not found. Searched: {searched}. To get it, {_HOW_TO_GET[name]}."
    if not download:
        raise DatasetNotFoundError(message)
    import tensorflow as tf

    try:
        return getattr(tf.keras.datasets, name).load_data()
    except Exception as error:  # network errors come in many types
        raise DatasetNotFoundError(f"{message} The download failed too: {error}") from error
