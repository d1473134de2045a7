"""Accuracy ablation: one small CNN, one training budget, every setting.

Settings: full precision, BWN, XNOR with K, XNOR without K, BNN
(deterministic and stochastic) and, as the baseline a Larq user would pick,
Larq's ``QuantConv2D`` with ``magnitude_aware_sign`` weights and ``ste_sign``
inputs. The XNOR K on/off pair runs with several seeds so that the K
difference can be told from noise::

    python -m xnor_larq.benchmarks.accuracy --epochs 3 --json docs/results/accuracy.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

SETTINGS = {
    "fp": {"mode": "fp"},
    "bwn": {"mode": "bwn"},
    "xnor_k": {"mode": "xnor"},
    "xnor_no_k": {"mode": "xnor", "input_scaling": False},
    "bnn": {"mode": "bnn"},
    # stochastic activations (the setting); stochastic weights need
    # BinaryNet's per-layer learning-rate scaling to train (see modes.py)
    "bnn_stochastic": {"mode": "bnn", "stochastic": "inputs"},
    "larq_baseline": {"mode": "larq"},
}
MULTI_SEED = ("xnor_k", "xnor_no_k")
#: budget entries that results written before they were options were measured with
BUDGET_DEFAULTS = {"width": 32, "augment": "none", "weight_clip": 1.0, "bn_momentum": 0.9}


def full_budget(budget: dict) -> dict:
    """``budget`` with the entries an older result file lacks, at the values it ran with."""
    return {**budget, **{k: v for k, v in BUDGET_DEFAULTS.items() if k not in budget}}


def run(
    *,
    epochs,
    seeds,
    extra_seeds,
    dataset="fashion_mnist",
    output_dir="runs/accuracy",
    train_subset=0,
    batch_size=128,
    lr=1e-3,
    schedule="cosine",
    settings=tuple(SETTINGS),
    model="small_cnn",
    width=None,
    augment=None,
    weight_clip=1.0,
    bn_momentum=None,
):
    from xnor_larq.training import TrainConfig, train

    runs = []
    for name in settings:
        for seed in extra_seeds if name in MULTI_SEED else seeds:
            output = Path(output_dir) / f"{name}-seed{seed}"
            config = TrainConfig(
                model=model,
                dataset=dataset,
                epochs=epochs,
                seed=seed,
                batch_size=batch_size,
                lr=lr,
                schedule=schedule,
                train_subset=train_subset,
                width=width,
                augment=augment,
                weight_clip=weight_clip,
                bn_momentum=bn_momentum,
                output_dir=str(output),
                **SETTINGS[name],
            )
            report = train(config, verbose=2)
            with open(output / "history.csv", newline="") as f:
                curve = [float(r["val_accuracy"]) for r in csv.DictReader(f)]
            runs.append(
                {
                    "setting": name,
                    "seed": seed,
                    "test_accuracy": report["test_accuracy"],
                    "val_accuracy_per_epoch": curve,
                    "wall_time_s": report["wall_time_s"],
                    "binarized_mac_ratio": report["binarized_mac_ratio"],
                }
            )
            print(f"{name:<16} seed {seed}: {report['test_accuracy']:.4f}", flush=True)
    return runs, summarize(runs)


def summarize(runs):
    summary = {}
    for name in dict.fromkeys(r["setting"] for r in runs):
        accuracies = [r["test_accuracy"] for r in runs if r["setting"] == name]
        summary[name] = {
            "mean": statistics.mean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min": min(accuracies),
            "max": max(accuracies),
            "seeds": len(accuracies),
        }
    return summary


def main(argv=None):
    from xnor_larq.cli import _optional_float

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--k-seeds", type=int, nargs="+", default=[0, 1], help="seeds for the XNOR K on/off pair"
    )
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument(
        "--width", type=int, default=32, help="small_cnn's width (channels of its first layers)"
    )
    parser.add_argument(
        "--augment",
        default="none",
        choices=["none", "shift"],
        help="shift: pad by 2 and crop at random (training images only)",
    )
    parser.add_argument(
        "--weight-clip",
        type=_optional_float,
        default=1.0,
        help="clip latent binary weights to [-v, v], or none (Larq's baseline always clips at 1)",
    )
    parser.add_argument(
        "--bn-momentum", type=float, default=0.9, help="momentum of every BatchNormalization"
    )
    parser.add_argument("--output-dir", default="runs/accuracy")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument(
        "--update",
        action="store_true",
        help="rerun only --settings and replace their runs in the existing --json file "
        "(same budget required); the other settings' runs are kept",
    )
    args = parser.parse_args(argv)
    if args.update and not (args.json and Path(args.json).exists()):
        parser.error(f"--update needs an existing --json file. Received: --json {args.json}")

    budget = {
        "model": "small_cnn",
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": args.schedule,
        "train_subset": args.train_subset,
        "optimizer": "adam",
        "width": args.width,
        "augment": args.augment,
        "weight_clip": args.weight_clip,
        "bn_momentum": args.bn_momentum,
    }
    previous = None
    if args.update:
        previous = json.loads(Path(args.json).read_text())
        # results written before width/augment were options used these
        previous_budget = full_budget(previous.get("budget", {}))
        if previous_budget != budget:
            parser.error(
                f"--update: {args.json} was measured with budget {previous.get('budget')}, "
                f"this run's is {budget}; rerun every setting instead"
            )
    runs, summary = run(
        epochs=args.epochs,
        seeds=args.seeds,
        extra_seeds=args.k_seeds,
        dataset=args.dataset,
        output_dir=args.output_dir,
        train_subset=args.train_subset,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        settings=args.settings,
        width=args.width,
        augment="" if args.augment == "none" else args.augment,
        weight_clip=args.weight_clip,
        bn_momentum=args.bn_momentum,
    )
    for name, s in summary.items():
        print(f"{name:<16} {s['mean'] * 100:6.2f}% ± {s['std'] * 100:.2f} ({s['seeds']} seeds)")
    from xnor_larq.benchmarks._common import command_line, finish

    this_command = command_line("xnor_larq.benchmarks.accuracy", argv)
    for r in runs:
        r["command"] = this_command
    earlier_commands = []
    if previous is not None:
        kept = [
            {"command": previous["command"], **r}
            for r in previous["runs"]
            if r["setting"] not in args.settings
        ]
        order = list(dict.fromkeys([r["setting"] for r in previous["runs"]] + args.settings))
        runs = sorted(kept + runs, key=lambda r: order.index(r["setting"]))
        summary = summarize(runs)
        earlier_commands = previous.get("earlier_commands", []) + [previous["command"]]
    return finish(
        "accuracy",
        "xnor_larq.benchmarks.accuracy",
        argv,
        args.json,
        budget=budget,
        runs=runs,
        summary=summary,
        earlier_commands=earlier_commands,
    )


if __name__ == "__main__":
    import xnor_larq  # noqa: F401

    main()
