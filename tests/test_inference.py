"""Compiled bitpacked inference against the Keras models it was compiled from."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from references import EXTRA, SMALL_INPUTS, with_trained_like_batch_norm

from xnor_larq import ScaledQuantConv2D, ScaledQuantDense, inference, models
from xnor_larq.inference import BinaryLayer, UnsupportedLayerError


def build(name, mode, **kwargs):
    tf.keras.utils.set_random_seed(0)
    model = models.get_builder(name)(
        mode=mode,
        num_classes=10,
        input_shape=SMALL_INPUTS[name],
        **EXTRA.get(name, {}),
        **kwargs,
    )
    return with_trained_like_batch_norm(model)


def keras_values(model, x):
    """Every layer output of ``model`` on ``x``, keyed like CompiledModel.steps."""
    layers = [layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    values = dict(zip((id(layer.output) for layer in layers), probe(x, training=False)))
    values[id(model.inputs[0])] = tf.constant(x)
    return {key: np.asarray(value) for key, value in values.items()}


def assert_close(got, expected, rtol=1e-4):
    # Relative to the tensor's scale: a float epilogue within 1e-4 relative.
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("mode", ["xnor", "bnn"])
@pytest.mark.parametrize("name", list(models.BUILDERS))
def test_every_step_of_every_builder_matches_keras(rng, name, mode):
    """Each compiled step, fed Keras's own inputs, reproduces Keras's output.

    Feeding Keras's values (not our own) keeps one float-rounding tie at a
    sign (a pre-activation within 1e-6 of 0) from cascading: in a random
    deep binary net such a flip changes everything after it.
    """
    model = build(name, mode)
    compiled = inference.compile(model)
    x = rng.uniform(-1, 1, size=(3, *SMALL_INPUTS[name])).astype("float32")
    values = keras_values(model, x)
    for step in compiled.steps:
        got = step.run(*(values[i] for i in step.inputs))
        assert_close(got, values[step.output])
    assert compiled.binary_layers, "no layer was packed"
    assert len(compiled.binary_layers) == models.BINARY_LAYERS[name]
    assert compiled.packed_weight_bytes * 30 <= compiled.float32_weight_bytes


@pytest.mark.parametrize("mode", ["xnor", "bnn"])
@pytest.mark.parametrize("name", ["small_cnn", "binarynet_vgg"])
def test_whole_model_predictions_match_keras(rng, name, mode):
    model = build(name, mode)
    x = rng.uniform(-1, 1, size=(8, *SMALL_INPUTS[name])).astype("float32")
    compiled = inference.compile(model)
    assert_close(compiled.predict(x, batch_size=3), model.predict(x, verbose=0))


def single_layer_model(layer, input_shape, batch_norm=True):
    inputs = tf.keras.Input(input_shape)
    outputs = layer(inputs)
    if batch_norm:
        outputs = tf.keras.layers.BatchNormalization()(outputs)
    return with_trained_like_batch_norm(tf.keras.Model(inputs, outputs))


GEOMETRIES = [
    # (input h, w, c), kernel, strides, padding, pad_values
    ((9, 7, 70), 3, 1, "same", 0.0),
    ((9, 7, 70), 3, 2, "same", 0.0),
    ((9, 7, 70), 3, 2, "valid", 0.0),
    ((8, 8, 130), 3, 1, "same", 1.0),
    ((8, 8, 130), 3, 2, "same", -1.0),
    ((5, 5, 16), 5, 1, "same", 0.0),
    ((6, 6, 64), (3, 1), (1, 2), "same", 0.0),
]


@pytest.mark.parametrize("input_shape,kernel,strides,padding,pad_values", GEOMETRIES)
@pytest.mark.parametrize("kind", ["xnor", "xnor_no_k", "bnn", "larq"])
def test_conv_geometries_match(rng, kind, input_shape, kernel, strides, padding, pad_values):
    arguments = dict(strides=strides, padding=padding, pad_values=pad_values, use_bias=True)
    if kind.startswith("xnor"):
        layer = ScaledQuantConv2D(37, kernel, input_scaling=kind == "xnor", **arguments)
    elif kind == "bnn":
        conv = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
        layer = lq.layers.QuantConv2D(37, kernel, **conv, **arguments)
    else:
        conv = dict(input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign")
        layer = lq.layers.QuantConv2D(37, kernel, **conv, **arguments)
    model = single_layer_model(layer, input_shape)
    model.layers[1].bias.assign(rng.normal(size=37))
    compiled = inference.compile(model)
    assert compiled.binary_layers[0].folded == [model.layers[2].name]
    x = rng.normal(size=(3, *input_shape)).astype("float32")
    assert_close(compiled.predict(x), model(x).numpy())


@pytest.mark.parametrize("scaled", [True, False])
def test_dense_layers_match(rng, scaled):
    if scaled:
        layer = ScaledQuantDense(33, use_bias=True)
    else:
        layer = lq.layers.QuantDense(33, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    model = single_layer_model(layer, (100,))
    x = rng.normal(size=(5, 100)).astype("float32")
    compiled = inference.compile(model)
    assert compiled.binary_layers[0].kind == "dense"
    assert_close(compiled.predict(x), model(x).numpy())


@pytest.mark.parametrize(
    "pool,strides,padding,fused",
    [(2, 2, "valid", True), (3, 3, "valid", True), (2, 1, "valid", False), (2, 2, "same", False)],
)
def test_a_max_pool_after_a_binary_conv_runs_in_its_call_where_it_can(
    rng, pool, strides, padding, fused
):
    inputs = tf.keras.Input((9, 11, 16))
    x = ScaledQuantConv2D(8, 3, padding="same")(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.MaxPool2D(pool, strides=strides, padding=padding)(x)
    outputs = tf.keras.layers.Flatten()(x)
    model = with_trained_like_batch_norm(tf.keras.Model(inputs, outputs))
    compiled = inference.compile(model)
    pool_name = model.layers[3].name
    assert (pool_name in compiled.binary_layers[0].folded) == fused
    assert (pool_name in {step.name for step in compiled.steps}) != fused
    assert compiled.binary_layers[0].pool_size == ((pool, pool) if fused else (1, 1))
    x = rng.normal(size=(3, 9, 11, 16)).astype("float32")
    assert_close(compiled.predict(x), model(x).numpy())


def test_activation_after_binary_layer_blocks_batch_norm_folding(rng):
    layer = ScaledQuantConv2D(8, 3, padding="same", activation="relu")
    model = single_layer_model(layer, (6, 6, 8))
    compiled = inference.compile(model)
    assert compiled.binary_layers[0].folded == []
    x = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    assert_close(compiled.predict(x), model(x).numpy())


def test_batch_norm_before_a_binary_layer_is_applied_while_packing(rng):
    model = build("small_cnn", "xnor")
    compiled = inference.compile(model)
    names = {step.name for step in compiled.steps}
    bn_before = [layer.inbound_nodes[0].inbound_layers.name for layer in model.layers
                 if hasattr(layer, "input_quantizer")]  # fmt: skip
    assert all(name.startswith("batch_normalization") for name in bn_before)
    assert not names & set(bn_before)
    assert [layer.folded[0] for layer in compiled.binary_layers] == bn_before
    x = rng.uniform(-1, 1, size=(4, 28, 28, 1)).astype("float32")
    values = keras_values(model, x)
    for step in compiled.steps:  # each binary step now starts from the BN's input
        assert_close(step.run(*(values[i] for i in step.inputs)), values[step.output])


def test_batch_norm_read_by_two_layers_stays_a_step(rng):
    inputs = tf.keras.Input((6, 6, 8))
    normalized = tf.keras.layers.BatchNormalization(name="shared_bn")(inputs)
    conv = ScaledQuantConv2D(8, 3, padding="same")(normalized)
    model = with_trained_like_batch_norm(
        tf.keras.Model(inputs, tf.keras.layers.Add()([conv, normalized]))
    )
    compiled = inference.compile(model)
    assert "shared_bn" in {step.name for step in compiled.steps}
    assert compiled.binary_layers[0].input_scale is None
    x = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    assert_close(compiled.predict(x), model(x).numpy())


def _float_stem_model(after, use_bias, shared=False):
    inputs = tf.keras.Input((9, 7, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=use_bias, name="stem")(inputs)
    outputs = []
    for name in after:
        layer = {
            "bn": lambda: tf.keras.layers.BatchNormalization(name="bn"),
            "relu": lambda: tf.keras.layers.Activation("relu", name="relu"),
            "relu_layer": lambda: tf.keras.layers.ReLU(name="relu_layer"),
            "relu6": lambda: tf.keras.layers.ReLU(6.0, name="relu6"),
        }[name]()
        if shared:  # the conv's output is also read by another layer
            outputs.append(tf.keras.layers.Flatten(name=f"{name}_also")(x))
        x = layer(x)
    x = ScaledQuantConv2D(4, 3, padding="same", name="binary")(x)
    outputs.append(tf.keras.layers.Flatten()(x))
    model = tf.keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])
    return with_trained_like_batch_norm(model)


@pytest.mark.parametrize(
    "after, fused",
    [
        (["bn", "relu"], ["bn", "relu"]),
        (["bn", "relu_layer"], ["bn", "relu_layer"]),
        (["relu"], ["relu"]),
        (["bn", "relu6"], ["bn"]),  # a capped ReLU stays a step of its own
        (["relu", "bn"], ["relu"]),  # a BN after the ReLU: the binary layer packs with it
    ],
)
@pytest.mark.parametrize("use_bias", [False, True])
def test_batch_norm_and_relu_after_a_float_conv_run_in_its_step(rng, after, fused, use_bias):
    model = _float_stem_model(after, use_bias)
    for layer in model.layers:  # a bias that matters
        if layer.name == "stem" and use_bias:
            layer.bias.assign(rng.normal(size=8).astype("float32"))
    compiled = inference.compile(model)
    names = {step.name for step in compiled.steps}
    assert not names & set(fused)
    assert set(after) - set(fused) <= names | set(compiled.binary_layers[0].folded)
    assert f"stem: float, folded {', '.join(fused)}" in compiled.summary()
    x = rng.normal(size=(3, 9, 7, 3)).astype("float32")
    values = keras_values(model, x)
    for step in compiled.steps:  # each step against Keras's value of its output
        assert_close(step.run(*(values[i] for i in step.inputs)), values[step.output])
    assert_close(compiled.predict(x), model(x).numpy())


@pytest.mark.parametrize("channels", [3, 8])  # the direct loop, and im2col + BLAS
@pytest.mark.parametrize("activation", ["relu", "tanh"])  # in the compiled call, and after it
def test_a_float_conv_with_its_own_bias_and_activation(rng, channels, activation):
    inputs = tf.keras.Input((9, 7, channels))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation=activation, name="stem")(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Flatten()(x))
    model.get_layer("stem").bias.assign(rng.normal(size=8).astype("float32"))
    x = rng.normal(size=(3, 9, 7, channels)).astype("float32")
    assert_close(inference.compile(model).predict(x), model(x).numpy())


def test_a_float_conv_output_read_twice_keeps_its_batch_norm_step(rng):
    model = _float_stem_model(["bn", "relu"], use_bias=False, shared=True)
    compiled = inference.compile(model)
    assert {"bn", "relu"} <= {step.name for step in compiled.steps}
    x = rng.normal(size=(2, 9, 7, 3)).astype("float32")
    for got, expected in zip(compiled.predict(x), model(x)):
        assert_close(got, expected.numpy())


def test_stochastic_bnn_compiles_to_its_deterministic_inference(rng):
    model = build("small_cnn", "bnn", stochastic=True, seed=3)
    x = rng.uniform(-1, 1, size=(4, 28, 28, 1)).astype("float32")
    compiled = inference.compile(model)
    assert len(compiled.binary_layers) == 4
    values = keras_values(model, x)
    for step in compiled.steps:
        assert_close(step.run(*(values[i] for i in step.inputs)), values[step.output])


def test_saved_and_loaded_model_compiles(tmp_path, rng):
    model = build("small_cnn", "xnor")
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    x = rng.uniform(-1, 1, size=(4, 28, 28, 1)).astype("float32")
    assert_close(inference.compile(loaded).predict(x), model(x).numpy())


def half_binary_model():
    inputs = tf.keras.Input((6, 6, 4))
    outputs = lq.layers.QuantConv2D(
        3, 3, input_quantizer="ste_sign", kernel_quantizer=None, name="half_binary"
    )(inputs)
    return tf.keras.Model(inputs, outputs)


def test_half_binary_layer_is_refused_or_falls_back(rng):
    model = half_binary_model()
    with pytest.raises(UnsupportedLayerError, match="'half_binary'.*kernel is not ±α.*fallback"):
        inference.compile(model)
    compiled = inference.compile(model, fallback=True)
    assert compiled.fallback_layers == ["half_binary"] and not compiled.binary_layers
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    np.testing.assert_allclose(compiled.predict(x), model(x).numpy(), rtol=1e-6)


def test_nested_and_shared_layers_and_bad_inputs_are_refused(rng):
    inner = models.small_cnn(mode="bnn")
    outer = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), inner])
    with pytest.raises(UnsupportedLayerError, match="nested"):
        inference.compile(outer)
    shared = tf.keras.layers.Dense(4)
    inputs = tf.keras.Input((4,))
    twice = tf.keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(UnsupportedLayerError, match="shared"):
        inference.compile(twice)
    with pytest.raises(ValueError, match="built Keras model"):
        inference.compile("model.keras")
    compiled = inference.compile(models.small_cnn(mode="bnn"))
    with pytest.raises(ValueError, match="takes 1 inputs. Received: 2"):
        compiled.predict([np.zeros((1, 28, 28, 1))] * 2)


@pytest.mark.parametrize("threads", [0, 1.5, True, "2", 10**6])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match=f"`threads` must be an integer from 1 to .*{threads!r}"):
        inference.compile(models.small_cnn(mode="bnn"), threads=threads)


def test_each_compiled_model_predicts_with_its_own_thread_count(rng):
    numba = pytest.importorskip("numba")
    model = build("small_cnn", "xnor")
    x = rng.uniform(-1, 1, (2, 28, 28, 1)).astype("float32")
    seen = {}
    compiled = {}
    for threads in (1, numba.config.NUMBA_NUM_THREADS, None):
        compiled[threads] = inference.compile(model, threads=threads)
        step = compiled[threads]._steps[1]  # a binary layer's step
        run = step.run

        def spy(*args, run=run, threads=threads):
            seen[threads] = numba.get_num_threads()
            return run(*args)

        step.run = spy
    caller = numba.get_num_threads()
    outputs = {threads: c.predict(x) for threads, c in compiled.items()}
    assert seen[1] == 1
    assert seen[numba.config.NUMBA_NUM_THREADS] == numba.config.NUMBA_NUM_THREADS
    assert seen[None] == caller  # no count given: the caller's setting
    assert numba.get_num_threads() == caller  # and the caller's setting is left as it was
    np.testing.assert_array_equal(outputs[1], outputs[None])


def test_summary_reports_the_packing():
    compiled = inference.compile(build("binarynet_vgg", "xnor"))
    text = compiled.summary()
    assert f"{len(compiled.binary_layers)} bitpacked layers" in text
    assert all(isinstance(layer, BinaryLayer) for layer in compiled.binary_layers)
    ratio = compiled.float32_weight_bytes / compiled.packed_weight_bytes
    assert f"{ratio:.1f}x smaller" in text


@pytest.fixture
def pool_everything(monkeypatch):
    """Let every step use the buffer pool (by default only outputs of 256 KiB or more)."""
    monkeypatch.setattr(inference._BufferPool, "MIN_BYTES", 0)


def pooled_arrays(compiled):
    return [array for arrays in compiled._buffers.free.values() for array in arrays]


def planned_arrays(compiled):
    """The output arrays the calling thread's plans reuse."""
    plans = compiled._plans.by_key.values()
    return [entry.out for plan in plans for entry in plan if entry.out is not None]


def test_repeated_predictions_reuse_arrays_but_never_returned_ones(rng, pool_everything):
    model = build("small_cnn", "xnor")
    compiled = inference.compile(model)
    x1, x2, x3 = (rng.uniform(-1, 1, size=(4, 28, 28, 1)).astype("float32") for _ in range(3))
    first = compiled.predict(x1)  # the steps, from the pool; plans the next calls
    kept = first.copy()
    assert len(pooled_arrays(compiled)) >= 5  # float conv, 3 binary convs, binary dense
    second = compiled.predict(x2)  # the planned calls, with their own arrays
    planned = {id(array) for array in planned_arrays(compiled)}
    assert len(planned) == 6  # and the float dense; not the softmax, the output
    kept_second = second.copy()
    third = compiled.predict(x3)
    assert {id(array) for array in planned_arrays(compiled)} == planned  # the same arrays again
    np.testing.assert_array_equal(first, kept)  # earlier results were not overwritten
    np.testing.assert_array_equal(second, kept_second)
    assert not any(np.may_share_memory(third, array) for array in planned_arrays(compiled))
    assert_close(second, model.predict(x2, verbose=0))
    assert_close(third, model.predict(x3, verbose=0))
    np.testing.assert_array_equal(compiled.predict(x1), kept)


@pytest.mark.parametrize("mode", ["xnor", "bnn"])
@pytest.mark.parametrize("name", list(models.BUILDERS))
def test_planned_calls_give_the_steps_results(rng, name, mode):
    # The first call with a shape runs each step's own function, later ones the plan.
    compiled = inference.compile(build(name, mode))
    x = rng.uniform(-1, 1, size=(2, *SMALL_INPUTS[name])).astype("float32")
    by_steps = compiled.predict(x)
    assert compiled._plans.by_key, "nothing was planned"
    planned = compiled.predict(x)
    np.testing.assert_array_equal(planned, by_steps)
    strided = np.repeat(x, 2, axis=-1)[..., ::2]  # the same values, not C-contiguous
    np.testing.assert_array_equal(compiled.predict(strided), planned)


def test_an_output_seen_through_a_view_is_never_reused(rng):
    # The binary conv's array reaches the output through Flatten (a view of it).
    inputs = tf.keras.Input((6, 6, 16))
    x = ScaledQuantConv2D(8, 3, padding="same")(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    model = with_trained_like_batch_norm(tf.keras.Model(inputs, tf.keras.layers.Flatten()(x)))
    compiled = inference.compile(model)
    xs = [rng.uniform(-1, 1, size=(2, 6, 6, 16)).astype("float32") for _ in range(3)]
    results = [compiled.predict(x) for x in xs]
    for x, got in zip(xs, results):
        assert_close(got, model(x).numpy())
    assert not planned_arrays(compiled)  # the conv's only array is the output's


def test_plans_are_kept_for_a_few_input_shapes(monkeypatch):
    monkeypatch.setattr(inference._Plans, "LIMIT", 2)
    compiled = inference.compile(build("small_cnn", "bnn"))
    for batch in (1, 2, 3, 1):
        compiled.predict(np.zeros((batch, 28, 28, 1), np.float32))
    assert [key[0] for key in compiled._plans.by_key] == [((3, 28, 28, 1),), ((1, 28, 28, 1),)]
    # and only as many as fit in MAX_BYTES besides the newest one
    one_image = sum(array.nbytes for array in planned_arrays(compiled)) // 4  # batches 3 and 1
    monkeypatch.setattr(inference._Plans, "LIMIT", 10)
    monkeypatch.setattr(inference._Plans, "MAX_BYTES", 5 * one_image)
    compiled.predict(np.zeros((2, 28, 28, 1), np.float32))  # 3 + 1 + 2 images: the 3 go
    assert [key[0] for key in compiled._plans.by_key] == [((1, 28, 28, 1),), ((2, 28, 28, 1),)]
    compiled.predict(np.zeros((4, 28, 28, 1), np.float32))  # 1 + 2 + 4, 2 + 4: both go
    assert [key[0] for key in compiled._plans.by_key] == [((4, 28, 28, 1),)]
    compiled.predict(np.zeros((6, 28, 28, 1), np.float32))  # the newest is always kept
    assert [key[0] for key in compiled._plans.by_key] == [((6, 28, 28, 1),)]


def test_an_output_written_by_a_pooled_step_is_handed_over(rng, pool_everything):
    # The binary conv (BN folded in) is the model's last step: its array is the output.
    model = single_layer_model(ScaledQuantConv2D(8, 3, padding="same"), (6, 6, 16))
    compiled = inference.compile(model)
    x1, x2 = (rng.uniform(-1, 1, size=(2, 6, 6, 16)).astype("float32") for _ in range(2))
    first = compiled.predict(x1)
    kept = first.copy()
    assert not any(np.may_share_memory(first, array) for array in pooled_arrays(compiled))
    compiled.predict(x2)
    np.testing.assert_array_equal(first, kept)


def test_threads_predicting_at_once_get_their_own_arrays(rng, pool_everything):
    import threading

    model = build("small_cnn", "xnor")
    compiled = inference.compile(model)
    inputs = [rng.uniform(-1, 1, size=(3, 28, 28, 1)).astype("float32") for _ in range(2)]
    expected = [compiled.predict(x) for x in inputs]
    failures = []

    def worker(index):
        for _ in range(20):
            got = compiled.predict(inputs[index])
            if not np.array_equal(got, expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_steps_run_by_hand_get_new_arrays(rng, pool_everything):
    compiled = inference.compile(build("small_cnn", "xnor"))
    compiled.predict(rng.uniform(-1, 1, size=(2, 28, 28, 1)).astype("float32"))
    step = compiled.steps[0]  # the float conv
    x = rng.uniform(-1, 1, size=(2, 28, 28, 1)).astype("float32")
    first = step.run(x)
    assert not any(np.may_share_memory(first, array) for array in pooled_arrays(compiled))
    assert step.run(x) is not first
