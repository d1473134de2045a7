"""xnor_larq: XNOR-Net, Binary-Weight-Networks and BNN for Keras, on Larq.

Importing this package selects Keras 2 (``tf-keras``) for TensorFlow before
TensorFlow loads, so ``import xnor_larq`` gives a working Larq with no
environment variable to set.
"""

from ._keras2 import check_keras_version, ensure_legacy_keras

ensure_legacy_keras()

from ._startup import quiet_tensorflow_import  # noqa: E402

with quiet_tensorflow_import():
    import larq  # noqa: E402,F401  (must follow ensure_legacy_keras)
    import tensorflow  # noqa: E402,F401

check_keras_version()

from . import data, layers, models, modes, normalization, optimizers, quantizers  # noqa: E402
from .layers import ScaledQuantConv2D, ScaledQuantDense, input_scaling_map  # noqa: E402
from .modes import MODES, binary_layer_kwargs  # noqa: E402
from .normalization import ShiftBatchNormalization  # noqa: E402
from .optimizers import ShiftAdaMax  # noqa: E402
from .power_of_two import ap2  # noqa: E402
from .quantizers import ScaledSign, StochasticSign, scaled_sign, stochastic_sign  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "data",
    "models",
    "ScaledQuantConv2D",
    "ScaledQuantDense",
    "ScaledSign",
    "ShiftAdaMax",
    "ShiftBatchNormalization",
    "StochasticSign",
    "ap2",
    "binary_layer_kwargs",
    "input_scaling_map",
    "larq",
    "layers",
    "modes",
    "normalization",
    "optimizers",
    "quantizers",
    "scaled_sign",
    "stochastic_sign",
]
