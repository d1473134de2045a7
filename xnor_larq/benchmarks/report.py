"""Regenerate ``docs/RESULTS.md`` and its plots from the JSON results.

Every table and number in the document comes from the JSON files written by
the benchmarks (``accuracy.json``, ``shift_bnn.json``, ``speed.json``,
``size.json``, ``inference.json``, ``pipeline.json``, ``throughput.json``) in the
results folder; nothing is typed by hand::

    python -m xnor_larq.benchmarks.report --results-dir docs/results --doc docs/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

NAMES = {
    "fp": "full precision",
    "bwn": "BWN",
    "xnor_k": "XNOR-Net (K on)",
    "xnor_no_k": "XNOR-Net (K off)",
    "bnn": "BNN",
    "bnn_stochastic": "BNN (stochastic activations)",
    "larq_baseline": "Larq QuantConv2D (magnitude_aware_sign)",
}


def _load(results_dir, name):
    path = Path(results_dir) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(result):
    m = result["machine"]
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    arch = f" ({m['cpu_microarchitecture']})" if m.get("cpu_microarchitecture") else ""
    return (
        f"{m['cpu']}{arch}, {m['cores']} cores, {gpus}; TensorFlow {m['tensorflow']}, "
        f"Larq {m['larq']}, Python {m['python']}"
    )


def _plots(results_dir, accuracy, speed):
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no plots (matplotlib is missing: pip install 'xnor_larq[bench]')")
        return []

    written = []
    if accuracy:
        summary = accuracy["summary"]
        names = list(summary)
        fig, ax = plt.subplots(figsize=(8, 4))
        means = [summary[n]["mean"] * 100 for n in names]
        errors = [summary[n]["std"] * 100 for n in names]
        ax.bar(range(len(names)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(
            range(len(names)), [NAMES.get(n, n) for n in names], rotation=25, ha="right", fontsize=8
        )
        ax.set_ylim(min(means) - 5, 100)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Fashion-MNIST, small CNN, same budget")
        fig.tight_layout()
        fig.savefig(Path(results_dir) / "accuracy.png", dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(7, 4))
        for run in accuracy["runs"]:
            curve = [a * 100 for a in run["val_accuracy_per_epoch"]]
            ax.plot(
                range(1, len(curve) + 1),
                curve,
                marker="o",
                label=f"{NAMES.get(run['setting'], run['setting'])} (seed {run['seed']})",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
        ax.set_title("Learning curves")
        fig.tight_layout()
        fig.savefig(Path(results_dir) / "learning_curves.png", dpi=100)
        plt.close(fig)
        written += ["accuracy.png", "learning_curves.png"]
    if speed:
        fig, ax = plt.subplots(figsize=(7, 4))
        layers = speed["layers"]
        kinds = list(layers[0]["median_step_s"])
        width = 0.8 / len(kinds)
        for i, kind in enumerate(kinds):
            ax.bar(
                [j + i * width for j in range(len(layers))],
                [r["median_step_s"][kind] * 1000 for r in layers],
                width,
                label=kind,
            )
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(layers))],
            [
                f"{r['shape']} {r['input'][1]}x{r['input'][2]}x{r['input'][3]}->{r['filters']}"
                for r in layers
            ],
        )
        ax.set_ylabel("ms per training step")
        ax.legend(fontsize=8)
        ax.set_title("One training step of a 3x3 conv layer")
        fig.tight_layout()
        fig.savefig(Path(results_dir) / "step_time.png", dpi=100)
        plt.close(fig)
        written.append("step_time.png")
    return written


def _inference_section(fast):
    methods = list(fast["rows"][0]["speedup_of_compiled"])
    out = [
        "## CPU inference: bitpacked XNOR-popcount (`xnor_larq.inference`)",
        "",
        f"Machine: {_machine(fast)}; {fast['settings']['threads']} threads everywhere. "
        "`compiled` is the XNOR model through `xnor_larq.inference.compile`; "
        "`tf_float` and `tflite_float` its full-precision twin; `lce` the XNOR model "
        "on Larq Compute Engine's x86 interpreter. Each cell: the figure, and in "
        "brackets how many times faster `compiled` is.",
        "",
        f"Command: `{fast['command']}`",
        "",
        "| what | batch | unit | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for r in fast["rows"]:
        values = r.get("latency_ms") or r["images_per_s"]
        unit = "ms per image" if "latency_ms" in r else "images/s"
        cells = " | ".join(
            f"{values[m]:,.2f} (×{r['speedup_of_compiled'][m]:.1f})" for m in methods
        )
        out.append(f"| {r['kind']} {r['name']} | {r['batch_size']} | {unit} | {cells} |")
    out.append("")
    if fast.get("popcount_phase"):
        out += [
            "The binary convolution's popcount phase alone, one thread, ns per "
            "64-bit xor-popcount (medians of "
            f"{fast['settings'].get('popcount_rounds', '?')} interleaved rounds): the "
            "compiler's portable loop against `xnor_larq.simd` (AVX2 and scalar "
            "`popcnt` at once; the word loop unrolled for fields of up to 9 words):",
            "",
            "| words per field | outputs | portable | simd | simd faster by |",
            "|---|---|---|---|---|",
        ]
        for r in fast["popcount_phase"]:
            ns = r["ns_per_word_product"]
            out.append(
                f"| {r['words']} | {r['outputs']} | {ns['portable']:.3f} ns | "
                f"{ns['simd']:.3f} ns | ×{r['simd_speedup']:.2f} |"
            )
        out.append("")
    ceiling = fast.get("gemm_ceiling")
    if ceiling:
        g = ceiling["gmacs_per_s"]
        out += [
            "The ceiling of a binary layer against a float one here: two bare GEMMs of "
            f"{ceiling['rows']}×{ceiling['depth']}×{ceiling['outputs']} (the 32×32×128 layer's, "
            f"4 images), {ceiling['threads']} threads, no packing, gather or epilogue: "
            f"xnor_larq's xor-popcount kernel {g['binary']:.0f} G binary multiply-accumulates/s, "
            f"float TFLite's fully connected layer (XNNPACK) {g['float']:.0f} G/s: "
            f"×{ceiling['binary_over_float']:.1f}.",
            "",
        ]
    return out


# further accuracy files (same format), in the order tuning tried them
TUNING_RUNS = {
    "accuracy_long": "Longer budget (tuning toward the 92% goal)",
    "accuracy_wide": "Wider model (tuning toward the 92% goal)",
    "accuracy_tuned": "Wider model, higher learning rate (tuning toward the 92% goal)",
}


def _accuracy_section(accuracy, title):
    if not accuracy:
        return []
    from xnor_larq.benchmarks.accuracy import full_budget

    b = full_budget(accuracy["budget"])
    commands = [*accuracy.get("earlier_commands", []), accuracy["command"]]
    out = [
        f"## {title}",
        "",
        f"Model `{b['model']}` (width {b['width']}), {b['epochs']} epochs, batch "
        f"{b['batch_size']}, {b['optimizer']} lr {b['lr']} ({b['schedule']}), augmentation: "
        f"{b['augment']}, weight clip {b['weight_clip']}, BN momentum {b['bn_momentum']}, "
        f"training images: {b['train_subset'] or 'all 60000'}. Machine: {_machine(accuracy)}.",
        "",
        *(
            [f"Command: `{commands[0]}`"]
            if len(commands) == 1
            else ["Commands (later ones reran some settings):", ""] + [f"- `{c}`" for c in commands]
        ),
        "",
        "| setting | test accuracy (mean) | std | seeds | runs |",
        "|---|---|---|---|---|",
    ]
    for name, s in accuracy["summary"].items():
        runs = ", ".join(
            f"{r['test_accuracy'] * 100:.2f}" for r in accuracy["runs"] if r["setting"] == name
        )
        out.append(
            f"| {NAMES.get(name, name)} | {s['mean'] * 100:.2f}% | "
            f"{s['std'] * 100:.2f} | {s['seeds']} | {runs} |"
        )
    summary = accuracy["summary"]
    if "xnor_k" in summary and "xnor_no_k" in summary:
        diff = (summary["xnor_k"]["mean"] - summary["xnor_no_k"]["mean"]) * 100
        out += [
            "",
            f"K on minus K off: {diff:+.2f} points (std of the pair: "
            f"{summary['xnor_k']['std'] * 100:.2f} / "
            f"{summary['xnor_no_k']['std'] * 100:.2f}).",
        ]
    if "xnor_k" in summary and "fp" in summary:
        gap = (summary["fp"]["mean"] - summary["xnor_k"]["mean"]) * 100
        out += ["", f"Full precision minus XNOR-Net (K on): {gap:+.2f} points."]
    if "xnor_k" in summary and "larq_baseline" in summary:
        lead = (summary["xnor_k"]["mean"] - summary["larq_baseline"]["mean"]) * 100
        out += ["", f"XNOR-Net (K on) minus Larq's baseline: {lead:+.2f} points."]
    return out + [""]


def _probe_section(results_dir, reference):
    """A row per ``probe_*.json``: what it changed from ``reference``'s budget; XNOR's result."""
    probes = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("probe_*.json"))]
    if not probes or not reference:
        return []
    from xnor_larq.benchmarks.accuracy import full_budget

    base = full_budget(reference["budget"])
    out = [
        "## Tuning probes (short runs, against the first table's budget)",
        "",
        "XNOR-Net with K (and, where run, its full-precision twin), in short runs to pick "
        "what to spend full runs on; each row says what its budget changed from the first "
        "table's. The first row is the first table's result.",
        "",
        "| changes | XNOR-Net (K on) | seeds | full precision | gap | "
        "XNOR's validation accuracy per epoch | command |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("none", reference)] + [
        (
            ", ".join(
                f"{key.replace('_', ' ')} {value}"
                for key, value in full_budget(probe["budget"]).items()
                if base.get(key) != value
            )
            or "none",
            probe,
        )
        for probe in probes
    ]
    for changes, result in rows:
        runs = [r for r in result["runs"] if r["setting"] == "xnor_k"]
        if not runs:
            continue
        mean = statistics.mean(r["test_accuracy"] for r in runs) * 100
        fp = [r["test_accuracy"] * 100 for r in result["runs"] if r["setting"] == "fp"]
        fp_mean = f"{statistics.mean(fp):.2f}%" if fp else "–"
        gap = f"{statistics.mean(fp) - mean:+.2f}" if fp else "–"
        curve = ", ".join(f"{v * 100:.2f}" for v in runs[0]["val_accuracy_per_epoch"])
        out.append(
            f"| {changes} | {mean:.2f}% | {len(runs)} | {fp_mean} | {gap} | "
            f"{curve} (seed {runs[0]['seed']}) | `{runs[0].get('command', result['command'])}` |"
        )
    return out + [""]


def _pipeline_section(result):
    settings = result["settings"]
    out = [
        "## ImageNet input pipeline (`xnor-larq bench pipeline`)",
        "",
        f"Training pipeline over {settings['images']} generated "
        f"{settings['source_width']}×{settings['source_height']} JPEGs (median "
        f"{settings['median_jpeg_bytes'] / 1024:.0f} KiB), random-resized crop to "
        f"{settings['image_size']}, batch {settings['batch_size']}, median of "
        f"{settings['repeats']} passes. Machine: {_machine(result)}.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"| variant | images/s, one core | images/s, all cores | out per image | cores for "
        f"{settings['gpu_images_per_s']:.0f} images/s |",
        "|---|---|---|---|---|",
    ]
    for r in result["variants"]:
        out.append(
            f"| {r['variant']} | {r['images_per_s_one_core']:.0f} | "
            f"{r['images_per_s_all_cores']:.0f} | {r['bytes_per_image_out'] / 1024:.0f} KiB | "
            f"{r['cores_for_gpu_rate']:.1f} |"
        )
    out += [
        "",
        f"Crop-window decode with uint8 out against full decode with float32 out: "
        f"×{result['speedup_per_core']:.2f} images/s per core, ×{result['bytes_ratio']:.0f} "
        f"fewer bytes to the device. The GPU rate ({settings['gpu_images_per_s']:.0f} "
        "images/s) is a stated assumption, not a measurement.",
        "",
    ]
    return out


def _throughput_section(result):
    settings = list(result["rows"][0]["cells"]) if result["rows"] else []
    out = [
        "## Training throughput (`xnor-larq bench throughput`)",
        "",
        f"Images/s per replica, on {', '.join(result['devices'])}; batch "
        f"{result['settings']['batch_per_replica']} per replica, median of "
        f"{result['settings']['repeats']} windows of {result['settings']['steps']} steps. "
        f"Machine: {_machine(result)}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | mode | " + " | ".join(settings) + " | scaling efficiency |",
        "|---|---|" + "---|" * len(settings) + "---|",
    ]
    for r in result["rows"]:
        cost = r.get("cost_over_fp", {})
        cells = " | ".join(
            f"{r['cells'][s]['images_per_s_per_replica']:,.0f}"
            + (f" (×{cost[s]:.2f} of fp's time)" if s in cost and r["mode"] != "fp" else "")
            if s in r["cells"]
            else "–"
            for s in settings
        )
        out.append(f"| {r['model']} | {r['mode']} | {cells} | {r['scaling_efficiency']:.2f} |")
    out += [
        "",
        "Scaling efficiency: images/s per replica with N replicas over that with one. "
        "Virtual CPU replicas share the same cores, so on a CPU it measures the "
        "distribution overhead, not added compute; on GPUs it is the real figure.",
        "",
    ]
    return out


def render(results_dir="docs/results", doc="docs/RESULTS.md"):
    """Write the results document from the JSON files; returns its text."""
    results_dir, doc = Path(results_dir), Path(doc)
    accuracy, shift = _load(results_dir, "accuracy"), _load(results_dir, "shift_bnn")
    speed, size = _load(results_dir, "speed"), _load(results_dir, "size")
    fast = _load(results_dir, "inference")
    plots = _plots(results_dir, accuracy, speed)
    link = os.path.relpath(results_dir, doc.parent)
    out = [
        "# Results",
        "",
        "Generated by `xnor-larq bench report` from the JSON files in "
        f"`{link}/`; rerun a suite (`xnor-larq bench accuracy|speed|size|shift-bnn`) to "
        "update it.",
        "",
    ]
    out += _accuracy_section(accuracy, "Accuracy on Fashion-MNIST")
    out += _probe_section(results_dir, accuracy)
    for name, title in TUNING_RUNS.items():
        out += _accuracy_section(_load(results_dir, name), title)
    if shift:
        out += [
            "## Shift-based BatchNorm and AdaMax (BNN, small CNN)",
            "",
            f"{shift['epochs']} epochs per run. Machine: {_machine(shift)}.",
            "",
            f"Command: `{shift['command']}`",
            "",
            "| setting | test accuracy (mean) | ± half-range | seeds |",
            "|---|---|---|---|",
        ]
        for name, s in shift["summary"].items():
            out.append(
                f"| {name} | {s['mean'] * 100:.2f}% | {s['spread'] * 100:.2f} | {s['runs']} |"
            )
        out += [""]
    if speed:
        out += [
            "## Speed",
            "",
            f"Machine: {_machine(speed)}.",
            "",
            f"Command: `{speed['command']}`",
            "",
            "One training step (forward, backward, update) of a 3×3 conv, median:",
            "",
            "| shape | XNOR (K) | XNOR (no K) | Larq magnitude_aware_sign | float | "
            "K over Larq | XNOR over float |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in speed["layers"]:
            t = r["median_step_s"]
            out.append(
                f"| {'x'.join(map(str, r['input']))}→{r['filters']} | "
                f"{t['xnor_k'] * 1000:.1f} ms | {t['xnor_no_k'] * 1000:.1f} ms | "
                f"{t['larq_magnitude_aware'] * 1000:.1f} ms | {t['float'] * 1000:.1f} ms"
                f" | ×{r['ratio_xnor_k_over_larq']:.3f} | ×{r['ratio_xnor_k_over_float']:.3f} |"
            )
        out += [
            "",
            "Whole models, images/s (ratio to the float twin):",
            "",
            "| model | kind | " + " | ".join(speed["models"][0]["images_per_s"]) + " |",
            "|---|---|" + "---|" * len(speed["models"][0]["images_per_s"]),
        ]
        for r in speed["models"]:
            cells = " | ".join(
                f"{v:,.0f} (×{r['ratio_to_fp'][m]:.2f})" for m, v in r["images_per_s"].items()
            )
            out.append(f"| {r['model']} | {r['kind']} (batch {r['batch_size']}) | {cells} |")
        out += [
            "",
            "TensorFlow runs binary layers as float convolutions on a CPU, so "
            "binarization brings no speed here; K's cost is the column to read.",
            "",
        ]
    if fast:
        out += _inference_section(fast)
    pipeline = _load(results_dir, "pipeline")
    if pipeline:
        out += _pipeline_section(pipeline)
    throughput = _load(results_dir, "throughput")
    if throughput:
        out += _throughput_section(throughput)
    if size:
        out += [
            "## Size",
            "",
            "Parameter memory from `lq.models.summary` (binary weights as bits), against float32.",
            "",
            "| model | mode | parameters | binary params | memory | float32 | ratio | "
            "binary layers ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in size["models"]:
            out.append(
                f"| {r['model']} | {r['mode']} | {r['parameters']:,} | "
                f"{r['binary_parameters']:,} | {r['memory_bytes'] / 2**20:.2f} MiB | "
                f"{r['float32_bytes'] / 2**20:.2f} MiB | ×{r['compression']:.1f} | "
                f"×{r['binary_layers_compression']:.1f} |"
            )
        files = [r for r in size["models"] if "lce_file_bytes" in r]
        if files:
            out += [
                "",
                "Exported files (`xnor-larq export`'s conversion):",
                "",
                "| model | mode | Larq Compute Engine file | float32 TFLite file | ratio |",
                "|---|---|---|---|---|",
            ]
            for r in files:
                out.append(
                    f"| {r['model']} | {r['mode']} | {r['lce_file_bytes'] / 2**20:.2f} MiB"
                    f" | {r['float32_tflite_bytes'] / 2**20:.2f} MiB | "
                    f"×{r['file_ratio']:.1f} |"
                )
        out += [""]
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({link}/{p})" for p in plots] + [""]
    text = "\n".join(out)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="docs/results")
    parser.add_argument("--doc", default="docs/RESULTS.md")
    args = parser.parse_args(argv)
    render(args.results_dir, args.doc)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
