"""Standard vs shift-based BatchNorm/AdaMax on the small BNN (Fashion-MNIST).

Trains the small CNN in ``bnn`` mode with the same budget under three
settings — Keras BN + Adam, Keras BN + AdaMax, shift BN + shift AdaMax — for
each seed, and reports test accuracy per run and mean ± spread per setting::

    python -m xnor_larq.benchmarks.shift_bnn --epochs 2 --seeds 0 1 --json shift.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

SETTINGS = {
    "bn+adam": {"batch_norm": "standard", "optimizer": "adam"},
    "bn+adamax": {"batch_norm": "standard", "optimizer": "adamax"},
    "shift_bn+shift_adamax": {"batch_norm": "shift", "optimizer": "shift_adamax"},
}


def run(
    epochs,
    seeds,
    dataset,
    output_dir,
    train_subset=0,
    lr=1e-3,
    batch_size=128,
    settings=tuple(SETTINGS),
):
    from xnor_larq.training import TrainConfig, train

    runs = []
    for seed in seeds:
        for name in settings:
            config = TrainConfig(
                model="small_cnn",
                mode="bnn",
                dataset=dataset,
                epochs=epochs,
                seed=seed,
                lr=lr,
                batch_size=batch_size,
                train_subset=train_subset,
                output_dir=str(Path(output_dir) / f"{name}-seed{seed}"),
                **SETTINGS[name],
            )
            report = train(config, verbose=2)
            runs.append(
                {
                    "setting": name,
                    "seed": seed,
                    "test_accuracy": report["test_accuracy"],
                    "wall_time_s": report["wall_time_s"],
                }
            )
            print(
                f"{name:<24} seed {seed}: test accuracy {report['test_accuracy']:.4f}", flush=True
            )
    summary = {}
    for name in settings:
        accuracies = [r["test_accuracy"] for r in runs if r["setting"] == name]
        summary[name] = {
            "mean": statistics.mean(accuracies),
            "spread": (max(accuracies) - min(accuracies)) / 2,
            "runs": len(accuracies),
        }
    return runs, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subset", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--output-dir", default="runs/shift_bnn")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    runs, summary = run(
        args.epochs,
        args.seeds,
        args.dataset,
        args.output_dir,
        args.train_subset,
        args.lr,
        args.batch_size,
    )
    print("\nsetting                  test accuracy (mean ± half-range)")
    for name, s in summary.items():
        print(f"{name:<24} {s['mean'] * 100:6.2f}% ± {s['spread'] * 100:.2f}  ({s['runs']} seeds)")
    from xnor_larq.benchmarks._common import finish

    return finish(
        "shift_bnn",
        "xnor_larq.benchmarks.shift_bnn",
        argv,
        args.json,
        settings={k: SETTINGS[k] for k in summary},
        epochs=args.epochs,
        runs=runs,
        summary=summary,
    )


if __name__ == "__main__":
    import xnor_larq  # noqa: F401

    main()
