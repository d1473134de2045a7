"""CIFAR-10 / CIFAR-100 from the python-pickle batch folders Keras caches.

The batches are pickles, which can run code when loaded. They are read with a
restricted unpickler: it admits plain containers, strings, bytes and numbers,
plus the three numpy globals that rebuild a numeric ``ndarray`` (the format
stores its pixels as one); anything else — any other global, or an object
array — is refused with an error naming the file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .errors import CorruptDataError, DatasetNotFoundError, check_labels

_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": b"labels",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": b"fine_labels",
        "classes": 100,
    },
}


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


_ALLOWED = {
    # Python 3's protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): __import__("codecs").encode,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except numeric ndarray reconstruction."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a data batch"
            ) from None


def read_batch(path) -> dict:
    """One CIFAR batch file as a dict with bytes keys (as the files store them)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = RestrictedUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as error:
        raise CorruptDataError(
            f"{path}: not a CIFAR batch that can be read safely ({error})"
        ) from error
    if not isinstance(batch, dict) or b"data" not in batch:
        raise CorruptDataError(f"{path}: expected a dict with a b'data' entry")
    return batch


def _split(directory: Path, files, label_key, classes):
    images, labels = [], []
    for name in files:
        path = directory / name
        batch = read_batch(path)
        data = np.asarray(batch[b"data"])
        if label_key not in batch:
            raise CorruptDataError(f"{path}: no {label_key!r} entry")
        batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise CorruptDataError(
                f"{path}: expected uint8 data of shape (n, 3072), got {data.dtype} {data.shape}"
            )
        if len(batch_labels) != len(data):
            raise CorruptDataError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
        check_labels(batch_labels, classes, path)
        # Stored as channel planes (n, 3, 32, 32); Keras and we want NHWC.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def candidate_dirs(name, data_dir=None):
    folder = _LAYOUT[name]["folder"]
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / folder]
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "datasets" / folder)
    return dirs


def load_cifar(name: str = "cifar10", data_dir=None):
    """``((x_train, y_train), (x_test, y_test))``: uint8 NHWC images, int labels.

    Looks in ``data_dir`` (the batch folder itself or its parent) and Keras's
    cache. CIFAR cannot be downloaded from here; a missing dataset raises
    DatasetNotFoundError naming every folder searched.
    """
    if name not in _LAYOUT:
        raise ValueError(f"Unknown CIFAR dataset {name!r}; choose from {sorted(_LAYOUT)}")
    layout = _LAYOUT[name]
    for directory in candidate_dirs(name, data_dir):
        if all((directory / f).is_file() for f in layout["train"] + layout["test"]):
            common = (layout["label_key"], layout["classes"])
            train = _split(directory, layout["train"], *common)
            test = _split(directory, layout["test"], *common)
            return train, test
    searched = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    raise DatasetNotFoundError(
        f"{name} not found. Searched: {searched}. To get it, download the python "
        f"version ({layout['folder']}, e.g. with `tf.keras.datasets.{name}.load_data()` "
        "on a machine with internet), and pass its folder as --data-dir."
    )
