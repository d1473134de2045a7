"""Export to Larq Compute Engine: the dense rewrite, sizes, and agreement with Keras."""

import numpy as np
import pytest
import tensorflow as tf
from references import EXTRA, SMALL_INPUTS

from xnor_larq import models
from xnor_larq.export import DenseAsConv1x1, export_tflite, lce_compatible


def with_trained_like_batch_norm(model, seed=1):
    """Give every BatchNormalization non-trivial statistics, as training would.

    An untrained model's BN is the identity, so integer binary-conv sums hit 0
    exactly and sign(0) ties decide the output; LCE may break such ties
    differently from TensorFlow (seen on BinaryNet VGG: every top-1 differed).
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 2, gamma.shape),
                    rng.normal(size=beta.shape),
                    rng.normal(size=mean.shape),
                    rng.uniform(0.5, 2, variance.shape),
                ]
            )
    return model


@pytest.mark.parametrize("mode", ["xnor", "bnn", "larq", "bwn"])
def test_dense_rewrite_computes_the_same_function(rng, mode):
    model = models.small_cnn(mode=mode)
    rewritten = lce_compatible(model)
    x = rng.uniform(-1, 1, size=(6, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(rewritten(x), model(x), rtol=1e-5, atol=1e-6)
    assert any(isinstance(layer, DenseAsConv1x1) for layer in rewritten.layers)


@pytest.mark.parametrize("mode", ["xnor", "bnn"])
def test_binarynet_vgg_exports_at_least_20x_smaller(tmp_path, mode):
    model = with_trained_like_batch_norm(models.binarynet_vgg(mode=mode))
    report = export_tflite(model, tmp_path / "vgg.tflite", samples=8)
    assert (tmp_path / "vgg.tflite").stat().st_size == report.size_bytes
    assert report.size_ratio >= 20, report.summary()
    assert report.top1_agreement == 1.0 and report.max_abs_difference < 1e-3


def test_bad_paths_and_no_partial_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        export_tflite(tmp_path / "missing.keras", tmp_path / "out.tflite")
    model = models.small_cnn(mode="bnn")
    with pytest.raises(ValueError, match=".tflite"):
        export_tflite(model, tmp_path / "out.bin")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export_tflite(model, tmp_path / "nowhere" / "out.tflite")
    with pytest.raises(ValueError, match="differs"):
        export_tflite(model, tmp_path / "out.tflite", samples=2, tolerance=-1.0)
    assert not list(tmp_path.glob("out*"))


def test_nested_models_are_refused(tmp_path):
    inner = models.small_cnn(mode="bnn")
    outer = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), inner])
    with pytest.raises(ValueError, match="Nested model"):
        export_tflite(outer, tmp_path / "out.tflite")


# Measured disagreements of LCE 0.16's x86 interpreter with Keras, still open:
# top-1 agreement 12.5% (resnet18 bnn), 62.5% (googlenet xnor and bnn) on 8 samples
# (weights are not seeded here, so not strict).
KNOWN_LCE_MISMATCH = {("resnet18", "bnn"), ("googlenet", "xnor"), ("googlenet", "bnn")}


def _case(name, mode):
    marks = []
    if (name, mode) in KNOWN_LCE_MISMATCH:
        marks = [
            pytest.mark.xfail(
                strict=False,  # weights are not seeded here
                raises=ValueError,
                reason="LCE output differs from Keras (open, issue 6)",
            )
        ]
    return pytest.param(name, mode, marks=marks, id=f"{name}-{mode}")


@pytest.mark.parametrize(
    "name,mode", [_case(n, m) for n in models.BUILDERS for m in ("fp", "bwn", "xnor", "bnn")]
)
def test_every_builder_and_mode_exports_and_agrees(tmp_path, name, mode):
    model = with_trained_like_batch_norm(
        models.get_builder(name)(
            mode=mode, num_classes=10, input_shape=SMALL_INPUTS[name], **EXTRA.get(name, {})
        )
    )
    report = export_tflite(
        model, tmp_path / "model.tflite", samples=8, tolerance=1e-3, compare_float=False
    )
    assert report.top1_agreement >= 0.99 and report.max_abs_difference <= 1e-3
