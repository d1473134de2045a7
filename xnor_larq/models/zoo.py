"""Larq Zoo's literature models, by name, as baselines (architecture only).

Their pretrained weights are downloaded from the internet by Larq Zoo; here a
local weights file (``weights=path``) is loaded instead.
"""

from __future__ import annotations

from pathlib import Path

ZOO_MODELS = (
    "BiRealNet",
    "BinaryAlexNet",
    "BinaryDenseNet28",
    "BinaryResNetE18",
    "DoReFaNet",
    "RealToBinaryNet",
    "XNORNet",
)


def zoo_builder(class_name: str):
    """A keyword-only builder for ``larq_zoo.literature.<class_name>``."""
    if class_name not in ZOO_MODELS:
        raise ValueError(
            f"Unknown Larq Zoo model {class_name!r}. Choose one of: {', '.join(ZOO_MODELS)}"
        )

    def build(
        *, mode=None, num_classes=1000, input_shape=(224, 224, 3), weights=None, **unsupported
    ):
        if mode is not None:
            raise ValueError(
                f"Larq Zoo's {class_name} has a fixed binarization; `mode` does not "
                f"apply to it. Received: mode={mode!r}"
            )
        if unsupported:
            raise ValueError(f"Larq Zoo's {class_name} takes no {sorted(unsupported)}")
        try:
            import larq_zoo
        except ImportError as error:
            raise ImportError(
                f"zoo:{class_name} needs Larq Zoo, an optional extra: "
                "`pip install 'xnor_larq[zoo]'` (it pins protobuf < 3.21, so TensorFlow "
                f"2.19 at most). ({error})"
            ) from error

        model = getattr(larq_zoo.literature, class_name)(
            input_shape=tuple(input_shape), weights=None, num_classes=num_classes
        )
        if weights is not None:
            if not Path(weights).is_file():
                raise FileNotFoundError(
                    f"weights file {weights} not found (Larq Zoo's pretrained weights "
                    "cannot be downloaded here: pass a local .h5 file)"
                )
            model.load_weights(str(weights))
        return model

    build.__name__ = f"zoo_{class_name}"
    build.__doc__ = f"Larq Zoo's {class_name} (architecture; optional local weights)."
    return build
