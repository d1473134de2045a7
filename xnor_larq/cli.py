"""Command line: ``xnor-larq train`` and ``xnor-larq bench``.

``xnor-larq train`` with no arguments trains the small XNOR-Net CNN on
Fashion-MNIST (found locally, see ``xnor_larq.data.mnist``) and prints its test
accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _train(args):
    import xnor_larq  # noqa: F401
    import tensorflow as tf  # isort: skip

    from xnor_larq import training
    from xnor_larq.data import load_idx_dataset
    from xnor_larq.models import get_builder

    builder = get_builder(args.model)
    tf.keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_idx_dataset(args.dataset, args.data_dir)
    if args.train_subset:
        x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]
    if args.batch_size > len(x_train):
        raise SystemExit(
            f"--batch-size {args.batch_size} is larger than the {len(x_train)} training images"
        )
    train_data = training.image_pipeline(x_train, y_train, batch_size=args.batch_size,
                                         training=True, seed=args.seed)
    test_data = training.image_pipeline(x_test, y_test, batch_size=256, training=False)
    steps = args.epochs * (len(x_train) // args.batch_size)

    model = builder(mode=args.mode, num_classes=int(y_train.max()) + 1,
                    input_shape=(*x_train.shape[1:], 1))
    optimizer = training.make_optimizer(
        args.optimizer, training.learning_rate_schedule(args.schedule, args.lr, steps)
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    verbose = 1 if sys.stdout.isatty() else 2
    with training.Timer() as timer:
        model.fit(train_data, epochs=args.epochs, validation_data=test_data, verbose=verbose)
    _, accuracy = model.evaluate(test_data, verbose=0)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
    print(f"test accuracy: {accuracy:.4f}  ({args.model}, mode={args.mode}, "
          f"{args.epochs} epochs, {timer.seconds:.0f} s, devices: {devices or ['CPU']})")
    return accuracy


def build_parser():
    parser = argparse.ArgumentParser(prog="xnor-larq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and print its test accuracy")
    train.add_argument("--model", default="small_cnn")
    train.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    train.add_argument("--mode", default="xnor", choices=["fp", "bwn", "xnor", "bnn"])
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "bop"])
    train.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "step"])
    train.add_argument("--data-dir", default=None)
    train.add_argument("--train-subset", type=int, default=0,
                       help="use only the first N training images (0: all)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_train)

    bench = commands.add_parser("bench", help="benchmarks")
    bench.add_argument("suite", choices=["layer-speed"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    return parser


def _bench(args):
    from xnor_larq.benchmarks import layer_speed

    return layer_speed.main(args.rest)


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size", "train_subset"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "train_subset" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be positive. Received: {value}")
    args.func(args)


if __name__ == "__main__":
    main()
