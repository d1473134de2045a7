"""Numpy re-computations shared by several test modules."""

import numpy as np


def np_ap2(x):
    """docs/MATH.md §5: sign(x) · 2^round(log2|x|), 0 at 0."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    nonzero = x != 0
    out[nonzero] = np.sign(x[nonzero]) * 2.0 ** np.round(np.log2(np.abs(x[nonzero])))
    return out


#: Small inputs per model builder, which keep the ImageNet models cheap in CI.
SMALL_INPUTS = {
    "small_cnn": (28, 28, 1),
    "nin": (32, 32, 3),
    "binarynet_vgg": (32, 32, 3),
    "alexnet": (64, 64, 3),
    "resnet18": (64, 64, 3),
    "googlenet": (64, 64, 3),
}
#: Extra builder arguments for the tests (a narrow VGG).
EXTRA = {"binarynet_vgg": {"width": 16}}
