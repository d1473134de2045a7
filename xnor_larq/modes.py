"""The paper's settings as layer arguments: change one word to switch.

>>> kwargs = binary_layer_kwargs("xnor")
>>> layer = ScaledQuantConv2D(64, 3, padding="same", **kwargs)

=======  =================  =================  =========  ==========================
mode     weights            inputs             K / β      reference
=======  =================  =================  =========  ==========================
fp       real               real               off        full-precision twin
bwn      α·sign(W)          real               off        XNOR-Net paper, sec. 3.1
xnor     α·sign(W)          sign(I)            on         XNOR-Net paper, sec. 3.2
bnn      sign(W)            sign(I)            off        Courbariaux/Hubara 2016
=======  =================  =================  =========  ==========================

``bnn`` with ``stochastic=True`` (or ``"both"``) binarizes weights and
inputs stochastically while training (BNN eq. 2) and deterministically at
inference; ``stochastic="inputs"`` or ``"weights"`` makes only one of them
stochastic. Stochastic weights start uniform in [-1, 1] (BinaryNet's H = 1):
with Keras's Glorot init the latent weights are about ±0.1, the hard sigmoid
gives each sign a probability near 1/2, and the network draws near-random
weights at every step and does not learn.
"""

from __future__ import annotations

from .quantizers import BACKWARD_MODES

__all__ = ["MODES", "STOCHASTIC_TARGETS", "binary_layer_kwargs", "stochastic_targets"]

MODES = ("fp", "bwn", "xnor", "bnn")
#: What ``stochastic`` may binarize stochastically; ``True`` means ``"both"``.
STOCHASTIC_TARGETS = ("inputs", "weights", "both")
#: BinaryNet's initial latent weights, uniform in [-H, H] with H = 1.
STOCHASTIC_WEIGHT_INIT = {"class_name": "RandomUniform", "config": {"minval": -1.0, "maxval": 1.0}}


def stochastic_targets(stochastic) -> tuple[bool, bool]:
    """``(inputs, weights)``: which of them ``stochastic`` makes stochastic."""
    if stochastic is False or stochastic is None:
        return False, False
    if stochastic is True:
        stochastic = "both"
    if stochastic not in STOCHASTIC_TARGETS:
        raise ValueError(
            f"`stochastic` must be True, False or one of {STOCHASTIC_TARGETS}. "
            f"Received: stochastic={stochastic!r}"
        )
    return stochastic in ("inputs", "both"), stochastic in ("weights", "both")


def _quantizer(class_name: str, **config):
    # A config dict rather than an instance: one kwargs dict can then build many
    # layers, each with its own quantizer.
    return {"class_name": class_name, "config": config}


def binary_layer_kwargs(
    mode: str,
    *,
    input_scaling: bool | None = None,
    stochastic: bool | str = False,
    backward: str = "paper",
    per_channel: bool = True,
    clip_value: float = 1.0,
    weight_clip: float | None = 1.0,
    seed: int | None = None,
) -> dict:
    """Keyword arguments for ``ScaledQuantConv2D``/``ScaledQuantDense`` in a mode.

    Arguments:
        mode: one of ``"fp"``, ``"bwn"``, ``"xnor"``, ``"bnn"`` (see module doc).
        input_scaling: override whether K (β) is applied; by default only
            ``xnor`` uses it. ``binary_layer_kwargs("xnor", input_scaling=False)``
            is XNOR-Net without K, the paper's ablation.
        stochastic: ``bnn`` only: stochastic binarization of ``"inputs"``,
            ``"weights"`` or ``"both"`` (``True``). Stochastic weights also get
            the uniform [-1, 1] ``kernel_initializer`` (see module doc).
        backward: the scaled sign's backward pass (``bwn``/``xnor``).
        per_channel: one α per output channel (True) or per layer (False).
        clip_value: straight-through-estimator clip for every quantizer.
        weight_clip: latent binary weights are clipped to ``[-weight_clip,
            weight_clip]`` after each update (Larq's WeightClip); None: no clip.
        seed: ``bnn`` with ``stochastic=True`` only: the quantizers' op seed.

    Returns:
        A dict with ``input_quantizer``, ``kernel_quantizer``,
        ``kernel_constraint`` and ``input_scaling``.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if backward not in BACKWARD_MODES:
        raise ValueError(
            f"`backward` must be one of {BACKWARD_MODES}. Received: backward={backward!r}"
        )
    stochastic_inputs, stochastic_weights = stochastic_targets(stochastic)
    if stochastic and mode != "bnn":
        raise ValueError(
            f"`stochastic={stochastic!r}` is BNN's binarization and needs mode='bnn'. "
            f"Received: mode={mode!r}"
        )
    if weight_clip is not None and not weight_clip > 0:
        raise ValueError(
            f"`weight_clip` must be positive, or None. Received: weight_clip={weight_clip!r}"
        )
    if seed is not None and not stochastic:
        raise ValueError("`seed` only applies with stochastic binarization (stochastic=...).")

    scaled_sign = _quantizer(
        "ScaledSign", per_channel=per_channel, backward=backward, clip_value=clip_value
    )

    def sign(stochastic):
        if stochastic:
            return _quantizer("StochasticSign", clip_value=clip_value, seed=seed)
        return _quantizer("SteSign", clip_value=clip_value)

    if mode == "fp":
        kwargs = {"input_quantizer": None, "kernel_quantizer": None, "kernel_constraint": None}
    elif mode == "bwn":
        kwargs = {"input_quantizer": None, "kernel_quantizer": scaled_sign}
    elif mode == "xnor":
        kwargs = {"input_quantizer": sign(False), "kernel_quantizer": scaled_sign}
    else:  # bnn
        kwargs = {
            "input_quantizer": sign(stochastic_inputs),
            "kernel_quantizer": sign(stochastic_weights),
        }
        if stochastic_weights:
            kwargs["kernel_initializer"] = dict(STOCHASTIC_WEIGHT_INIT)
    if mode != "fp":
        kwargs["kernel_constraint"] = (
            None
            if weight_clip is None
            else {"class_name": "WeightClip", "config": {"clip_value": weight_clip}}
        )
    kwargs["input_scaling"] = (mode == "xnor") if input_scaling is None else input_scaling
    return kwargs
