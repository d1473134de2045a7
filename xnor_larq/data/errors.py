"""Errors that name the file or the places searched, and the fix."""


class DatasetNotFoundError(FileNotFoundError):
    """No local copy of a dataset was found (and none could be downloaded)."""


class CorruptDataError(ValueError):
    """A data file exists but cannot be read as the format it should be in."""


#: Prefix of the messages raised inside ``tf.data`` pipelines (label range,
#: unreadable images); the CLI turns an error holding it into one line.
BAD_DATA = "bad data:"
