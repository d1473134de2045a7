"""Benchmarks run end to end on a tiny budget (their numbers come from real runs)."""

import json

import pytest

from xnor_larq.benchmarks import layer_speed, shift_bnn


def test_layer_speed_runs_and_reports_ratios(tmp_path, capsys):
    path = tmp_path / "speed.json"
    report = layer_speed.main(
        ["--shapes", "imagenet", "--batch-size", "2", "--repeats", "1", "--json", str(path)]
    )
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(report))
    result = saved["results"][0]
    assert set(result["median_step_s"]) == {"xnor_k", "xnor_no_k", "larq_magnitude_aware", "float"}
    assert result["ratio_xnor_k_over_larq"] == (
        result["median_step_s"]["xnor_k"] / result["median_step_s"]["larq_magnitude_aware"]
    )
    assert "K cost over Larq" in capsys.readouterr().out
    assert saved["machine"]["cores"] >= 1


def test_shift_bnn_benchmark_runs_every_setting(tmp_path):
    runs, summary = shift_bnn.run(
        epochs=1,
        seeds=[0],
        dataset="synthetic",
        output_dir=tmp_path,
        train_subset=64,
        batch_size=32,
    )
    assert [r["setting"] for r in runs] == list(shift_bnn.SETTINGS)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    assert set(summary) == set(shift_bnn.SETTINGS)


def test_bench_entry_point_writes_json_and_the_document(tmp_path, capsys):
    from xnor_larq import cli

    results, doc = tmp_path / "results", tmp_path / "docs" / "RESULTS.md"
    common = ["bench", "--results-dir", str(results), "--doc", str(doc)]
    assert (
        cli.main(
            [
                *common,
                "accuracy",
                "--dataset",
                "synthetic",
                "--epochs",
                "1",
                "--train-subset",
                "64",
                "--batch-size",
                "32",
                "--settings",
                "fp",
                "xnor_k",
                "xnor_no_k",
                "--k-seeds",
                "0",
                "--output-dir",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                *common,
                "speed",
                "--layer-shapes",
                "imagenet",
                "--layer-batch-size",
                "2",
                "--models",
                "small_cnn",
                "--model-batch-size",
                "4",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    assert cli.main([*common, "size", "--files", "small_cnn"]) == 0
    accuracy = json.loads((results / "accuracy.json").read_text())
    speed = json.loads((results / "speed.json").read_text())
    size = json.loads((results / "size.json").read_text())
    assert {r["setting"] for r in accuracy["runs"]} == {"fp", "xnor_k", "xnor_no_k"}
    assert accuracy["machine"]["cores"] >= 1 and "--epochs 1" in accuracy["command"]
    assert {r["kind"] for r in speed["models"]} == {"train", "inference"}
    assert {r["model"] for r in size["models"]} >= {"small_cnn", "alexnet", "googlenet"}
    for r in size["models"]:
        assert r["binary_layers_compression"] == 32.0  # 1 bit against 32
    small = next(r for r in size["models"] if r["model"] == "small_cnn")
    assert small["lce_file_bytes"] < small["float32_tflite_bytes"]
    assert "Larq Compute Engine file" in doc.read_text()

    text = doc.read_text()
    fp = accuracy["summary"]["fp"]["mean"] * 100
    assert f"| full precision | {fp:.2f}% |" in text
    for png in ("accuracy.png", "learning_curves.png", "step_time.png"):
        assert (results / png).stat().st_size > 0 and f"results/{png}" in text

    # The table follows the JSON, not the other way round.
    accuracy["summary"]["fp"]["mean"] = 0.12345
    (results / "accuracy.json").write_text(json.dumps(accuracy))
    assert cli.main([*common, "report"]) == 0
    assert "| full precision | 12.35% |" in doc.read_text()


def test_accuracy_update_reruns_only_the_named_settings(tmp_path):
    from xnor_larq.benchmarks import accuracy

    path = tmp_path / "accuracy.json"
    budget = ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "64"]
    budget += ["--batch-size", "32", "--k-seeds", "0", "--json", str(path)]
    accuracy.main([*budget, "--settings", "fp", "bnn", "--output-dir", str(tmp_path / "a")])
    first = json.loads(path.read_text())
    assert (first["budget"]["width"], first["budget"]["augment"]) == (32, "none")
    # a file written before these were options merges as width 32, no augmentation, ...
    for option in ("width", "augment", "weight_clip", "bn_momentum"):
        del first["budget"][option]
    path.write_text(json.dumps(first))
    accuracy.main([*budget, "--settings", "bnn", "--update", "--output-dir", str(tmp_path / "b")])
    second = json.loads(path.read_text())
    assert [r["setting"] for r in second["runs"]] == ["fp", "bnn"]
    assert second["runs"][0] == {**first["runs"][0], "command": first["command"]}
    assert second["runs"][1]["command"] == second["command"] != first["command"]
    assert second["earlier_commands"] == [first["command"]]
    assert second["summary"]["bnn"]["mean"] == second["runs"][1]["test_accuracy"]
    with pytest.raises(SystemExit):  # another budget cannot be merged
        accuracy.main([*budget, "--settings", "bnn", "--update", "--lr", "0.01"])
    for other in (["--width", "16"], ["--bn-momentum", "0.99"], ["--weight-clip", "2"]):
        with pytest.raises(SystemExit):
            accuracy.main([*budget, "--settings", "bnn", "--update", *other])

    # The longer-budget table is rendered from its own file, with every command.
    from xnor_larq.benchmarks import report

    (tmp_path / "accuracy_long.json").write_text(path.read_text())
    path.unlink()
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "## Longer budget" in text and "## Accuracy on Fashion-MNIST" not in text
    assert "(width 32)" in text and "augmentation: none" in text
    assert f"- `{first['command']}`" in text and f"- `{second['command']}`" in text
    bnn = second["summary"]["bnn"]["mean"] * 100
    assert f"| BNN | {bnn:.2f}% |" in text


def test_accuracy_bench_records_weight_clip_none_and_bn_momentum(tmp_path):
    from xnor_larq.benchmarks import accuracy

    path = tmp_path / "probe.json"
    budget = ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "32"]
    budget += ["--batch-size", "32", "--k-seeds", "0", "--settings", "xnor_k"]
    budget += ["--weight-clip", "none", "--bn-momentum", "0.5", "--json", str(path)]
    accuracy.main([*budget, "--output-dir", str(tmp_path / "runs")])
    recorded = json.loads(path.read_text())["budget"]
    assert (recorded["weight_clip"], recorded["bn_momentum"]) == (None, 0.5)
    config = json.loads((tmp_path / "runs" / "xnor_k-seed0" / "config.json").read_text())
    assert (config["weight_clip"], config["bn_momentum"]) == (None, 0.5)


def test_probe_table_lists_what_each_probe_changed(tmp_path):
    from xnor_larq.benchmarks import report

    def result(budget, accuracy, command):
        run = {"setting": "xnor_k", "seed": 0, "test_accuracy": accuracy}
        return {
            "budget": budget,
            "command": command,
            "runs": [run | {"val_accuracy_per_epoch": [0.5, accuracy]}],
        }

    reference = result({"lr": 0.001, "epochs": 3}, 0.8, "first")
    reference["runs"].append({"setting": "fp", "seed": 0, "test_accuracy": 0.9})
    probes = {"probe_b.json": ({"lr": 0.003, "epochs": 3, "bn_momentum": 0.99}, 0.85, "b")}
    probes["probe_a.json"] = ({"lr": 0.003, "epochs": 3}, 0.875, "a")
    for name, args in probes.items():
        (tmp_path / name).write_text(json.dumps(result(*args)))
    rows = [line for line in report._probe_section(tmp_path, reference) if line.startswith("| ")]
    assert rows[1:] == [
        "| none | 80.00% | 1 | 90.00% | +10.00 | 50.00, 80.00 (seed 0) | `first` |",
        "| lr 0.003 | 87.50% | 1 | – | – | 50.00, 87.50 (seed 0) | `a` |",
        "| lr 0.003, bn momentum 0.99 | 85.00% | 1 | – | – | 50.00, 85.00 (seed 0) | `b` |",
    ]
    assert report._probe_section(tmp_path / "none", reference) == []


def test_inference_bench_writes_json_and_its_table(tmp_path):
    from xnor_larq import cli

    results, doc = tmp_path / "results", tmp_path / "RESULTS.md"
    arguments = ["bench", "--results-dir", str(results), "--doc", str(doc), "inference"]
    options = ["--layers", "conv_14x14x256", "--models", "small_cnn"]
    assert (
        cli.main(
            [
                *arguments,
                *options,
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--large-repeats",
                "1",
                "--popcount-rounds",
                "1",
            ]
        )  # fmt: skip
        == 0
    )
    fast = json.loads((results / "inference.json").read_text())
    assert [(r["name"], r["batch_size"]) for r in fast["rows"]] == [
        ("conv_14x14x256", 1),
        ("conv_14x14x256", 2),
        ("small_cnn", 1),
        ("small_cnn", 2),
    ]
    for r in fast["rows"]:
        assert set(r["speedup_of_compiled"]) == {"compiled", "tf_float", "tflite_float", "lce"}
        assert r["speedup_of_compiled"]["compiled"] == 1.0
    latency = fast["rows"][0]["latency_ms"]["compiled"]
    assert f"| layer conv_14x14x256 | 1 | ms per image | {latency:,.2f} (×1.0) |" in doc.read_text()
    # the CPU's microarchitecture (LLVM's name, as numba compiles for it) is recorded and shown
    import llvmlite.binding as llvm

    assert fast["machine"]["cpu_microarchitecture"] == llvm.get_host_cpu_name()
    assert f"({llvm.get_host_cpu_name()})" in doc.read_text()
    from xnor_larq import simd
    from xnor_larq.benchmarks.inference import POPCOUNT_SHAPES

    popcount = fast["popcount_phase"]
    assert [(r["words"], r["outputs"]) for r in popcount] == (
        list(POPCOUNT_SHAPES) if simd.AVAILABLE else []
    )
    for r in popcount:
        ns = r["ns_per_word_product"]
        assert r["simd_speedup"] == pytest.approx(ns["portable"] / ns["simd"])
        row = f"| {r['words']} | {r['outputs']} | {ns['portable']:.3f} ns | {ns['simd']:.3f} ns |"
        assert row in doc.read_text()
    # the GEMM ceiling: both rates measured, their ratio recorded and shown
    ceiling = fast["gemm_ceiling"]
    g = ceiling["gmacs_per_s"]
    assert (ceiling["rows"], ceiling["depth"], ceiling["outputs"]) == (4096, 1152, 128)
    assert g["binary"] > 0 and g["float"] > 0
    assert ceiling["binary_over_float"] == pytest.approx(g["binary"] / g["float"])
    assert f"×{ceiling['binary_over_float']:.1f}." in doc.read_text()


def test_pipeline_bench_times_every_variant_and_renders(tmp_path):
    from xnor_larq.benchmarks import pipeline, report

    path = tmp_path / "pipeline.json"
    result = pipeline.main(
        ["--images", "8", "--height", "60", "--width", "80", "--image-size", "32",
         "--batch-size", "4", "--repeats", "1", "--json", str(path)]
    )
    assert [r["variant"] for r in result["variants"]] == list(pipeline.VARIANTS)
    by_name = {r["variant"]: r for r in result["variants"]}
    # uint8 out is a quarter of float32's bytes
    assert by_name["crop-window decode, uint8"]["bytes_per_image_out"] * 4 == (
        by_name["full decode, float32"]["bytes_per_image_out"]
    ) == 32 * 32 * 3 * 4
    assert all(r["images_per_s_one_core"] > 0 for r in result["variants"])
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "ImageNet input pipeline" in text and "crop-window decode, uint8" in text


def test_throughput_bench_reports_per_replica_rates_and_scaling(tmp_path):
    from xnor_larq.benchmarks import report, throughput

    path = tmp_path / "throughput.json"
    result = throughput.main(
        ["--models", "small_cnn", "--modes", "fp", "xnor", "--steps", "2", "--warmup", "1",
         "--repeats", "1", "--batch-per-replica", "8", "--json", str(path)]
    )
    assert result["devices"] == ["/cpu:0", "/cpu:1"]
    xnor = next(r for r in result["rows"] if r["mode"] == "xnor")
    assert xnor["cells"]["float32, N replicas"]["replicas"] == 2
    assert "float32 + XLA, 1 replica" in xnor["cells"]
    assert xnor["scaling_efficiency"] == pytest.approx(
        xnor["cells"]["float32, N replicas"]["images_per_s_per_replica"]
        / xnor["cells"]["float32, 1 replica"]["images_per_s_per_replica"]
    )
    text = report.render(tmp_path, tmp_path / "RESULTS.md")
    assert "Training throughput" in text and "scaling efficiency" in text
