"""The training path behind ``xnor-larq train``: strategy, data, model, fit, report.

Everything a run writes goes to its output folder:

- ``config.json``: the settings (a rerun with other settings is refused);
- ``plan.json``: steps per epoch, total steps and the schedule they fix;
- ``checkpoints/``: model, optimizer and the global step after every finished
  epoch and, with ``save_every_steps``, every that many steps (the last two kept);
- ``history.csv``: one row per finished epoch, exactly once across resumes;
- ``tensorboard/``: TensorBoard logs;
- ``model.keras``: the trained model; ``report.json``: the final report.

A run killed at any moment and started again with the same command resumes
from its last checkpoint, mid-epoch included, at the very batch it would have
read next, and ends at the planned step count: ``epochs × steps_per_epoch``.
The learning-rate schedule is planned from the real number of steps (the
dataset's size, ``train_subset`` and the batch), so its final value falls on
the last step. A resume with another ``epochs`` is refused for a decaying
schedule (it would bend the plan), allowed for ``constant``.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import larq as lq
import tensorflow as tf

from . import data as data_lib
from .models import BUILDERS, get_builder
from .recipes import SCHEDULES, PlannedSchedule, SparseCrossEntropy

STRATEGIES = ("mirrored", "multi-worker", "one-device")
OPTIMIZERS = ("adam", "sgd", "bop", "shift_adamax", "adamax")
#: ``--precision`` names and the Keras mixed-precision policy of each.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
#: Optimizers on Keras's legacy base (Larq's Bop, our ShiftAdaMax): no decoupled
#: weight decay or global clipping there.
LEGACY_OPTIMIZERS = ("bop", "shift_adamax")
LR_NOTE = (
    "--lr is the learning rate of the global batch (all replicas together); it is "
    "not rescaled with the batch size. For the linear scaling rule pass lr * batch / 256."
)


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
    train_size: int | None = None
    save_every_steps: int = 0
    precision: str = "float32"
    jit_compile: bool = False
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    clip_norm: float | None = None
    validation_freq: int = 1
    steps_per_execution: int = 1
    bop_gamma: float = 1e-4
    bop_threshold: float = 1e-8

    # settings that may change between a run and its resumption (epochs: see
    # _check_resumable)
    RESUMABLE_CHANGES = (
        "epochs",
        "data_dir",
        "output_dir",
        "devices",
        "save_every_steps",
        "validation_freq",
        "steps_per_execution",
        "jit_compile",
    )

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
        check(
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
            f"--lr must be a finite positive number. Received: {self.lr!r}",
        )
        for name in ("save_every_steps",):
            value = getattr(self, name)
            check(
                isinstance(value, int) and value >= 0,
                f"--{name.replace('_', '-')} must be 0 (off) or a positive integer. "
                f"Received: {value!r}",
            )
        for name in ("validation_freq", "steps_per_execution"):
            value = getattr(self, name)
            check(
                isinstance(value, int) and value >= 1,
                f"--{name.replace('_', '-')} must be a positive integer. Received: {value!r}",
            )
        check(
            self.train_size is None or (isinstance(self.train_size, int) and self.train_size > 0),
            f"--train-size must be a positive integer. Received: {self.train_size!r}",
        )
        check(
            self.precision in PRECISIONS,
            f"--precision must be one of {tuple(PRECISIONS)}. Received: {self.precision!r}",
        )
        check(
            0 <= self.warmup_epochs < self.epochs if isinstance(self.epochs, int) else True,
            f"--warmup-epochs must be at least 0 and less than --epochs ({self.epochs}). "
            f"Received: {self.warmup_epochs!r}",
        )
        check(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            f"--weight-decay must be 0 or positive. Received: {self.weight_decay!r}",
        )
        check(
            0 <= self.label_smoothing < 1,
            f"--label-smoothing must be in [0, 1). Received: {self.label_smoothing!r}",
        )
        check(
            self.clip_norm is None or (self.clip_norm > 0 and math.isfinite(self.clip_norm)),
            f"--clip-norm must be positive (or none). Received: {self.clip_norm!r}",
        )
        for name in ("bop_gamma", "bop_threshold"):
            value = getattr(self, name)
            check(
                value > 0 and math.isfinite(value),
                f"--{name.replace('_', '-')} must be positive. Received: {value!r}",
            )
        if self.optimizer == "bop":
            check(
                self.mode in ("bnn", "larq") or self.model.startswith("zoo:"),
                f"--optimizer bop with --mode {self.mode}: Bop flips binary weights and "
                "drives every latent weight to +-1, so XNOR-Net's per-channel alpha "
                "(mean |W|) becomes 1 on every channel within a few steps and the scaled "
                "binary weights are lost. Use --mode bnn (or larq) with Bop, or a latent-"
                "weight optimizer (adam, sgd) for bwn/xnor.",
            )
        if self.optimizer in LEGACY_OPTIMIZERS:
            check(
                not self.weight_decay and self.clip_norm is None,
                f"--weight-decay and --clip-norm need a Keras optimizer (adam, sgd, adamax); "
                f"--optimizer {self.optimizer} is built on Keras's legacy base without them.",
            )
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
        minimum = MIN_WIDTH.get(self.model, 1)
        check(
            self.width is None or self.width >= minimum,
            f"--width must be at least {minimum} for {self.model}. Received: {self.width}",
        )
        for option in ("width", "bn_momentum"):
            if getattr(self, option) is not None and not _takes(builder, option):
                with_it = [n for n, b in BUILDERS.items() if _takes(b, option)]
                flag = "--" + option.replace("_", "-")
                raise ValueError(
                    f"{flag} is not an option of model {self.model!r}; the models that "
                    f"take it are {', '.join(with_it)}"
                )


#: Smallest --width each builder can build (small_cnn's float stem has width/2 filters).
MIN_WIDTH = {"small_cnn": 2}


def check_paths(config: TrainConfig):
    """The output folder can be made and written, and --weights exists: checked
    before any data is loaded or anything is written."""
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(
            f"--output-dir {output} is a file, not a folder; choose another path"
        )
    parent = output
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            f"--output-dir {output}: {parent} is a file, so no folder can be made under it"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"--output-dir {output}: {parent} is not writable; choose a folder you can write to"
        )
    if config.weights and not Path(config.weights).is_file():
        raise FileNotFoundError(f"--weights {config.weights} not found (or not a file)")


def check_devices(devices):
    """Every --devices entry names a device TensorFlow sees here."""
    if not devices:
        return
    specs = [tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()]
    known = {(spec.device_type, spec.device_index) for spec in specs}
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name)
        except ValueError as error:
            raise ValueError(f"--devices {name!r} is not a device name like /gpu:0 ({error})")
        key = ((spec.device_type or "").upper(), spec.device_index or 0)
        if key not in known:
            shown = ", ".join(f"/{t.lower()}:{i}" for t, i in sorted(known))
            raise ValueError(f"--devices: {name} is not a device here. Visible: {shown}")


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


def make_optimizer(
    name: str,
    learning_rate,
    *,
    weight_decay=0.0,
    clip_norm=None,
    bop_gamma=1e-4,
    bop_threshold=1e-8,
):
    """Adam (the paper's choice), SGD with Nesterov momentum, Larq's Bop for the
    binary weights with Adam for the rest (through CaseOptimizer), BNN's
    shift-based AdaMax, or Keras's AdaMax (its standard twin).

    ``learning_rate`` may be a schedule; with Bop, ``bop_gamma`` may be one too
    (Bop's γ plays the learning rate's part for the binary weights).
    ``weight_decay`` is decoupled (``w ← w − lr·wd·w`` each step, AdamW-style),
    on every kernel, latent binary weights included, and not on BatchNorm's
    β/γ or biases: on a latent weight it pulls the value towards 0, which makes
    sign flips easier and, for bwn/xnor, shrinks α = mean|W| (the next BN
    absorbs the scale). ``clip_norm`` clips the global gradient norm.
    """
    options = {}
    if weight_decay:
        options["weight_decay"] = weight_decay
    if clip_norm is not None:
        options["global_clipnorm"] = clip_norm
    if name == "adam":
        optimizer = tf.keras.optimizers.Adam(learning_rate, **options)
    elif name == "adamax":
        optimizer = tf.keras.optimizers.Adamax(learning_rate, **options)
    elif name == "sgd":
        optimizer = tf.keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, **options)
    elif name in LEGACY_OPTIMIZERS:
        if options:
            raise ValueError(
                f"--weight-decay and --clip-norm are not available with --optimizer {name}"
            )
        if name == "shift_adamax":
            from .optimizers import ShiftAdaMax

            return ShiftAdaMax(learning_rate)
        # Larq's CaseOptimizer and Bop are built on Keras's legacy optimizer base.
        return lq.optimizers.CaseOptimizer(
            (
                lq.optimizers.Bop.is_binary_variable,
                lq.optimizers.Bop(threshold=bop_threshold, gamma=bop_gamma),
            ),
            default_optimizer=tf.keras.optimizers.legacy.Adam(learning_rate),
        )
    else:
        raise ValueError(f"--optimizer must be one of {OPTIMIZERS}. Received: {name!r}")
    if weight_decay:
        optimizer.exclude_from_weight_decay(
            var_names=["gamma", "beta", "bias", "moving_mean", "moving_variance"]
        )
    return optimizer


def learning_rate_schedule(name: str, initial: float, total_steps: int, warmup_steps: int = 0):
    """The :class:`~xnor_larq.recipes.PlannedSchedule` of ``--schedule name``."""
    return PlannedSchedule(name, initial, int(total_steps), int(warmup_steps))


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


class StepCheckpoint(tf.keras.callbacks.Callback):
    """Saves model, optimizer and the global step at every epoch's end and every
    ``every_steps`` steps (0: epoch ends only); checkpoint numbers are global steps.

    ``resumed_step``: the global step this process started from; the first
    (partial) epoch after a mid-epoch resume starts there.
    """

    def __init__(self, manager, step_variable, steps_per_epoch, every_steps=0, resumed_step=0):
        super().__init__()
        self.manager = manager
        self.step_variable = step_variable
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.resumed_step = resumed_step
        self._last_saved = resumed_step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = max(epoch * self.steps_per_epoch, self.resumed_step)

    def _save(self, step):
        self.step_variable.assign(step)
        self.manager.save(checkpoint_number=step)
        self._last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if not self.every_steps:
            return
        step = self._epoch_start + batch + 1
        if step - self._last_saved >= self.every_steps and step % self.steps_per_epoch:
            self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        self._save((epoch + 1) * self.steps_per_epoch)


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
    planned = saved.get("epochs")
    if planned != config.epochs and (config.schedule != "constant" or config.warmup_epochs):
        raise ValueError(
            f"{config.output_dir} holds a run planned for --epochs {planned}: its "
            f"{config.schedule} schedule decays to its final value at the last step of "
            f"epoch {planned}, and resuming with --epochs {config.epochs} would bend it "
            f"(the learning rate would jump). Rerun with --epochs {planned} to finish that "
            f"run, or train longer from its weights in a new folder: --output-dir NEW "
            f"--weights {Path(config.output_dir) / 'model.keras'}."
        )


def _restore_latest_readable(checkpoint, manager):
    """Restore the newest checkpoint that reads back; warn about each one that does not
    (a truncated file after a crash), and stop if none does."""
    paths = list(manager.checkpoints)
    # A state file written without timestamps lists nothing in `checkpoints`
    # (TensorFlow keeps only paths newer than the last preserved one).
    if manager.latest_checkpoint and manager.latest_checkpoint not in paths:
        paths.append(manager.latest_checkpoint)
    for path in reversed(paths):
        try:
            checkpoint.restore(path).expect_partial()
            return path
        except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
            print(
                f"warning: checkpoint {path} cannot be read ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[0][:160]}); trying the one before it",
                file=sys.stderr,
            )
    if paths:
        raise ValueError(
            f"no checkpoint in {manager.directory} can be read ({', '.join(paths)}); "
            "delete that folder to start the run over"
        )
    return None


def _check_plan(plan: dict, path: Path, output_dir):
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if saved.get("steps_per_epoch") != plan["steps_per_epoch"]:
        raise ValueError(
            f"{output_dir} was planned with {saved.get('steps_per_epoch')} steps an epoch, "
            f"but the data now gives {plan['steps_per_epoch']} (another --data-dir or "
            "--train-size?). Use the same data to resume, or a new --output-dir."
        )


def build_model(config: TrainConfig, num_classes, input_shape, input_normalization=None):
    """The model ``config`` names; with ``input_normalization=(mean, std)`` (our
    builders only) it takes uint8 images and normalizes them itself."""
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
            input_normalization=input_normalization,
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
        try:
            model.load_weights(config.weights)
        except (OSError, ValueError, KeyError, IndexError) as error:
            raise ValueError(
                f"--weights {config.weights}: not weights this model can load ({error}). "
                "Give a .keras, .h5 or checkpoint file saved from the same model and settings."
            ) from error
    return model


def _distributed(strategy, make):
    """``make(layout)`` per input pipeline, through the strategy."""
    return strategy.distribute_datasets_from_function(
        lambda context: make(data_lib.layout_of(context))
    )


def _compile(model, optimizer, config: TrainConfig):
    loss = (
        SparseCrossEntropy(config.label_smoothing)
        if config.label_smoothing
        else "sparse_categorical_crossentropy"
    )
    # Weighted metrics: evaluation pads its last batch with weight-0 images.
    model.compile(
        optimizer=optimizer,
        loss=loss,
        weighted_metrics=[
            "accuracy",
            tf.keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy"),
        ],
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )


def plan_steps(config: TrainConfig, train_size: int) -> dict:
    """Steps per epoch, total steps and warm-up steps of ``config`` on ``train_size`` images."""
    steps_per_epoch = train_size // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch-size {config.batch_size} is larger than the {train_size} training "
            "images; lower it (or use more data)."
        )
    total = config.epochs * steps_per_epoch
    return {
        "train_images": int(train_size),
        "global_batch": config.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "warmup_steps": int(round(config.warmup_epochs * steps_per_epoch)),
        "schedule": config.schedule,
        "lr": config.lr,
        "lr_note": LR_NOTE,
    }


#: How many global batches past the last finished step a decode error is looked
#: for in (tf.data prefetches and decodes ahead of the step in progress).
_SCAN_BATCHES = 64


def _named_data_error(error, spec, config, iterations, steps_per_epoch):
    """A TensorFlow decode error, with the file that caused it where it can be found."""
    message = str(error)
    if f"[{data_lib.errors.BAD_DATA}" in message:  # one of our pipeline checks: named already
        return error
    paths = getattr(spec.train_source, "paths", None)
    if paths is None:
        return error
    from .data.imagenet import find_undecodable

    step = int(iterations.numpy())
    epoch, row = divmod(step, steps_per_epoch)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(spec.train_size, dtype=tf.int64), seed=tf.constant([config.seed, epoch], tf.int64)
    ).numpy()
    window = order[row * config.batch_size : (row + _SCAN_BATCHES) * config.batch_size]
    candidates = [paths[i] for i in window] + list(getattr(spec.test_source, "paths", []))
    # the window first (where the error most likely is), then the rest, within a budget
    seen = set(candidates)
    candidates += [p for p in paths if p not in seen]
    bad = find_undecodable(candidates, limit=50_000)
    if bad is None:
        return error
    return data_lib.CorruptDataError(
        f"{data_lib.errors.BAD_DATA} {bad} cannot be decoded as an image (TensorFlow: "
        f"{message.strip().splitlines()[0][:200]}); remove or replace it"
    )


def train(config: TrainConfig, verbose=None) -> dict:
    """Train (or resume) the run described by ``config``; return its report."""
    config.validate()
    check_paths(config)
    check_devices(config.devices)
    tf.keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy, config.devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch-size {config.batch_size} (the global batch) must divide by the "
            f"{replicas} replicas in sync; use a multiple of {replicas}."
        )
    if config.jit_compile and replicas > 1 and all(
        "CPU" in d.upper() for d in strategy.extended.worker_devices
    ):
        raise ValueError(
            "--jit-compile with several CPU replicas: XLA cannot run one step over "
            "TensorFlow's (virtual) CPU devices, each holding its own copy of the "
            "variables. Use one device (--devices /cpu:0) or GPUs."
        )
    chief = _is_chief(strategy)
    output = Path(config.output_dir)
    if not chief:  # other workers write to a private scratch folder
        output = output / ".workers" / f"worker-{strategy.cluster_resolver.task_id}"
    _check_resumable(config, output / "config.json")  # before the data: it may take long

    spec = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        seed=config.seed,
        train_subset=config.train_subset,
        augment=config.augment,
        image_size=config.image_size,
        train_size=config.train_size,
    )
    plan = plan_steps(config, spec.train_size)
    steps_per_epoch, total_steps = plan["steps_per_epoch"], plan["total_steps"]
    eval_steps = data_lib.pipeline.evaluation_steps(spec.test_size, config.batch_size)
    # uint8 to the model (normalized on the device) for ImageNet, where the bytes
    # matter; the small sets, and Larq Zoo's models, get floats from the pipeline.
    uint8 = config.dataset == "imagenet" and not config.model.startswith("zoo:")
    normalization = (spec.mean.tolist(), spec.std.tolist()) if uint8 else None

    previous_policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(PRECISIONS[config.precision])
    try:
        with strategy.scope():
            model = build_model(config, spec.num_classes, spec.input_shape, normalization)
            schedule = learning_rate_schedule(
                config.schedule, config.lr, total_steps, plan["warmup_steps"]
            )
            gamma = learning_rate_schedule(
                config.schedule, config.bop_gamma, total_steps, plan["warmup_steps"]
            )
            optimizer = make_optimizer(
                config.optimizer,
                schedule,
                weight_decay=config.weight_decay,
                clip_norm=config.clip_norm,
                bop_gamma=gamma,
                bop_threshold=config.bop_threshold,
            )
            _compile(model, optimizer, config)
            step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            checkpoint = tf.train.Checkpoint(
                model=model, optimizer=model.optimizer, step=step_variable
            )
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)

    # Everything is checked and built: only now does the output folder get files.
    output.mkdir(parents=True, exist_ok=True)
    _check_plan(plan, output / "plan.json", config.output_dir)
    write_json(output / "config.json", asdict(config))
    write_json(output / "plan.json", plan)

    manager = tf.train.CheckpointManager(checkpoint, str(output / "checkpoints"), max_to_keep=2)
    _restore_latest_readable(checkpoint, manager)
    resumed_step = int(step_variable.numpy())
    initial_epoch, step_in_epoch = divmod(resumed_step, steps_per_epoch)
    if resumed_step:
        where = f"epoch {initial_epoch}" + (
            f", step {step_in_epoch} of {steps_per_epoch}" if step_in_epoch else ""
        )
        print(
            f"Resuming {output} after {where} of {config.epochs} "
            f"(global step {resumed_step} of {total_steps})"
        )

    def train_data(first_step, epochs):
        return _distributed(
            strategy,
            lambda layout: data_lib.training_dataset(
                spec.train_source,
                global_batch=config.batch_size,
                steps_per_epoch=steps_per_epoch,
                epochs=epochs,
                seed=config.seed,
                first_step=first_step,
                layout=layout,
                uint8=uint8,
            ),
        )

    eval_data = _distributed(
        strategy,
        lambda layout: data_lib.evaluation_dataset(
            spec.test_source, global_batch=config.batch_size, layout=layout, uint8=uint8
        ),
    )
    callbacks = [
        EpochHistory(output / "history.csv", initial_epoch),
        StepCheckpoint(
            manager, step_variable, steps_per_epoch, config.save_every_steps, resumed_step
        ),
        tf.keras.callbacks.TensorBoard(str(output / "tensorboard")),
    ]
    if verbose is None:
        verbose = 1 if os.isatty(1) else 2
    fit = dict(
        validation_data=eval_data,
        validation_steps=eval_steps,
        validation_freq=config.validation_freq,
        callbacks=callbacks,
        verbose=verbose,
    )
    start = time.perf_counter()
    try:
        if step_in_epoch:  # the rest of the interrupted epoch, from the very next batch
            model.fit(
                train_data(resumed_step, initial_epoch + 1),
                epochs=initial_epoch + 1,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch - step_in_epoch,
                **fit,
            )
            initial_epoch += 1
            callbacks[0].initial_epoch = initial_epoch
        if initial_epoch < config.epochs:
            model.fit(
                train_data(initial_epoch * steps_per_epoch, config.epochs),
                epochs=config.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch,
                **fit,
            )
    except tf.errors.InvalidArgumentError as error:
        raise _named_data_error(
            error, spec, config, model.optimizer.iterations, steps_per_epoch
        ) from error
    wall_time = time.perf_counter() - start
    results = model.evaluate(eval_data, steps=eval_steps, verbose=0, return_dict=True)

    report = {
        "model": config.model,
        "dataset": config.dataset,
        "mode": config.mode,
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["cross_entropy"]),
        "test_images": spec.test_size,
        "epochs": config.epochs,
        "resumed_from_epoch": int(resumed_step // steps_per_epoch),
        "resumed_from_step": resumed_step,
        "optimizer_steps": int(step_variable.numpy()),
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "plan": plan,
        "final_learning_rate": float(schedule(max(total_steps - 1, 0))),
        "wall_time_s": wall_time,
        "devices": list(strategy.extended.worker_devices),
        "replicas": replicas,
        "precision": config.precision,
        "optimizer_class": type(model.optimizer).__name__,  # LossScaleOptimizer for float16
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
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file {model_path} not found (or not a file)")
    try:
        model = tf.keras.models.load_model(model_path)
    except Exception as error:  # Keras raises many types for a bad file
        raise ValueError(
            f"{model_path}: not a Keras model file that can be loaded ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:200]})"
        ) from error
    spec = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        image_size=config.image_size,
        seed=config.seed,  # the synthetic set is drawn from it
    )
    uint8 = model.inputs[0].dtype == tf.uint8
    dataset = data_lib.evaluation_dataset(
        spec.test_source, global_batch=config.batch_size, uint8=uint8
    )
    model.compile(
        loss="sparse_categorical_crossentropy",
        weighted_metrics=[
            "accuracy",
            tf.keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy"),
        ],
    )
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {
        "model_file": str(model_path),
        "dataset": config.dataset,
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["cross_entropy"]),
        "test_images": spec.test_size,
        **model_report(model),
    }
