"""Bad input and faults, one row per case: the exception type, a message that names
the argument or file (and the fix), and an output folder left as it was."""

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from formats import example, jpeg, write_cifar, write_idx, write_idx_dataset, write_image_folder

from xnor_larq import data, training
from xnor_larq.quantizers import ScaledSign, StochasticSign, scaled_sign, stochastic_sign

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def snapshot(folder):
    """Every file under ``folder`` with its size and mtime ({} if absent)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# --- each case: (prepare the data) -> config overrides ----------------------


def idx(tmp_path, rng, corrupt=None):
    folder = tmp_path / "idx"
    write_idx_dataset(folder, rng, num_train=40, num_test=8)
    if corrupt == "truncated":
        path = folder / "train-images-idx3-ubyte.gz"
        with gzip.open(path, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 40, 28, 28) + b"\0" * 100)
    elif corrupt == "magic":
        with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x12\x34\x56\x78" + b"\0" * 12)
    elif corrupt == "count":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    elif corrupt == "label":
        labels = np.zeros(40, np.uint8)
        labels[7] = 200
        write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    return dict(dataset="mnist", data_dir=str(folder), batch_size=8)


def cifar(tmp_path, rng, corrupt=None):
    folder, _ = write_cifar(tmp_path, "cifar10", rng, per_batch=8)
    path = folder / "data_batch_2"
    if corrupt == "malicious":
        with open(path, "wb") as f:
            pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
    elif corrupt == "shape":
        with open(path, "wb") as f:
            pickle.dump({b"data": np.zeros((8, 100), np.uint8), b"labels": [0] * 8}, f)
    elif corrupt == "label":
        with open(path, "wb") as f:
            pickle.dump({b"data": np.zeros((8, 3072), np.uint8), b"labels": [0] * 7 + [10]}, f)
    return dict(dataset="cifar10", data_dir=str(folder), batch_size=8)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/xnor_larq_pwned",))


def folder(tmp_path, rng, corrupt=None):
    root = tmp_path / "imagenet"
    write_image_folder(root, rng, classes=4, per_class=6, val_per_class=2, size=(16, 16))
    if corrupt == "empty class":
        (root / "train" / "n99999999").mkdir()
    elif corrupt == "not an image":
        (root / "train" / "n00000001" / "n00000001_0.JPEG").write_bytes(b"<html>404</html>")
    elif corrupt == "truncated jpeg":
        path = root / "train" / "n00000002" / "n00000002_3.JPEG"
        path.write_bytes(path.read_bytes()[:200])
    return dict(dataset="imagenet", data_dir=str(root), batch_size=8, image_size=16)


CASES = {
    # name: (data, corrupt, overrides, exception, message)
    "missing data dir": (None, None, dict(dataset="mnist", data_dir="/nonexistent/idx"),
                         data.DatasetNotFoundError, "--data-dir /nonexistent/idx does not exist"),
    "truncated idx": (idx, "truncated", {}, data.CorruptDataError,
                      "train-images-idx3-ubyte.gz.*truncated"),
    "wrong idx magic": (idx, "magic", {}, data.CorruptDataError,
                        "t10k-labels-idx1-ubyte.gz: not an idx file"),
    "idx count mismatch": (idx, "count", {}, data.CorruptDataError,
                           "train-labels-idx1-ubyte.gz: expected"),
    "idx label out of range": (idx, "label", {}, data.CorruptDataError,
                               r"train-labels-idx1-ubyte.gz: label 200 at index 7 is outside 0\.\.9"),
    "malicious pickle": (cifar, "malicious", {}, data.CorruptDataError,
                         "data_batch_2.*is not allowed"),
    "mis-shaped pickle": (cifar, "shape", {}, data.CorruptDataError,
                          r"data_batch_2: expected uint8 data of shape \(n, 3072\)"),
    "CIFAR label out of range": (cifar, "label", {}, data.CorruptDataError,
                                 r"data_batch_2: label 10 at index 7 is outside 0\.\.9"),
    "empty class folder": (folder, "empty class", {}, data.CorruptDataError,
                           "n99999999 hold no images"),
    "missing --weights": (idx, None, dict(weights="/nonexistent/w.h5"), FileNotFoundError,
                          "--weights /nonexistent/w.h5 not found"),
    "batch larger than the data": (idx, None, dict(batch_size=64), ValueError,
                                   "--batch-size 64 is larger than the 40 training images"),
    "--lr inf": (idx, None, dict(lr=float("inf")), ValueError,
                 "--lr must be a finite positive number. Received: inf"),
    "--width 1": (idx, None, dict(width=1), ValueError,
                  "--width must be at least 2 for small_cnn. Received: 1"),
    "--devices /gpu:9": (idx, None, dict(devices=["/gpu:9"]), ValueError,
                         "--devices: /gpu:9 is not a device here. Visible: /cpu:0"),
    "unknown model": (idx, None, dict(model="resnet99"), ValueError,
                      "Unknown model 'resnet99'. Choose one of"),
    "unknown mode": (idx, None, dict(mode="ternary"), ValueError, "`mode` must be one of"),
    "TFRecords with --train-subset": (None, None, {}, ValueError, "--train-subset needs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_start_leaves_the_output_folder_as_it_was(tmp_path, rng, home, case):
    make, corrupt, overrides, exception, message = CASES[case]
    settings = make(tmp_path, rng, corrupt) if make else {}
    if case == "TFRecords with --train-subset":
        from formats import write_tfrecords

        write_tfrecords(tmp_path / "records", rng, "train", shards=1, per_shard=8)
        settings = dict(dataset="imagenet", data_dir=str(tmp_path / "records"), train_subset=4,
                        batch_size=4)
    settings.update(overrides)
    output = tmp_path / "run"
    output.mkdir()
    (output / "notes.txt").write_text("the user's own file")
    before = snapshot(output)
    config = training.TrainConfig(epochs=1, output_dir=str(output), **settings)
    with pytest.raises(exception, match=message):
        training.train(config, verbose=0)
    assert snapshot(output) == before


def test_the_corrected_command_then_runs(tmp_path, rng, home):
    settings = idx(tmp_path, rng)
    output = tmp_path / "run"
    with pytest.raises(ValueError):
        training.train(training.TrainConfig(output_dir=str(output), lr=float("inf"), **settings))
    report = training.train(training.TrainConfig(epochs=1, output_dir=str(output), **settings),
                            verbose=0)
    assert report["optimizer_steps"] == 5


# --- errors met inside the pipeline, through the CLI: one line, exit 2 --------


def cli(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment.update(TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "xnor_larq.cli", *args], capture_output=True,
                          text=True, timeout=300, env=environment)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def train_args(settings, output):
    args = ["train", "--epochs", "1", "--output-dir", str(output)]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.mark.parametrize("corrupt,fragment", [
    ("not an image", "n00000001_0.JPEG"),
    ("truncated jpeg", "n00000002_3.JPEG"),
])
def test_a_bad_image_is_named(tmp_path, rng, home, corrupt, fragment):
    settings = folder(tmp_path, rng, corrupt)
    result = cli(*train_args({**settings, "width": 8}, tmp_path / "run"),
                 env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert_one_line_error(result, "bad data:", fragment)


def test_an_out_of_range_tfrecord_label_names_the_shard(tmp_path, rng, home):
    root = tmp_path / "records"
    root.mkdir()
    for split, labels in (("train", [5, 2000, 7, 1, 3, 4, 9, 8]), ("validation", [1, 2])):
        with tf.io.TFRecordWriter(str(root / f"{split}-00000-of-00001")) as writer:
            for label in labels:
                writer.write(example(jpeg((90, 90, 90), 16, 16), label))
    result = cli(*train_args(dict(dataset="imagenet", data_dir=root, image_size=16,
                                  batch_size=4, width=8), tmp_path / "run"),
                 env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert_one_line_error(result, "bad data:", "outside 0..999", "train-00000-of-00001")


@pytest.mark.parametrize("where", ["is a file", "under a file"])
def test_an_output_dir_that_cannot_be_a_folder(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    output = blocker if where == "is a file" else blocker / "run"
    result = cli("train", "--dataset", "synthetic", "--output-dir", str(output))
    assert_one_line_error(result, "--output-dir", str(blocker))
    assert blocker.read_text() == "a file"


def saved_model(tmp_path):
    from xnor_larq.models import small_cnn

    model = small_cnn(mode="xnor", width=8)
    path = tmp_path / "model.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("what", ["--weights", "evaluate"])
def test_a_corrupt_model_file_is_named(tmp_path, what):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"\x89HDF\r\n not really a model")
    if what == "--weights":
        result = cli("train", "--dataset", "synthetic", "--weights", str(bad),
                     "--output-dir", str(tmp_path / "run"))
        assert_one_line_error(result, "--weights", str(bad))
        assert not (tmp_path / "run").exists()
    else:
        result = cli("evaluate", str(bad), "--dataset", "synthetic")
        assert_one_line_error(result, str(bad), "not a Keras model file")


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    config = training.TrainConfig(dataset="synthetic", epochs=2, train_subset=128, batch_size=32,
                                  schedule="constant", output_dir=str(tmp_path / "run"))
    training.train(config, verbose=0)
    checkpoints = tmp_path / "run" / "checkpoints"
    data_file = next(checkpoints.glob("ckpt-8.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    (tmp_path / "run" / "report.json").unlink()
    capsys.readouterr()
    report = training.train(config, verbose=0)
    warning = capsys.readouterr().err
    assert "ckpt-8" in warning and "cannot be read" in warning
    assert report["resumed_from_step"] == 4  # the epoch-1 checkpoint
    assert report["optimizer_steps"] == 8


def test_export_to_a_folder_is_refused_and_leaves_nothing(tmp_path):
    pytest.importorskip("larq_compute_engine")
    model = saved_model(tmp_path)
    target = tmp_path / "out.tflite"
    target.mkdir()
    result = cli("export", str(model), "--output", str(target))
    assert_one_line_error(result, "--output", "is a folder")
    assert not list(tmp_path.glob("*.tmp")) and not list(target.iterdir())


# --- quantizers on integer tensors ---------------------------------------------


@pytest.mark.parametrize("quantize", [
    scaled_sign, stochastic_sign, ScaledSign(), StochasticSign(),
    lambda x: StochasticSign()(x, training=True),
], ids=["scaled_sign", "stochastic_sign", "ScaledSign", "StochasticSign", "StochasticSign-train"])
def test_quantizers_refuse_integer_inputs(quantize):
    with pytest.raises(TypeError, match=r"needs floating-point inputs. Received: dtype=int32.*tf.cast"):
        quantize(tf.constant([[1, -2], [3, 4]], tf.int32))


# --- compiled inference ----------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_and_keras():
    pytest.importorskip("numba")
    from xnor_larq import inference
    from xnor_larq.models import small_cnn

    tf.keras.utils.set_random_seed(0)
    model = small_cnn(mode="xnor", width=8)
    return inference.compile(model), model


@pytest.mark.parametrize("x,batch_size,message", [
    (np.float32(1.0), None, r"must have shape \(batch, 28, 28, 1\). Received: shape \(\)"),
    (np.zeros((28, 28, 1), np.float32), None, r"a single sample needs a batch axis"),
    (np.zeros((0, 28, 28, 1), np.float32), None, "empty batch"),
    (np.zeros((2, 28, 28, 1), np.float32), -1, "`batch_size` must be a positive integer"),
    (np.zeros((2, 28, 28, 1), np.float32), 0, "`batch_size` must be a positive integer"),
    (np.zeros((2, 30, 28, 1), np.float32), None,
     r"the input of model 'small_cnn_xnor' must have shape \(batch, 28, 28, 1\). "
     r"Received: shape \(2, 30, 28, 1\)"),
], ids=["scalar", "no batch axis", "empty", "batch_size -1", "batch_size 0", "wrong size"])
def test_compiled_predict_checks_its_input(compiled_and_keras, x, batch_size, message):
    compiled, _ = compiled_and_keras
    with pytest.raises(ValueError, match=message):
        compiled.predict(x, batch_size=batch_size)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_compiled_predict_gives_nan_for_non_finite_samples(compiled_and_keras, rng, value):
    compiled, model = compiled_and_keras
    x = rng.uniform(-1, 1, size=(3, 28, 28, 1)).astype(np.float32)
    x[1, 5, 5, 0] = value
    got = compiled.predict(x)
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()
    np.testing.assert_array_equal(got[[0, 2]], compiled.predict(x[[0, 2]]))
    assert np.isnan(model(x).numpy()[1]).all()  # Keras gives NaN there too
