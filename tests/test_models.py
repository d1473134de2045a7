"""Every model builds in every mode and trains one step on synthetic data."""

import numpy as np
import pytest
import tensorflow as tf
from references import EXTRA, SMALL_INPUTS

from xnor_larq import models
from xnor_larq.layers import ScaledQuantConv2D, ScaledQuantDense

MODES = ["fp", "bwn", "xnor", "bnn"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(models.BUILDERS))
def test_builds_and_trains_one_step(name, mode, rng):
    input_shape = SMALL_INPUTS[name]
    model = models.get_builder(name)(
        mode=mode, num_classes=5, input_shape=input_shape, **EXTRA.get(name, {})
    )
    assert model.output_shape == (None, 5)
    expected_binary = 0 if mode == "fp" else models.BINARY_LAYERS[name]
    assert models.count_binary_layers(model) == expected_binary
    scaled = [
        layer for layer in model.layers if isinstance(layer, (ScaledQuantConv2D, ScaledQuantDense))
    ]
    assert all(layer.input_scaling == (mode == "xnor") for layer in scaled)
    x = rng.normal(size=(4, *input_shape)).astype("float32")
    y = np.arange(4) % 5
    # Eager: tracing the large graphs costs more than one step of them.
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    probabilities = model(x, training=False).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_k_off_and_stochastic_options(rng):
    no_k = models.small_cnn(mode="xnor", input_scaling=False)
    assert not any(getattr(layer, "input_scaling", False) for layer in no_k.layers)
    stochastic = models.small_cnn(mode="bnn", stochastic=True, seed=3)
    quantizers = [
        layer.input_quantizer for layer in stochastic.layers if isinstance(layer, ScaledQuantConv2D)
    ]
    assert all(type(q).__name__ == "StochasticSign" for q in quantizers)
    # each layer's seed is derived from the model's: fixed by it, distinct per layer
    again = models.small_cnn(mode="bnn", stochastic=True, seed=3)
    seeds = [q.seed for q in quantizers]
    assert seeds == [
        layer.input_quantizer.seed for layer in again.layers if isinstance(layer, ScaledQuantConv2D)
    ]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize(
    "stochastic,inputs,weights",
    [(True, True, True), ("both", True, True), ("inputs", True, False), ("weights", False, True)],
)
def test_stochastic_targets_and_uniform_init_of_stochastic_weights(stochastic, inputs, weights):
    model = models.small_cnn(mode="bnn", stochastic=stochastic, seed=3)
    binary = [layer for layer in model.layers if hasattr(layer, "input_quantizer")]
    assert len(binary) == 4
    for layer in binary:
        assert (type(layer.input_quantizer).__name__ == "StochasticSign") == inputs
        assert (type(layer.kernel_quantizer).__name__ == "StochasticSign") == weights
        kernel = np.asarray(layer.kernel).ravel()
        if weights:
            # BinaryNet's uniform [-1, 1] start: std 1/sqrt(3), so the hard
            # sigmoid's probabilities span [0, 1] instead of sitting near 1/2
            assert kernel.min() >= -1 and kernel.max() <= 1
            assert abs(kernel.std() - 3**-0.5) < 0.05
        else:
            assert kernel.std() < 0.2  # Keras's Glorot init


def test_stochastic_target_is_checked():
    with pytest.raises(ValueError, match="stochastic.*'activations'"):
        models.small_cnn(mode="bnn", stochastic="activations")


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="small_cnn.*zoo:XNORNet"):
        models.get_builder("alexnett")


@pytest.mark.parametrize("name,size", [("zoo:XNORNet", 224), ("zoo:BinaryResNetE18", 64)])
def test_larq_zoo_baselines_build_without_download(name, size, tmp_path):
    pytest.importorskip("larq_zoo", reason="the zoo extra is not installed")
    shape = (size, size, 3)
    model = models.get_builder(name)(num_classes=7, input_shape=shape)
    assert model.output_shape[-1] == 7
    path = tmp_path / "weights.h5"
    model.save_weights(str(path))
    again = models.get_builder(name)(num_classes=7, input_shape=shape, weights=path)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        models.get_builder(name)(num_classes=7, input_shape=shape, weights=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="mode"):
        models.get_builder(name)(mode="bwn")


def test_batch_norm_is_synchronized_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = models.small_cnn()
    norms = [
        layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.synchronized for layer in norms)
    assert not any(
        layer.synchronized
        for layer in models.small_cnn().layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    )


@pytest.mark.parametrize("name", ["small_cnn", "nin"])
def test_shift_batch_norm_option(name, rng):
    from xnor_larq import ShiftBatchNormalization

    model = models.get_builder(name)(
        mode="bnn", batch_norm="shift", num_classes=3, input_shape=SMALL_INPUTS[name]
    )
    kinds = {type(layer) for layer in model.layers}
    assert ShiftBatchNormalization in kinds and tf.keras.layers.BatchNormalization not in kinds
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x = rng.normal(size=(4, *SMALL_INPUTS[name])).astype("float32")
    assert np.isfinite(model.train_on_batch(x, np.arange(4) % 3))
    with pytest.raises(ValueError, match="batch_norm"):
        models.get_builder(name)(batch_norm="shfit")
