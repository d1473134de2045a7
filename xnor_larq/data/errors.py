"""Errors that name the file or the places searched, and the fix."""

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a dataset was found (and none could be downloaded)."""


class CorruptDataError(ValueError):
    """A data file exists but cannot be read as the format it should be in."""


#: Prefix of the messages raised inside ``tf.data`` pipelines (label range,
#: unreadable images); the CLI turns an error holding it into one line.
BAD_DATA = "bad data:"


def check_labels(labels, num_classes, where, hint=""):
    """Raise CorruptDataError naming ``where`` if a label is outside 0..num_classes-1."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CorruptDataError(
            f"{where}: label {int(labels[first])} at index {first} is outside "
            f"0..{num_classes - 1} ({int(bad.sum())} such labels){hint}"
        )
