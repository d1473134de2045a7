"""Numpy re-computations shared by several test modules."""

import numpy as np


def np_ap2(x):
    """SPEC.md §5: sign(x) · 2^round(log2|x|), 0 at 0."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    nonzero = x != 0
    out[nonzero] = np.sign(x[nonzero]) * 2.0 ** np.round(np.log2(np.abs(x[nonzero])))
    return out
