"""Command line: ``xnor-larq train``, ``xnor-larq evaluate``, ``xnor-larq bench``.

``xnor-larq train`` with no arguments trains the small XNOR-Net CNN on
Fashion-MNIST (found locally: --data-dir, Keras's cache, then Debian's
dataset-fashion-mnist) and prints its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys



def _optional_float(text):
    return None if text.lower() == "none" else float(text)


def _add_common(parser):
    parser.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist, mnist, cifar10, cifar100, imagenet or synthetic",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the dataset's files (searched first)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="the global batch, split over the replicas"
    )
    parser.add_argument("--image-size", type=int, default=224, help="ImageNet crop size")


def build_parser():
    from xnor_larq.modes import STOCHASTIC_TARGETS
    from xnor_larq.training import LR_NOTE, OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES, TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="xnor-larq", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show TensorFlow's C++ log lines (hidden below errors by default)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) a model, print its test accuracy")
    train.add_argument(
        "--model",
        default=defaults.model,
        help="small_cnn, nin, binarynet_vgg, alexnet, resnet18, googlenet, "
        "or zoo:<LarqZooModel> (e.g. zoo:XNORNet)",
    )
    _add_common(train)
    train.add_argument(
        "--mode",
        default=defaults.mode,
        choices=["fp", "bwn", "xnor", "bnn", "larq"],
        help="larq: Larq's QuantConv2D with magnitude_aware_sign (baseline)",
    )
    scaling = train.add_mutually_exclusive_group()
    scaling.add_argument(
        "--input-scaling",
        dest="input_scaling",
        action="store_true",
        default=None,
        help="force XNOR-Net's K on",
    )
    scaling.add_argument(
        "--no-input-scaling",
        dest="input_scaling",
        action="store_false",
        help="turn K off (the ablation)",
    )
    train.add_argument(
        "--stochastic",
        nargs="?",
        const="both",
        default=False,
        choices=STOCHASTIC_TARGETS,
        help="BNN's stochastic binarization (with --mode bnn) of the inputs, the weights "
        "or both (the default when given without a value)",
    )
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--lr", type=float, default=defaults.lr, help=LR_NOTE)
    train.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS)
    train.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES)
    train.add_argument(
        "--batch-norm",
        default=defaults.batch_norm,
        choices=["standard", "shift"],
        help="Keras's BatchNormalization or BNN's shift-based one",
    )
    train.add_argument(
        "--weight-clip",
        type=_optional_float,
        default=defaults.weight_clip,
        help="clip latent binary weights to [-v, v] (none: no clip)",
    )
    train.add_argument(
        "--augment",
        default=None,
        choices=["none", "shift", "crop_flip", "inception"],
        help="default: crop_flip for CIFAR, inception (random-resized crop and flip) for "
        "ImageNet, none for the 28x28 sets",
    )
    train.add_argument(
        "--width",
        type=int,
        default=None,
        help="channels of the first binary layers (small_cnn: 32, binarynet_vgg: 128 by default)",
    )
    train.add_argument(
        "--bn-momentum",
        type=float,
        default=None,
        help="momentum of every BatchNormalization (our builders' default: 0.9)",
    )
    train.add_argument(
        "--train-subset", type=int, default=0, help="use only the first N training images (0: all)"
    )
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument(
        "--strategy",
        default=defaults.strategy,
        choices=STRATEGIES,
        help="mirrored: all local GPUs (or the CPU); multi-worker: "
        "MultiWorkerMirroredStrategy from TF_CONFIG",
    )
    train.add_argument(
        "--devices",
        nargs="+",
        default=[],
        help="devices for --strategy mirrored, e.g. /gpu:0 /gpu:1",
    )
    train.add_argument(
        "--output-dir",
        default=defaults.output_dir,
        help="checkpoints, history.csv, TensorBoard logs, model.keras and "
        "report.json; rerun the same command to resume",
    )
    train.add_argument("--weights", default=None, help="a local weights file to start from")
    recipe = train.add_argument_group("recipe")
    recipe.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="ImageNet TFRecords: the number of training records (else counted once, cached)",
    )
    recipe.add_argument(
        "--save-every-steps",
        type=int,
        default=defaults.save_every_steps,
        help="also checkpoint every N steps (0: at epoch ends only); a killed run resumes "
        "at the next batch after the last checkpoint",
    )
    recipe.add_argument(
        "--precision",
        default=defaults.precision,
        choices=list(PRECISIONS),
        help="float32, or mixed precision: bfloat16, float16 (with dynamic loss scaling)",
    )
    recipe.add_argument(
        "--jit-compile", action="store_true", help="compile the train step with XLA"
    )
    recipe.add_argument(
        "--warmup-epochs",
        type=float,
        default=defaults.warmup_epochs,
        help="linear learning-rate warm-up from 0, in epochs (fractions allowed)",
    )
    recipe.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="decoupled weight decay on kernels, latent binary weights included (pulls "
        "them towards 0: easier sign flips; for bwn/xnor a smaller alpha); not on BN or biases",
    )
    recipe.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    recipe.add_argument(
        "--clip-norm",
        type=_optional_float,
        default=defaults.clip_norm,
        help="clip the global gradient norm to this value (none: off)",
    )
    recipe.add_argument(
        "--validation-freq",
        type=int,
        default=defaults.validation_freq,
        help="validate every N epochs",
    )
    recipe.add_argument(
        "--steps-per-execution",
        type=int,
        default=defaults.steps_per_execution,
        help="train steps per call into the compiled step (fewer Python round trips)",
    )
    recipe.add_argument(
        "--bop-gamma",
        type=float,
        default=defaults.bop_gamma,
        help="Bop's adaptivity rate; it follows --schedule and --warmup-epochs as --lr does",
    )
    recipe.add_argument("--bop-threshold", type=float, default=defaults.bop_threshold)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("model_file", help="a model saved by `xnor-larq train` (.keras)")
    _add_common(evaluate)
    evaluate.set_defaults(func=_evaluate)

    export = commands.add_parser(
        "export", help="convert a saved model to a Larq Compute Engine .tflite file"
    )
    export.add_argument("model_file", help="a model saved by `xnor-larq train` (.keras)")
    export.add_argument("--output", required=True, help="the .tflite file to write")
    export.add_argument(
        "--samples",
        type=int,
        default=32,
        help="random inputs on which LCE is checked against Keras",
    )
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="largest allowed |LCE - Keras| on those inputs",
    )
    export.set_defaults(func=_export)

    bench = commands.add_parser(
        "bench",
        help="benchmarks: write JSON results and regenerate docs/RESULTS.md",
        description="Run a suite (its own options follow it; see `xnor-larq bench SUITE "
        "--help`), save its JSON in --results-dir and regenerate the document. "
        "`report` only regenerates the document; `layer-speed` only prints.",
    )
    bench.add_argument("--results-dir", default="docs/results")
    bench.add_argument("--doc", default="docs/RESULTS.md")
    bench.add_argument(
        "suite",
        choices=[
            "accuracy",
            "speed",
            "size",
            "shift-bnn",
            "inference",
            "pipeline",
            "throughput",
            "report",
            "layer-speed",
        ],
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _config_from_args(args):
    from xnor_larq.training import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    if values.get("augment") == "none":
        values["augment"] = ""
    return TrainConfig(**values)


def _train(args):
    from xnor_larq.training import train

    report = train(_config_from_args(args))
    print(
        f"test accuracy: {report['test_accuracy']:.4f}  ({report['model']}, "
        f"mode={report['mode']}, {report['epochs']} epochs, "
        f"{report['wall_time_s']:.0f} s of training, devices: {report['devices']})"
    )
    print(f"report: {os.path.join(args.output_dir, 'report.json')}")


def _evaluate(args):
    from xnor_larq.training import evaluate

    print(json.dumps(evaluate(args.model_file, _config_from_args(args)), indent=2))


def _export(args):
    from xnor_larq.export import export_tflite

    report = export_tflite(
        args.model_file, args.output, samples=args.samples, tolerance=args.tolerance
    )
    print(report.summary())


def _bench(args):
    from pathlib import Path

    from xnor_larq.benchmarks import (
        accuracy,
        layer_speed,
        pipeline,
        report,
        shift_bnn,
        size,
        speed,
        throughput,
    )
    from xnor_larq.benchmarks import inference as inference_bench

    if args.suite == "layer-speed":
        layer_speed.main(args.rest)
        return
    if args.suite != "report":
        suite = {
            "accuracy": accuracy,
            "speed": speed,
            "size": size,
            "shift-bnn": shift_bnn,
            "inference": inference_bench,
            "pipeline": pipeline,
            "throughput": throughput,
        }
        if "--json" in args.rest:
            raise SystemExit(
                "xnor-larq bench writes its JSON into --results-dir; drop --json "
                f"(or run python -m xnor_larq.benchmarks.{args.suite.replace('-', '_')} --json ...)"
            )
        path = Path(args.results_dir) / f"{args.suite.replace('-', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        suite[args.suite].main([*args.rest, "--json", str(path)])
    report.render(args.results_dir, args.doc)
    print(f"wrote {args.doc}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    import xnor_larq  # noqa: F401  (Keras 2 before TensorFlow; quiet, see _startup)
    from xnor_larq.data import CorruptDataError, DatasetNotFoundError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, DatasetNotFoundError, CorruptDataError, OSError) as error:
        # Expected failures (bad flags, files, folders): one line and exit 2. OSError
        # covers missing, unreadable and unwritable paths.
        print(f"xnor-larq {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        from xnor_larq.data.errors import BAD_DATA

        marker = f"[{BAD_DATA}"  # how tf.debugging.Assert prints our pipeline checks
        if marker in str(error):  # raised inside a tf.data pipeline (labels, images)
            text = str(error)
            message = text[text.index(marker) + 1 :].splitlines()[0]
            print(f"xnor-larq {args.command}: error: {message}", file=sys.stderr)
            return 2
        raise
    return 0


def _one_line(error) -> str:
    text = str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
