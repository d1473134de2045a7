"""The command line: clear errors for bad input, evaluate, bench."""

import json
import os

import pytest

from xnor_larq import cli


def run(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_model_lists_the_choices(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "alexnett", "--output-dir", str(tmp_path))
    assert code == 2
    assert "alexnett" in err and "small_cnn" in err and "zoo:XNORNet" in err


def test_missing_dataset_names_places_and_fix(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(
        capsys,
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(empty),
        "--output-dir",
        str(tmp_path / "run"),
    )
    assert code == 2
    assert str(empty) in err and "keras-home" in err and "--data-dir" in err


def test_corrupt_file_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    from xnor_larq.data import mnist

    for images_file, labels_file in mnist.FILES.values():
        (tmp_path / images_file).write_bytes(b"garbage")
        (tmp_path / labels_file).write_bytes(b"garbage")
    code, _, err = run(
        capsys,
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path),
        "--output-dir",
        str(tmp_path / "run"),
    )
    assert code == 2 and "train-images-idx3-ubyte.gz" in err


def test_batch_must_divide_by_replicas(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        "--dataset",
        "synthetic",
        "--batch-size",
        "33",
        "--devices",
        "/cpu:0",
        "/cpu:1",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 2 and "multiple of 2" in err


def test_bad_numbers_are_refused(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--epochs", "0", "--output-dir", str(tmp_path))
    assert code == 2 and "--epochs" in err
    with pytest.raises(SystemExit):
        cli.main(["train", "--mode", "xnr"])


def test_train_then_evaluate(capsys, tmp_path):
    output = tmp_path / "run"
    code, out, _ = run(
        capsys,
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-subset",
        "128",
        "--mode",
        "bnn",
        "--stochastic",
        "--optimizer",
        "bop",
        "--devices",
        "/cpu:0",
        "/cpu:1",
        "--output-dir",
        str(output),
    )
    assert code == 0 and "test accuracy:" in out
    trained = json.loads((output / "report.json").read_text())
    code, out, _ = run(capsys, "evaluate", str(output / "model.keras"), "--dataset", "synthetic")
    assert code == 0
    evaluated = json.loads(out)
    assert evaluated["test_accuracy"] == pytest.approx(trained["test_accuracy"])
    code, _, err = run(capsys, "evaluate", str(tmp_path / "nothing.keras"))
    assert code == 2 and "nothing.keras" in err

    code, out, err = run(
        capsys,
        "export",
        str(output / "model.keras"),
        "--output",
        str(tmp_path / "model.tflite"),
        "--samples",
        "8",
    )
    assert code == 0, err
    assert "smaller" in out and (tmp_path / "model.tflite").stat().st_size > 0
    code, _, err = run(
        capsys, "export", str(tmp_path / "nothing.keras"), "--output", str(tmp_path / "x.tflite")
    )
    assert code == 2 and "nothing.keras" in err


def test_shift_batch_norm_and_shift_adamax_from_the_cli(capsys, tmp_path):
    output = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-subset",
        "128",
        "--mode",
        "bnn",
        "--batch-norm",
        "shift",
        "--optimizer",
        "shift_adamax",
        "--devices",
        "/cpu:0",
        "/cpu:1",
        "--output-dir",
        str(output),
    )
    assert code == 0, err
    config = json.loads((output / "config.json").read_text())
    assert config["batch_norm"] == "shift" and config["optimizer"] == "shift_adamax"


def test_stochastic_flag_takes_an_optional_target(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["train"]).stochastic is False
    assert parser.parse_args(["train", "--stochastic"]).stochastic == "both"
    assert parser.parse_args(["train", "--stochastic", "inputs"]).stochastic == "inputs"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--stochastic", "activations"])
    assert "invalid choice: 'activations'" in capsys.readouterr().err


def test_bench_refuses_its_own_json_flag(tmp_path):
    with pytest.raises(SystemExit, match="drop --json"):
        cli.main(["bench", "size", "--results-dir", str(tmp_path), "--json", "x.json"])


def test_the_command_line_is_quiet_unless_verbose(tmp_path):
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "xnor_larq.cli", "train", "--dataset", "synthetic",
         "--train-subset", "64", "--batch-size", "32", "--epochs", "1",
         "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    cpp_log = re.compile(r"^([EWI]\d{4} \d\d:\d\d|\d{4}-\d\d-\d\d [\d:.]+: [EWI] )", re.M)
    assert not cpp_log.search(result.stderr), result.stderr[:2000]
    assert "test accuracy:" in result.stdout
