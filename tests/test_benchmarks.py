"""Benchmarks run end to end on a tiny budget (their numbers come from real runs)."""

import json

from xnor_larq.benchmarks import layer_speed, shift_bnn


def test_layer_speed_runs_and_reports_ratios(tmp_path, capsys):
    path = tmp_path / "speed.json"
    report = layer_speed.main(["--shapes", "imagenet", "--batch-size", "2", "--repeats", "1",
                               "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(report))
    result = saved["results"][0]
    assert set(result["median_step_s"]) == {"xnor_k", "xnor_no_k", "larq_magnitude_aware", "float"}
    assert result["ratio_xnor_k_over_larq"] == (
        result["median_step_s"]["xnor_k"] / result["median_step_s"]["larq_magnitude_aware"])
    assert "K cost over Larq" in capsys.readouterr().out
    assert saved["machine"]["cores"] >= 1


def test_shift_bnn_benchmark_runs_every_setting(tmp_path):
    runs, summary = shift_bnn.run(epochs=1, seeds=[0], dataset="synthetic",
                                  output_dir=tmp_path, train_subset=64, batch_size=32)
    assert [r["setting"] for r in runs] == list(shift_bnn.SETTINGS)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    assert set(summary) == set(shift_bnn.SETTINGS)
