"""Data sources: local files first, as tf.data pipelines."""

from .errors import CorruptDataError, DatasetNotFoundError
from .mnist import load_idx_dataset, read_idx

__all__ = ["CorruptDataError", "DatasetNotFoundError", "load_idx_dataset", "read_idx"]
