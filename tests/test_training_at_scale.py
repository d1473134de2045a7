"""xnor_larq.training where users run it: every dataset kind, replicas, workers,
mid-epoch kills, mixed precision and XLA, the recipe knobs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from formats import write_cifar, write_idx_dataset, write_image_folder, write_tfrecords
from test_training import read_history, synthetic_config

from xnor_larq import data, training
from xnor_larq.recipes import PlannedSchedule, SparseCrossEntropy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


config = synthetic_config  # synthetic data, 256 images, batch 32, seed 5


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_dataset(kind, root, rng):
    """(dataset name, data_dir, training images, image_size) of a fixture of ``kind``."""
    if kind == "idx":
        write_idx_dataset(root, rng, num_train=40, num_test=9)
        return "mnist", root, 40, 224
    if kind == "cifar":
        write_cifar(root, "cifar10", rng, per_batch=8)
        return "cifar10", root, 40, 224
    if kind == "folder":
        count, _ = write_image_folder(root, rng, classes=16, per_class=3, val_per_class=1,
                                      size=(20, 24))
        return "imagenet", root, count, 16
    write_tfrecords(root, rng, "train", shards=3, per_shard=14)
    write_tfrecords(root, rng, "validation", shards=1, per_shard=9)
    return "imagenet", root, 42, 16


@pytest.mark.parametrize("kind", ["idx", "cifar", "folder", "tfrecords"])
@pytest.mark.parametrize("subset", [0, 24])
def test_the_schedule_ends_on_the_last_planned_step(tmp_path, rng, isolated_home, kind, subset):
    name, data_dir, images, image_size = make_dataset(kind, tmp_path / "data", rng)
    batch = 8
    steps_per_epoch = (subset or images) // batch
    run = config(tmp_path, dataset=name, data_dir=str(data_dir), epochs=2, batch_size=batch,
                 train_subset=subset, image_size=image_size, width=8)
    if kind == "tfrecords" and subset:
        with pytest.raises(ValueError, match="--train-subset needs an image folder"):
            training.train(run, verbose=0)
        assert not (tmp_path / "run").exists()  # refused before writing anything
        return
    report = training.train(run, verbose=0)
    assert report["plan"]["steps_per_epoch"] == steps_per_epoch
    assert report["optimizer_iterations"] == report["optimizer_steps"] == 2 * steps_per_epoch
    schedule = PlannedSchedule("cosine", 1e-3, 2 * steps_per_epoch)
    assert float(schedule(2 * steps_per_epoch - 1)) == report["final_learning_rate"] == 0.0
    assert float(schedule(2 * steps_per_epoch - 2)) > 0.0
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run" / "history.csv")] == [0, 1]


def test_a_mid_epoch_resume_continues_exactly(tmp_path):
    common = dict(mode="fp", epochs=2, train_subset=128, save_every_steps=3)
    whole = training.train(config(tmp_path / "whole", **common), verbose=0)
    killed = config(tmp_path / "killed", **common)
    training.train(killed, verbose=0)
    # Saved at steps 3, 4 (epoch end), 7 and 8; the last two are kept. Rewind the
    # second run to step 7 (epoch 1, step 3 of 4), as if killed there, and rerun.
    checkpoints = tmp_path / "killed" / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("ckpt-*.index")) == [
        "ckpt-7.index", "ckpt-8.index"
    ]
    tf.compat.v1.train.update_checkpoint_state(
        str(checkpoints), str(checkpoints / "ckpt-7"), [str(checkpoints / "ckpt-7")]
    )
    (tmp_path / "killed" / "run" / "report.json").unlink()
    resumed = training.train(killed, verbose=0)
    assert resumed["resumed_from_step"] == 7 and resumed["resumed_from_epoch"] == 1
    assert resumed["optimizer_steps"] == whole["optimizer_steps"] == 8
    a = tf.keras.models.load_model(tmp_path / "whole" / "run" / "model.keras")
    b = tf.keras.models.load_model(tmp_path / "killed" / "run" / "model.keras")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    history = read_history(tmp_path / "killed" / "run" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]


@pytest.mark.parametrize("mode", ["fp", "bwn"])
def test_shift_batch_norm_models_on_two_replicas_equal_one(tmp_path, mode):
    common = dict(mode=mode, batch_norm="shift", train_subset=32)  # one step
    one = training.train(config(tmp_path / "one", devices=["/cpu:0"], **common), verbose=0)
    two = training.train(
        config(tmp_path / "two", devices=["/cpu:0", "/cpu:1"], **common), verbose=0
    )
    assert one["replicas"] == 1 and two["replicas"] == 2
    a = tf.keras.models.load_model(tmp_path / "one" / "run" / "model.keras")
    b = tf.keras.models.load_model(tmp_path / "two" / "run" / "model.keras")
    names = [w.name for w in a.weights]
    assert any("moving_variance" in n for n in names)
    for name, x, y in zip(names, a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(x, y, atol=1e-4, err_msg=name)
    # the report describes the saved model
    evaluated = training.evaluate(tmp_path / "two" / "run" / "model.keras", config(tmp_path))
    assert evaluated["test_images"] == two["test_images"]
    assert evaluated["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1e-6)
    assert evaluated["test_loss"] == pytest.approx(two["test_loss"], rel=1e-5)


def test_evaluation_counts_each_image_once_on_two_replicas(tmp_path, mirrored_strategy, rng):
    images = rng.integers(0, 256, size=(33, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=33)
    source = data.ArraySource(images, labels)
    cfg = config(tmp_path, mode="fp")
    with mirrored_strategy.scope():
        model = training.build_model(cfg, 10, (28, 28, 1))
        training._compile(model, "sgd", cfg)
    dataset = training._distributed(
        mirrored_strategy,
        lambda layout: data.evaluation_dataset(source, global_batch=32, layout=layout),
    )
    # 33 images in batches of 32: the last global batch holds 1 image for 2 replicas
    results = model.evaluate(dataset, steps=2, verbose=0, return_dict=True)
    reference = training.build_model(cfg, 10, (28, 28, 1))  # one device, outside the strategy
    reference.set_weights(model.get_weights())
    probabilities = reference.predict(images / 127.5 - 1, verbose=0)
    accuracy = np.mean(probabilities.argmax(-1) == labels)
    cross_entropy = -np.mean(np.log(probabilities[np.arange(33), labels]))
    assert results["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert results["cross_entropy"] == pytest.approx(cross_entropy, rel=1e-4)


def test_same_seed_same_history_other_seed_other_history(tmp_path, rng, isolated_home):
    write_cifar(tmp_path / "cifar", "cifar10", rng, per_batch=16)  # crop_flip augmentation
    def run(name, seed):
        training.train(
            config(tmp_path / name, dataset="cifar10", data_dir=str(tmp_path / "cifar"),
                   batch_size=16, train_subset=0, seed=seed, mode="bnn",
                   stochastic="both", width=8, epochs=2),
            verbose=0,
        )
        rows = read_history(tmp_path / name / "run" / "history.csv")
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]

    first, again, other = run("a", 1), run("b", 1), run("c", 2)
    assert first == again
    assert first != other


def test_same_shaped_stochastic_layers_draw_different_noise():
    from xnor_larq.models import nin

    model = nin(mode="bnn", stochastic="both", seed=3, input_shape=(32, 32, 3))
    quantized = [layer for layer in model.layers if hasattr(layer, "input_quantizer")]
    seeds = [q.seed for layer in quantized for q in (layer.input_quantizer,
                                                      layer.kernel_quantizer)]
    assert len(set(seeds)) == len(seeds)
    same_shape = [layer for layer in quantized if layer.kernel.shape == (1, 1, 192, 192)]
    assert len(same_shape) >= 2
    x = tf.zeros((4, 8, 8, 192))  # p = 1/2 everywhere
    first = same_shape[0].input_quantizer(x, training=True).numpy()
    second = same_shape[1].input_quantizer(x, training=True).numpy()
    agreement = np.mean(first == second)
    assert 0.4 < agreement < 0.6, agreement  # independent draws: 1/2


MODES = ["fp", "bwn", "xnor", "bnn", "larq"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "setting",
    [
        {"precision": "bfloat16"},
        {"precision": "float16"},
        {"jit_compile": True, "devices": ["/cpu:0"]},
        {"precision": "float16", "batch_norm": "shift"},
    ],
    ids=["bfloat16", "float16", "xla", "float16-shift-bn"],
)
def test_mixed_precision_and_xla_train_steps(tmp_path, mode, setting):
    if mode == "larq" and setting.get("batch_norm"):
        pytest.skip("the same path as the other modes' shift BN")
    report = training.train(config(tmp_path, mode=mode, train_subset=64, **setting), verbose=0)
    rows = read_history(tmp_path / "run" / "history.csv")
    assert np.isfinite(float(rows[0]["loss"])) and np.isfinite(report["test_loss"])
    assert report["optimizer_steps"] == 2
    model = tf.keras.models.load_model(tmp_path / "run" / "model.keras")
    if setting.get("precision") == "float16":
        assert "LossScale" in report["optimizer_class"]
        assert any(layer.compute_dtype == "float16" for layer in model.layers)


def test_xla_over_virtual_cpu_replicas_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="--jit-compile with several CPU replicas"):
        training.train(config(tmp_path, jit_compile=True, devices=["/cpu:0", "/cpu:1"]))
    assert not (tmp_path / "run").exists()


def test_recipe_knobs_run_and_count_steps(tmp_path):
    report = training.train(
        config(tmp_path, epochs=2, train_subset=128, warmup_epochs=0.5, weight_decay=1e-4,
               label_smoothing=0.1, clip_norm=1.0, validation_freq=2, steps_per_execution=2,
               devices=["/cpu:0", "/cpu:1"]),
        verbose=0,
    )
    assert report["optimizer_steps"] == report["optimizer_iterations"] == 8
    assert report["plan"]["warmup_steps"] == 2
    assert "global batch" in report["plan"]["lr_note"]
    rows = read_history(tmp_path / "run" / "history.csv")
    assert rows[0].get("val_loss") in (None, "") and rows[1]["val_loss"] != ""


def test_planned_schedule_values_and_round_trip():
    schedule = PlannedSchedule("cosine", 0.1, total_steps=10, warmup_steps=2)
    values = [float(schedule(s)) for s in range(10)]
    np.testing.assert_allclose(values[:2], [0.05, 0.1], rtol=1e-6)
    assert values[-1] == 0.0 and all(a >= b for a, b in zip(values[2:], values[3:]))
    np.testing.assert_allclose(values[2], 0.1, rtol=1e-6)
    step = PlannedSchedule("step", 1.0, total_steps=9)
    assert [round(float(step(s)), 6) for s in (0, 3, 4, 5, 6, 8)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    clone = PlannedSchedule.from_config(schedule.get_config())
    assert [float(clone(s)) for s in range(10)] == values
    with pytest.raises(ValueError, match="--warmup-epochs"):
        PlannedSchedule("cosine", 0.1, total_steps=4, warmup_steps=4)


def test_label_smoothing_loss_against_numpy(rng):
    probabilities = rng.dirichlet(np.ones(5), size=6).astype(np.float32)
    labels = rng.integers(0, 5, size=6)
    eps = 0.2
    targets = np.full((6, 5), eps / 5) + (1 - eps) * np.eye(5)[labels]
    expected = -np.mean(np.sum(targets * np.log(probabilities), axis=-1))
    loss = SparseCrossEntropy(eps)(labels, probabilities)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    plain = tf.keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    np.testing.assert_allclose(float(SparseCrossEntropy(0.0)(labels, probabilities)),
                               float(tf.reduce_mean(plain)), rtol=1e-6)


def test_bop_is_refused_for_scaled_weights_and_gamma_follows_the_schedule():
    with pytest.raises(ValueError, match="alpha.*becomes 1"):
        training.TrainConfig(optimizer="bop", mode="xnor").validate()
    training.TrainConfig(optimizer="bop", mode="bnn").validate()
    gamma = PlannedSchedule("cosine", 1e-3, total_steps=10)
    optimizer = training.make_optimizer("bop", 1e-3, bop_gamma=gamma)
    bop = optimizer.optimizers[0]
    for step in (0, 4, 9):
        bop.iterations.assign(step)
        np.testing.assert_allclose(
            float(bop._get_decayed_hyper("gamma", tf.float32)), float(gamma(step)), rtol=1e-6
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr": float("inf")}, "--lr must be a finite positive number"),
        ({"lr": float("nan")}, "--lr must be a finite positive number"),
        ({"precision": "int8"}, "--precision must be one of"),
        ({"warmup_epochs": 3}, "--warmup-epochs must be"),
        ({"label_smoothing": 1.0}, r"--label-smoothing must be in \[0, 1\)"),
        ({"save_every_steps": -1}, "--save-every-steps must be 0"),
        ({"optimizer": "shift_adamax", "weight_decay": 1e-4}, "--weight-decay and --clip-norm"),
    ],
)
def test_recipe_flags_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**overrides).validate()


COUNTING_WORKER = """
import atexit, sys, json
import xnor_larq
import tensorflow as tf
counts = {"train": 0, "val": 0}
original = tf.io.read_file
def bump(path):
    split = "train" if b"/train/" in path.numpy() else "val"
    counts[split] += 1
    return path
def counting_read_file(filename, name=None):
    return original(tf.py_function(bump, [filename], tf.string))
tf.io.read_file = counting_read_file
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(counts)))
from xnor_larq.cli import main
code = main(sys.argv[2:])
sys.stdout.flush()
raise SystemExit(code)
"""


def test_two_workers_each_decode_half_of_the_images(tmp_path, rng):
    import socket

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    train_images, _ = write_image_folder(tmp_path / "data", rng, classes=16, per_class=4,
                                         val_per_class=2, size=(20, 24))
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(tf_config),
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", COUNTING_WORKER, str(tmp_path / f"reads-{index}.json"),
             "train", "--strategy", "multi-worker", "--dataset", "imagenet", "--data-dir",
             str(tmp_path / "data"), "--image-size", "16", "--width", "8", "--epochs", "1",
             "--batch-size", "16", "--output-dir", str(tmp_path / "run")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    try:
        outputs = [p.communicate(timeout=400) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    reads = [json.loads((tmp_path / f"reads-{i}.json").read_text()) for i in range(2)]
    # 64 training images, 4 steps of 16: each worker reads its 8 of every batch once
    assert [r["train"] for r in reads] == [train_images // 2] * 2
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["replicas"] == 2 and report["optimizer_steps"] == 4
