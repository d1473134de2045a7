"""The training path behind ``xnor-larq train``: strategy, data, model, fit, report.

Everything a run writes goes to its output folder:

- ``config.json``: the settings (a rerun with other settings is refused);
- ``checkpoints/``: model and optimizer after every finished epoch;
- ``history.csv``: one row per finished epoch, exactly once across resumes;
- ``tensorboard/``: TensorBoard logs;
- ``model.keras``: the trained model; ``report.json``: the final report.

A run killed at any moment and started again with the same command resumes
from its last finished epoch and ends with the same number of epochs.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import larq as lq
import tensorflow as tf

from . import data as data_lib
from .models import BUILDERS, get_builder

STRATEGIES = ("mirrored", "multi-worker", "one-device")
OPTIMIZERS = ("adam", "sgd", "bop", "shift_adamax", "adamax")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    """Settings of one run; field names match the CLI's flags."""

    model: str = "small_cnn"
    dataset: str = "fashion_mnist"
    mode: str | None = "xnor"
    input_scaling: bool | None = None
    stochastic: bool | str = False
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    batch_norm: str = "standard"
    schedule: str = "cosine"
    weight_clip: float | None = 1.0
    bn_momentum: float | None = None
    augment: str | None = None
    width: int | None = None
    train_subset: int = 0
    image_size: int = 224
    seed: int = 0
    strategy: str = "mirrored"
    data_dir: str | None = None
    output_dir: str = "runs/default"
    weights: str | None = None
    devices: list = field(default_factory=list)

    # settings that may change between a run and its resumption
    RESUMABLE_CHANGES = ("epochs", "data_dir", "output_dir", "devices")

    def validate(self):
        def check(ok, message):
            if not ok:
                raise ValueError(message)

        for name in ("epochs", "batch_size") + (("width",) if self.width is not None else ()):
            value = getattr(self, name)
            check(
                isinstance(value, int) and value >= 1,
                f"--{name.replace('_', '-')} must be a positive integer. Received: {value!r}",
            )
        check(self.lr > 0, f"--lr must be positive. Received: {self.lr!r}")
        check(
            self.train_subset >= 0,
            f"--train-subset must be 0 (all) or positive. Received: {self.train_subset}",
        )
        check(
            self.optimizer in OPTIMIZERS,
            f"--optimizer must be one of {OPTIMIZERS}. Received: {self.optimizer!r}",
        )
        check(
            self.schedule in SCHEDULES,
            f"--schedule must be one of {SCHEDULES}. Received: {self.schedule!r}",
        )
        check(
            self.strategy in STRATEGIES,
            f"--strategy must be one of {STRATEGIES}. Received: {self.strategy!r}",
        )
        check(
            self.dataset in data_lib.DATASETS,
            f"--dataset must be one of {data_lib.DATASETS}. Received: {self.dataset!r}",
        )
        check(
            self.batch_norm in ("standard", "shift"),
            f"--batch-norm must be standard or shift. Received: {self.batch_norm!r}",
        )
        check(
            not (self.batch_norm == "shift" and self.model.startswith("zoo:")),
            "--batch-norm shift needs one of our model builders, not a Larq Zoo model",
        )
        check(
            self.weight_clip is None or self.weight_clip > 0,
            f"--weight-clip must be positive. Received: {self.weight_clip!r}",
        )
        check(
            self.bn_momentum is None or 0 <= self.bn_momentum < 1,
            f"--bn-momentum must be in [0, 1). Received: {self.bn_momentum!r}",
        )
        builder = get_builder(self.model)  # unknown model: lists the choices
        for option in ("width", "bn_momentum"):
            if getattr(self, option) is not None and not _takes(builder, option):
                with_it = [n for n, b in BUILDERS.items() if _takes(b, option)]
                flag = "--" + option.replace("_", "-")
                raise ValueError(
                    f"{flag} is not an option of model {self.model!r}; the models that "
                    f"take it are {', '.join(with_it)}"
                )


def _takes(builder, option) -> bool:
    return option in inspect.signature(builder).parameters


def make_strategy(name: str, devices=None) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs (or the given devices), MultiWorkerMirroredStrategy
    from TF_CONFIG, or one device."""
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multi-worker reads the cluster from the TF_CONFIG "
                "environment variable, which is not set. Example for worker 0 of two: "
                'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\''
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "one-device":
        device = (
            devices[0]
            if devices
            else ("/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0")
        )
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        cpu_only = (
            all("cpu" in d.lower() for d in devices)
            if devices
            else not tf.config.list_logical_devices("GPU")
        )
        # On CPUs the default cross-device ops are collectives whose instance keys
        # clash when a process builds a second strategy (shape-mismatch aborts);
        # reducing to one device is as fast there and safe.
        cross_device_ops = tf.distribute.ReductionToOneDevice() if cpu_only else None
        return tf.distribute.MirroredStrategy(devices or None, cross_device_ops=cross_device_ops)
    raise ValueError(f"--strategy must be one of {STRATEGIES}. Received: {name!r}")


def make_optimizer(name: str, learning_rate):
    """Adam (the paper's choice), SGD with Nesterov momentum, Larq's Bop for the
    binary weights with Adam for the rest (through CaseOptimizer), BNN's
    shift-based AdaMax, or Keras's AdaMax (its standard twin)."""
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "shift_adamax":
        from .optimizers import ShiftAdaMax

        return ShiftAdaMax(learning_rate)
    if name == "adamax":
        return tf.keras.optimizers.Adamax(learning_rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "bop":
        # Larq's CaseOptimizer and Bop are built on Keras's legacy optimizer base.
        return lq.optimizers.CaseOptimizer(
            (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop()),
            default_optimizer=tf.keras.optimizers.legacy.Adam(learning_rate),
        )
    raise ValueError(f"--optimizer must be one of {OPTIMIZERS}. Received: {name!r}")


def learning_rate_schedule(name: str, initial: float, total_steps: int):
    if name == "constant":
        return initial
    if name == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(initial, max(total_steps, 1))
    if name == "step":
        boundaries = [max(int(total_steps * 0.5), 1), max(int(total_steps * 0.75), 2)]
        return tf.keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [initial, initial * 0.1, initial * 0.01]
        )
    raise ValueError(f"--schedule must be one of {SCHEDULES}. Received: {name!r}")


def model_report(model) -> dict:
    """Parameters, binarized-MAC ratio and size from Larq's model profile."""
    profile = lq.models.ModelProfile(model)
    macs = profile.op_count("mac")
    return {
        "parameters": int(model.count_params()),
        "binary_parameters": int(profile.weight_count(bitwidth=1)),
        "macs": int(macs),
        "binarized_mac_ratio": float(profile.op_count("mac", 1) / macs) if macs else 0.0,
        "model_size_bytes": float(profile.memory / 8),
        "float32_size_bytes": float(profile.fp_equivalent_memory / 8),
    }


def write_json(path, content):
    """Write atomically: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str))
    tmp.replace(path)


class EpochHistory(tf.keras.callbacks.Callback):
    """A CSV row per finished epoch, flushed to disk; on resume, rows of epochs
    that are about to run again are dropped first, so each epoch appears once."""

    def __init__(self, path, initial_epoch):
        super().__init__()
        self.path = Path(path)
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < self.initial_epoch]
        self._rows = rows
        self._write()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["wall_time"] = time.time()
        self._rows.append(row)
        self._write()

    def _write(self):
        keys = []
        for row in self._rows:
            keys += [k for k in row if k not in keys]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys or ["epoch"])
            writer.writeheader()
            writer.writerows(self._rows)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """Saves model, optimizer and the epoch counter after every finished epoch."""

    def __init__(self, manager, epoch_variable):
        super().__init__()
        self.manager = manager
        self.epoch_variable = epoch_variable

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_variable.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _check_resumable(config: TrainConfig, path: Path):
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    current = asdict(config)
    changed = {
        k: (saved.get(k), v)
        for k, v in current.items()
        if k not in TrainConfig.RESUMABLE_CHANGES and saved.get(k) != v
    }
    if changed:
        details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"{config.output_dir} holds a run with other settings ({details}). "
            "Use a new --output-dir, or delete that folder to start over."
        )


def build_model(config: TrainConfig, num_classes, input_shape):
    builder = get_builder(config.model)
    kwargs = dict(num_classes=num_classes, input_shape=input_shape)
    if config.model.startswith("zoo:"):
        kwargs.update(
            mode=None if config.mode in (None, "xnor") else config.mode, weights=config.weights
        )
    else:
        kwargs.update(
            mode=config.mode or "xnor",
            input_scaling=config.input_scaling,
            stochastic=config.stochastic,
            batch_norm=config.batch_norm,
        )
        if config.mode != "larq":  # Larq's baseline clips at 1, as Larq does
            kwargs["weight_clip"] = config.weight_clip
        if config.stochastic:
            kwargs["seed"] = config.seed
        if config.width is not None:
            kwargs["width"] = config.width
        if config.bn_momentum is not None:
            kwargs["bn_momentum"] = config.bn_momentum
    model = builder(**kwargs)
    if config.weights and not config.model.startswith("zoo:"):
        model.load_weights(config.weights)
    return model


def train(config: TrainConfig, verbose=None) -> dict:
    """Train (or resume) the run described by ``config``; return its report."""
    config.validate()
    tf.keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy, config.devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} (the global batch) must divide by the "
            f"{replicas} replicas in sync; use a multiple of {replicas}."
        )
    chief = _is_chief(strategy)
    output = Path(config.output_dir)
    if not chief:  # other workers write to a private scratch folder
        output = output / ".workers" / f"worker-{strategy.cluster_resolver.task_id}"
    output.mkdir(parents=True, exist_ok=True)
    _check_resumable(config, output / "config.json")
    write_json(output / "config.json", asdict(config))

    spec = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        seed=config.seed,
        train_subset=config.train_subset,
        augment=config.augment,
        image_size=config.image_size,
    )
    steps_per_epoch = (spec.train_size // config.batch_size) if spec.train_size else None
    total_steps = config.epochs * (steps_per_epoch or 1000)

    with strategy.scope():
        model = build_model(config, spec.num_classes, spec.input_shape)
        optimizer = make_optimizer(
            config.optimizer, learning_rate_schedule(config.schedule, config.lr, total_steps)
        )
        model.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        epoch_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_variable)
    manager = tf.train.CheckpointManager(checkpoint, str(output / "checkpoints"), max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
    initial_epoch = int(epoch_variable.numpy())
    if initial_epoch:
        print(f"Resuming {output} after epoch {initial_epoch} of {config.epochs}")

    callbacks = [
        EpochHistory(output / "history.csv", initial_epoch),
        EpochCheckpoint(manager, epoch_variable),
        tf.keras.callbacks.TensorBoard(str(output / "tensorboard")),
    ]
    if verbose is None:
        verbose = 1 if os.isatty(1) else 2
    start = time.perf_counter()
    if initial_epoch < config.epochs:
        model.fit(
            spec.train,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            validation_data=spec.test,
            callbacks=callbacks,
            verbose=verbose,
        )
    wall_time = time.perf_counter() - start
    loss, accuracy = model.evaluate(spec.test, verbose=0)

    report = {
        "model": config.model,
        "dataset": config.dataset,
        "mode": config.mode,
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        "epochs": config.epochs,
        "resumed_from_epoch": initial_epoch,
        "wall_time_s": wall_time,
        "devices": list(strategy.extended.worker_devices),
        "replicas": replicas,
        "tensorflow": tf.__version__,
        "larq": lq.__version__,
        "config": asdict(config),
        **model_report(model),
    }
    # Every worker saves (saving may need all of them); others into their scratch.
    model.save(output / "model.keras")
    write_json(output / "report.json", report)
    return report


def evaluate(model_path, config: TrainConfig) -> dict:
    """Test accuracy of a saved model on ``config.dataset``'s test split."""
    if not Path(model_path).exists():
        raise FileNotFoundError(f"model file {model_path} not found")
    model = tf.keras.models.load_model(model_path)
    spec = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        image_size=config.image_size,
    )
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, accuracy = model.evaluate(spec.test, verbose=0)
    return {
        "model_file": str(model_path),
        "dataset": config.dataset,
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
        **model_report(model),
    }
