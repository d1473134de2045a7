"""Model builders, one architecture per module, selectable by name.

Every builder is keyword-only and takes ``mode`` (fp, bwn, xnor, bnn),
``input_scaling`` (K on/off), ``num_classes`` and ``input_shape``. Larq Zoo's
literature models are available as ``zoo:<ClassName>``.
"""

from .alexnet import alexnet
from .binarynet_vgg import binarynet_vgg
from .blocks import count_binary_layers
from .googlenet import googlenet
from .nin import nin
from .resnet18 import resnet18
from .small_cnn import small_cnn
from .zoo import ZOO_MODELS, zoo_builder

BUILDERS = {
    "small_cnn": small_cnn,
    "nin": nin,
    "binarynet_vgg": binarynet_vgg,
    "alexnet": alexnet,
    "resnet18": resnet18,
    "googlenet": googlenet,
}

#: Binary layers each builder documents (with its default arguments).
BINARY_LAYERS = {
    "small_cnn": 4,
    "nin": 7,
    "binarynet_vgg": 7,
    "alexnet": 6,
    "resnet18": 16,
    "googlenet": 56,
}


def model_names():
    return [*BUILDERS, *(f"zoo:{name}" for name in ZOO_MODELS)]


def get_builder(name: str):
    """The builder registered under ``name``; lists the choices if unknown."""
    if name in BUILDERS:
        return BUILDERS[name]
    if name.startswith("zoo:") and name[4:] in ZOO_MODELS:
        return zoo_builder(name[4:])
    raise ValueError(f"Unknown model {name!r}. Choose one of: {', '.join(model_names())}")


__all__ = [
    "BINARY_LAYERS",
    "BUILDERS",
    "alexnet",
    "binarynet_vgg",
    "count_binary_layers",
    "get_builder",
    "googlenet",
    "model_names",
    "nin",
    "resnet18",
    "small_cnn",
]
