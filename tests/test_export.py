"""Export to Larq Compute Engine: the dense rewrite, sizes, and agreement with Keras."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from references import EXTRA, SMALL_INPUTS, with_trained_like_batch_norm

from xnor_larq import models
from xnor_larq.export import (
    DenseAsConv1x1,
    UnsupportedLayerError,
    export_tflite,
    lce_compatible,
)

lce = pytest.importorskip("larq_compute_engine", reason="the export extra is not installed")


@pytest.mark.parametrize("mode", ["xnor", "bnn", "larq", "bwn"])
def test_dense_rewrite_computes_the_same_function(rng, mode):
    model = models.small_cnn(mode=mode)
    rewritten = lce_compatible(model)
    x = rng.uniform(-1, 1, size=(6, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(rewritten(x), model(x), rtol=1e-5, atol=1e-6)
    assert any(isinstance(layer, DenseAsConv1x1) for layer in rewritten.layers)


def test_binarynet_vgg_exports_at_least_20x_smaller(tmp_path):
    model = with_trained_like_batch_norm(models.binarynet_vgg(mode="xnor"))
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


def binary_conv_model(size, kernel_size, dilation=1, **conv):
    inputs = tf.keras.Input((size, size, 64))
    outputs = lq.layers.QuantConv2D(
        32,
        kernel_size,
        padding="same",
        dilation_rate=dilation,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        use_bias=False,
        **conv,
    )(inputs)
    return tf.keras.Model(inputs, outputs)


SMALL_MAP_CASES = [(2, 3, 1), (4, 5, 1), (4, 3, 2)]  # (map size, kernel size, dilation)


@pytest.mark.parametrize("size,kernel_size,dilation", SMALL_MAP_CASES)
def test_lce_still_miscomputes_zero_padded_binary_conv_on_small_maps(
    rng, size, kernel_size, dilation
):
    # Why the exporter refuses these layers. If an LCE upgrade fixes the bug,
    # this test fails: then drop export._check_zero_padding.
    model = binary_conv_model(size, kernel_size, dilation)
    interpreter = lce.testing.Interpreter(lce.convert_keras_model(model))
    x = rng.normal(size=(1, size, size, 64)).astype("float32")
    assert np.abs(interpreter.predict(x) - model(x).numpy()).max() > 1


@pytest.mark.parametrize("size,kernel_size,dilation", SMALL_MAP_CASES)
def test_small_zero_padded_maps_are_refused_and_one_padding_exports(
    tmp_path, size, kernel_size, dilation
):
    model = binary_conv_model(size, kernel_size, dilation)
    name = model.layers[1].name
    with pytest.raises(UnsupportedLayerError, match=rf"'{name}' has a {size}×{size} input map"):
        export_tflite(model, tmp_path / "m.tflite")
    assert not list(tmp_path.iterdir())
    one_padded = binary_conv_model(size, kernel_size, dilation, pad_values=1.0)
    report = export_tflite(one_padded, tmp_path / "m.tflite", samples=2, compare_float=False)
    assert report.max_abs_difference == 0.0


def test_map_as_large_as_the_kernel_exports(tmp_path):
    report = export_tflite(binary_conv_model(3, 3), tmp_path / "m.tflite", samples=2)
    assert report.max_abs_difference == 0.0


#: The ImageNet models' last stages shrink to 2×2 (ResNet-18) and 4×4/2×2
#: (GoogLeNet, 5×5 kernels) at the small test inputs: refused in binary modes.
REFUSED_AT_SMALL_INPUTS = {(n, m) for n in ("resnet18", "googlenet") for m in ("xnor", "bnn")}


def build(name, mode, input_shape=None):
    # Seeded: on one unseeded GoogLeNet-XNOR draw, a pre-activation within float
    # rounding of 0 flipped sign (LCE folds BN in another order) and moved the
    # probabilities by 0.009 (top-1 unchanged).
    tf.keras.utils.set_random_seed(0)
    return with_trained_like_batch_norm(
        models.get_builder(name)(
            mode=mode,
            num_classes=10,
            input_shape=input_shape or SMALL_INPUTS[name],
            **EXTRA.get(name, {}),
        )
    )


@pytest.mark.parametrize("mode", ["fp", "bwn", "xnor", "bnn"])
@pytest.mark.parametrize("name", list(models.BUILDERS))
def test_every_builder_and_mode_exports_and_agrees(tmp_path, name, mode):
    model = build(name, mode)
    if (name, mode) in REFUSED_AT_SMALL_INPUTS:
        with pytest.raises(UnsupportedLayerError, match="smaller than its"):
            export_tflite(model, tmp_path / "model.tflite")
        return
    report = export_tflite(
        model, tmp_path / "model.tflite", samples=8, tolerance=1e-3, compare_float=False
    )
    assert report.top1_agreement >= 0.99 and report.max_abs_difference <= 1e-3


# The smallest inputs whose last maps are at least as large as the kernels. XNOR
# only: its K path is the one with float ops between the binary convolutions, and
# a GoogLeNet conversion takes about 100 s here.
@pytest.mark.parametrize("name,size", [("resnet18", 96), ("googlenet", 160)])
def test_imagenet_models_export_at_larger_inputs(tmp_path, name, size):
    model = build(name, "xnor", (size, size, 3))
    report = export_tflite(model, tmp_path / "model.tflite", samples=4, compare_float=False)
    assert report.top1_agreement >= 0.99 and report.max_abs_difference <= 1e-3
