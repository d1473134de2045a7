"""A model using every new object survives .keras, .h5 and SavedModel."""

import numpy as np
import pytest
import tensorflow as tf

from xnor_larq import ScaledQuantConv2D, ScaledQuantDense, ScaledSign, StochasticSign


def every_object_model():
    inputs = tf.keras.Input((9, 9, 3))
    x = ScaledQuantConv2D(
        6, 3, padding="same", input_quantizer=None, kernel_quantizer=ScaledSign(backward="exact")
    )(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = ScaledQuantConv2D(
        6,
        3,
        strides=2,
        dilation_rate=1,
        padding="valid",
        kernel_quantizer="scaled_sign",
        input_scaling_gradient=True,
    )(x)
    x = ScaledQuantConv2D(
        6,
        1,
        input_quantizer=StochasticSign(seed=3),
        kernel_quantizer=StochasticSign(clip_value=0.5),
        input_scaling=False,
    )(x)
    x = tf.keras.layers.Flatten()(x)
    x = ScaledQuantDense(8, kernel_quantizer=ScaledSign(per_channel=False))(x)
    outputs = tf.keras.layers.Dense(4)(x)
    return tf.keras.Model(inputs, outputs)


@pytest.mark.parametrize("filename", ["model.keras", "model.h5", "saved_model"])
def test_save_and_load_predicts_identically(tmp_path, tiny_images, filename):
    images, labels = tiny_images
    images = np.pad(images, [(0, 0), (0, 1), (0, 1), (0, 0)])
    model = every_object_model()
    model.compile(
        optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    expected = model.predict(images, verbose=0)

    path = str(tmp_path / filename)
    model.save(path)
    # No custom_objects: the registered names must be enough.
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected)
    conv = loaded.layers[1]
    assert isinstance(conv, ScaledQuantConv2D)
    assert conv.kernel_quantizer.backward == "exact"
    assert loaded.layers[3].input_scaling_gradient is True
    assert isinstance(loaded.layers[4].input_quantizer, StochasticSign)
