"""The training path: distribution, resume after kill -9, reports, real data."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from xnor_larq import training
from xnor_larq.data import mnist

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def synthetic_config(tmp_path, **overrides):
    settings = dict(
        dataset="synthetic",
        epochs=1,
        batch_size=32,
        train_subset=256,
        output_dir=str(tmp_path / "run"),
        seed=5,
        verbose_unused=None,
    )
    settings.pop("verbose_unused")
    settings.update(overrides)
    return training.TrainConfig(**settings)


def read_history(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_history_report_and_model(tmp_path):
    report = training.train(synthetic_config(tmp_path, epochs=2), verbose=0)
    run = tmp_path / "run"
    assert [int(r["epoch"]) for r in read_history(run / "history.csv")] == [0, 1]
    saved = json.loads((run / "report.json").read_text())
    assert saved["test_accuracy"] == report["test_accuracy"]
    assert 0 < saved["binarized_mac_ratio"] <= 1 and saved["parameters"] > 0
    assert saved["model_size_bytes"] < saved["float32_size_bytes"]
    assert (run / "model.keras").exists() and any((run / "tensorboard").iterdir())
    assert 0.0 <= report["test_accuracy"] <= 1.0


@pytest.mark.parametrize("mode,subset", [("fp", 256), ("xnor", 32)])
def test_two_replicas_match_one_device(tmp_path, mode, subset):
    # Binary nets amplify float rounding (a pre-activation near 0 flips sign after
    # the first update: two steps differed by 7% here), so the binary comparison
    # runs one step; the float twin runs a whole epoch.
    common = dict(mode=mode, train_subset=subset)
    one = training.train(
        synthetic_config(tmp_path / "one", devices=["/cpu:0"], **common), verbose=0
    )
    two = training.train(
        synthetic_config(tmp_path / "two", devices=["/cpu:0", "/cpu:1"], **common), verbose=0
    )
    assert one["replicas"] == 1 and two["replicas"] == 2
    loss_one = float(read_history(tmp_path / "one" / "run" / "history.csv")[0]["loss"])
    loss_two = float(read_history(tmp_path / "two" / "run" / "history.csv")[0]["loss"])
    np.testing.assert_allclose(loss_two, loss_one, rtol=2e-3)
    np.testing.assert_allclose(two["test_loss"], one["test_loss"], rtol=2e-3)


def test_global_batch_must_divide_by_replicas(tmp_path):
    with pytest.raises(ValueError, match="must divide by the 2 replicas"):
        training.train(
            synthetic_config(tmp_path, batch_size=33, devices=["/cpu:0", "/cpu:1"]), verbose=0
        )


def test_resume_refuses_other_settings(tmp_path):
    training.train(synthetic_config(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="other settings.*mode"):
        training.train(synthetic_config(tmp_path, mode="bnn"), verbose=0)
    # more epochs would bend the cosine schedule: refused, saying what to do
    with pytest.raises(ValueError, match=r"planned for --epochs 1.*Rerun with --epochs 1.*--weights"):
        training.train(synthetic_config(tmp_path, epochs=2), verbose=0)


def test_resume_with_more_epochs_continues_a_constant_schedule(tmp_path):
    training.train(synthetic_config(tmp_path, schedule="constant"), verbose=0)
    report = training.train(synthetic_config(tmp_path, epochs=2, schedule="constant"), verbose=0)
    assert report["resumed_from_epoch"] == 1
    assert report["optimizer_steps"] == 2 * report["plan"]["steps_per_epoch"]
    assert [int(r["epoch"]) for r in read_history(tmp_path / "run" / "history.csv")] == [0, 1]


def _cli(*args):
    return [sys.executable, "-m", "xnor_larq.cli", *args]


def _subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


def test_kill_minus_9_in_epoch_2_then_rerun_resumes(tmp_path):
    output = tmp_path / "run"
    command = _cli(
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--output-dir",
        str(output),
        "--seed",
        "1",
        "--save-every-steps",
        "10",
    )
    process = subprocess.Popen(
        command, env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    history = output / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if history.exists() and len(read_history(history)) >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    time.sleep(0.5)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "report.json").exists()
    finished = len(read_history(history))
    assert finished < 3
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(output / "checkpoints"))
    saved_step = int(latest.rsplit("-", 1)[1])
    steps_per_epoch = 2048 // 16
    assert saved_step >= finished * steps_per_epoch

    rerun = subprocess.run(
        command, env=_subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # it resumes from the last step checkpoint: only the steps after it are lost
    assert f"Resuming {output} after epoch {saved_step // steps_per_epoch}" in rerun.stdout
    assert f"(global step {saved_step} of {3 * steps_per_epoch})" in rerun.stdout
    assert [int(r["epoch"]) for r in read_history(history)] == [0, 1, 2]
    report = json.loads((output / "report.json").read_text())
    assert report["epochs"] == 3 and report["resumed_from_step"] == saved_step
    assert report["optimizer_steps"] == report["optimizer_iterations"] == 3 * steps_per_epoch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_on_localhost_finish_an_epoch(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    output = tmp_path / "run"
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                _cli(
                    "train",
                    "--strategy",
                    "multi-worker",
                    "--dataset",
                    "synthetic",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "32",
                    "--train-subset",
                    "256",
                    "--output-dir",
                    str(output),
                ),
                env=_subprocess_env(TF_CONFIG=json.dumps(tf_config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=400) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["replicas"] == 2
    assert [int(r["epoch"]) for r in read_history(output / "history.csv")] == [0]


def test_multi_worker_without_tf_config_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.train(synthetic_config(tmp_path, strategy="multi-worker"), verbose=0)


@pytest.mark.skipif(
    mnist.find_idx_dir("fashion_mnist") is None,
    reason="Fashion-MNIST is not installed (apt-get install "
    "dataset-fashion-mnist, or put the idx files in ~/.keras/datasets)",
)
def test_short_real_fashion_mnist_run_reaches_80_percent(tmp_path):
    report = training.train(
        training.TrainConfig(epochs=2, train_subset=20000, output_dir=str(tmp_path / "fm")),
        verbose=0,
    )
    assert report["test_accuracy"] >= 0.80, report["test_accuracy"]


@pytest.mark.parametrize("width", [8, 16])
def test_width_reaches_the_model(width):
    config = training.TrainConfig(model="small_cnn", width=width)
    config.validate()
    model = training.build_model(config, num_classes=10, input_shape=(28, 28, 1))
    assert model.get_layer("float_conv").filters == width // 2
    binary = [layer for layer in model.layers if hasattr(layer, "input_quantizer")]
    assert binary[0].filters == width and binary[1].filters == 2 * width


@pytest.mark.parametrize("model", ["small_cnn", "nin"])
def test_bn_momentum_reaches_every_batch_norm(model):
    config = training.TrainConfig(model=model, bn_momentum=0.99)
    config.validate()
    built = training.build_model(config, num_classes=10, input_shape=(28, 28, 1))
    norms = [layer for layer in built.layers if "BatchNormalization" in type(layer).__name__]
    assert norms and all(layer.momentum == pytest.approx(0.99) for layer in norms)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"width": 0}, "--width must be a positive integer. Received: 0"),
        ({"width": 64, "model": "nin"}, "--width is not an option of model 'nin'"),
        ({"bn_momentum": 1.0}, r"--bn-momentum must be in \[0, 1\). Received: 1.0"),
        ({"bn_momentum": 0.99, "model": "zoo:XNORNet"}, "--bn-momentum is not an option"),
    ],
)
def test_width_and_bn_momentum_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**overrides).validate()
