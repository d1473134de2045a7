"""Random images and labels, for smoke tests and benchmarks."""

from __future__ import annotations

import numpy as np


def synthetic_arrays(num_train=256, num_test=64, image_shape=(28, 28, 1), num_classes=10, seed=0):
    """uint8 images and int labels, learnable: each class brightens its own stripe."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, num_classes, size=n)
        images = rng.integers(0, 128, size=(n, *image_shape), dtype=np.uint8)
        height = image_shape[0]
        rows = (labels * height) // num_classes
        for i, row in enumerate(rows):
            images[i, row : row + max(height // num_classes, 1)] += 127
        return images, labels.astype(np.int64)

    return make(num_train), make(num_test)
