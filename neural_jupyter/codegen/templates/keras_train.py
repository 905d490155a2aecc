# ruff: noqa
# The generic part of every generated Keras 3 train.py. The code generator writes the
# docstring, then the PRELUDE below (imports, Keras backend choice, TensorFlow memory
# growth; it runs before Keras is imported), then the model (build_model and any helper
# layers) and the network-specific hooks (make_loss, make_optimizer, make_metrics,
# make_callbacks and the constants TASK, LABELS, FROM_LOGITS, METRICS, INPUT_DTYPE,
# OUTPUT_SHAPE), then everything below the BODY marker. It must only use the standard
# library, numpy and keras at top level (the Keras backend is imported lazily inside
# functions): a bundle runs anywhere without neural-jupyter installed.
# ----- PRELUDE -----
import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")
EXIT_FAILED = 1


def emit(event: str, **fields) -> None:
    """One line of the event protocol on stdout (other output is plain log lines)."""
    record = {"event": event, "time": round(time.time(), 3), **fields}
    sys.stdout.write(json.dumps(record, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return str(value)


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", default="job.json", help="job settings (JSON)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint"
    )
    return parser.parse_args(argv)


def fail_before_start(message: str, hint: str) -> None:
    """Report a missing dependency as an error event and exit (Keras cannot load)."""
    emit("error", type="ImportError", message=message, traceback="", hint=hint)
    with contextlib.suppress(Exception):
        job_file = Path(parse_args().job).resolve()
        job = json.loads(job_file.read_text())
        output = job_file.parent / job.get("output_dir", "output")
        output.mkdir(parents=True, exist_ok=True)
        (output / "status.json").write_text(json.dumps({"exit_code": EXIT_FAILED}))
    raise SystemExit(EXIT_FAILED)


def _configured_backend() -> str | None:
    """The backend in keras.json (KERAS_HOME or ~/.keras), if that file names one."""
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    with contextlib.suppress(OSError, ValueError, AttributeError):
        with open(os.path.join(home, "keras.json")) as file:
            return json.load(file).get("backend")
    return None


def choose_backend() -> str:
    """KERAS_BACKEND if set, else keras.json's backend or the first one installed.

    Runs before Keras is imported (Keras reads the variable at import).
    """
    if importlib.util.find_spec("keras") is None:
        fail_before_start(
            "Keras is not installed", "pip install -r requirements.txt (keras>=3)"
        )
    chosen = os.environ.get("KERAS_BACKEND", "").strip()
    if not chosen:
        configured = _configured_backend()
        candidates = ((configured,) if configured in BACKENDS else ()) + BACKENDS
        chosen = next((n for n in candidates if importlib.util.find_spec(n)), "")
        if not chosen:
            fail_before_start(
                "no Keras backend is installed (tensorflow, jax or torch)",
                "pip install tensorflow, jax or torch, or set KERAS_BACKEND",
            )
        os.environ["KERAS_BACKEND"] = chosen
    elif chosen in BACKENDS and importlib.util.find_spec(chosen) is None:
        fail_before_start(
            f"KERAS_BACKEND is {chosen!r} but {chosen} is not installed",
            f"pip install {chosen}, or set KERAS_BACKEND to an installed backend",
        )
    return chosen


def enable_memory_growth(backend: str) -> None:
    """TensorFlow: allocate GPU memory as needed, not all of it at start-up."""
    if backend != "tensorflow":
        return  # JAX and PyTorch read the launcher's environment variables
    if os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", "").lower() == "false":
        return  # the user chose to preallocate
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # the GPU was initialised already
            log(f"could not enable memory growth on {gpu.name}: {exc}")


KERAS_BACKEND = choose_backend()
enable_memory_growth(KERAS_BACKEND)

import keras  # noqa: E402
from keras import layers  # noqa: E402

# ----- BODY -----
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)
EXIT_TIMEOUT = 124
EXIT_STOPPED = 143
CHECKPOINT = "checkpoint.npz"
WEIGHTS = "model.weights.h5"


class Stopped(Exception):
    """Raised between batches when a stop signal arrives or the time budget is spent."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


_stop_request: list[Stopped] = []


def _on_signal(signum, frame) -> None:
    _stop_request.append(Stopped(f"signal {signal.Signals(signum).name}", EXIT_STOPPED))


def seed_everything(seed: int, deterministic: bool) -> None:
    keras.utils.set_random_seed(seed)  # Python, numpy and the backend
    if not deterministic:
        return
    if KERAS_BACKEND == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif KERAS_BACKEND == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def describe_device() -> tuple[str, str]:
    """(device type, device name) that the Keras backend computes on by default."""
    with contextlib.suppress(Exception):
        if KERAS_BACKEND == "torch":
            import torch

            if torch.cuda.is_available():
                return "cuda", torch.cuda.get_device_name(0)
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return "mps", "mps"
        elif KERAS_BACKEND == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return "gpu", details.get("device_name", gpus[0].name)
        elif KERAS_BACKEND == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return device.platform, device.device_kind
    return "cpu", "cpu"


def device_scope(requested: str):
    """keras.device(...) for an explicit job device ("cpu", "cuda:1", "gpu"...)."""
    if requested in ("auto", ""):
        return contextlib.nullcontext()
    name = requested.lower().replace("cuda", "gpu")
    name = name if ":" in name else f"{name}:0"
    if KERAS_BACKEND == "torch" and name == "cpu:0":
        name = "cpu"  # torch's "cpu:0" is another device than "cpu": weights would copy
    return keras.device(name)


def set_precision(precision: str, device_type: str) -> str:
    """Set Keras' global dtype policy; returns the precision actually used."""
    if precision == "fp16" and device_type == "cpu":
        log("fp16 mixed precision needs a GPU; training in fp32 on the CPU")
        precision = "fp32"
    policy = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}.get(
        precision, "float32"
    )
    keras.mixed_precision.set_global_policy(policy)
    return precision if policy != "float32" else "fp32"


def load_data(bundle: Path, job: dict):
    """Training and validation arrays; a seeded random split if no validation set."""
    with np.load(bundle / job.get("data", "data.npz")) as data:
        arrays = {key: data[key] for key in data.files}
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_val, y_val = arrays.get("x_val"), arrays.get("y_val")
    split = float(job.get("validation_split") or 0.0)
    if x_val is None and split > 0:
        count = int(round(len(x_train) * split))
        if 0 < count < len(x_train):
            rng = np.random.default_rng(int(job.get("seed", 0)))
            order = rng.permutation(len(x_train))
            val_idx, train_idx = order[:count], order[count:]
            x_val, y_val = x_train[val_idx], y_train[val_idx]
            x_train, y_train = x_train[train_idx], y_train[train_idx]
    return x_train, y_train, x_val, y_val


def resolve_labels(y: np.ndarray) -> str:
    """LABELS; "auto" (a cross-entropy the source did not pin to a label format) is
    decided here: rows as wide as the output are one-hot, else class indices."""
    if LABELS != "auto":
        return LABELS
    y = np.asarray(y)
    classes = OUTPUT_SHAPE[-1]
    return "onehot" if y.ndim == 2 and y.shape[1] == classes > 1 else "sparse"


def prepare(x: np.ndarray, y: np.ndarray):
    """Arrays in the dtypes and shapes the model and the loss take."""
    x = np.asarray(x, dtype=np.int32 if INPUT_DTYPE == "int64" else np.float32)
    if LABELS == "sparse":
        y = np.asarray(y, dtype=np.int32).reshape(len(y))
    elif LABELS == "binary":
        y = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
    else:
        y = np.asarray(y, dtype=np.float32)
        if LABELS == "values" and y.size == len(y) * math.prod(OUTPUT_SHAPE):
            y = y.reshape((len(y), *OUTPUT_SHAPE))
    return x, y


def learning_rate(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def _float32(value) -> float:
    """A float32 as the shortest float that reads back to it (0.1, not 0.100000001)."""
    return float(str(np.float32(value)))


def epoch_metrics(logs: dict, lr: float) -> dict:
    """Keras' logs renamed and ordered like the PyTorch script's metrics."""
    logs = {k: _float32(v) for k, v in (logs or {}).items() if k != "learning_rate"}
    names = ["loss", *METRICS]
    order = names + [f"val_{name}" for name in names]
    metrics = {name: logs.pop(name) for name in order if name in logs}
    metrics.update(logs)
    metrics["lr"] = _float32(lr)
    return metrics


class EarlyStopping:
    def __init__(self, settings: dict | None) -> None:
        self.settings = settings
        self.best = None
        self.best_epoch = None
        self.best_state = None
        self.wait = 0
        self.warned = False

    @property
    def mode(self) -> str:
        return "max" if "accuracy" in self.settings["monitor"] else "min"

    def observe(self, epoch: int, metrics: dict, model) -> bool:
        """Record an epoch; True when training should stop."""
        if not self.settings:
            return False
        monitor = self.settings["monitor"]
        if monitor not in metrics:
            fallback = monitor.removeprefix("val_")
            if not self.warned:
                log(f"early stopping: '{monitor}' is not available; using '{fallback}'")
                self.warned = True
            monitor = fallback
        value = metrics.get(monitor)
        if value is None:
            return False
        delta = self.settings.get("min_delta", 0.0)
        improved = self.best is None or (
            value > self.best + delta
            if self.mode == "max"
            else value < self.best - delta
        )
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.settings.get("restore_best_weights", True):
                self.best_state = [np.array(w) for w in model.get_weights()]
            return False
        self.wait += 1
        return self.wait > self.settings["patience"]


def write_json_atomic(obj, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(temporary, path)


def save_weights_atomic(model, path: Path) -> None:
    temporary = path.with_name("tmp-" + path.name)  # Keras wants *.weights.h5
    model.save_weights(str(temporary))
    os.replace(temporary, path)


def save_checkpoint(path: Path, model, stopper: EarlyStopping, meta: dict) -> None:
    """Weights, optimizer state, best weights and progress in one file, atomically."""
    arrays = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
    for i, variable in enumerate(model.optimizer.variables):
        arrays[f"optimizer_{i}"] = keras.ops.convert_to_numpy(variable)
    for i, weight in enumerate(stopper.best_state or []):
        arrays[f"best_{i}"] = weight
    early = {"best": stopper.best, "best_epoch": stopper.best_epoch}
    meta = {**meta, "early_stopping": {**early, "wait": stopper.wait}}
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)


def load_checkpoint(path: Path, model, stopper: EarlyStopping) -> dict:
    """Restore what save_checkpoint wrote; returns its progress record."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays["meta"]))

    def numbered(prefix: str) -> list:
        count = sum(1 for key in arrays if key.startswith(prefix))
        return [arrays[f"{prefix}{i}"] for i in range(count)]

    model.set_weights(numbered("weight_"))
    optimizer_state = numbered("optimizer_")
    try:
        model.optimizer.build(model.trainable_variables)
        variables = model.optimizer.variables
        if len(variables) != len(optimizer_state):
            raise ValueError(f"{len(optimizer_state)} saved, {len(variables)} expected")
        for variable, value in zip(variables, optimizer_state):
            variable.assign(value)
    except Exception as exc:  # the weights are restored; the optimizer starts afresh
        log(f"optimizer state not restored ({exc}); continuing with a fresh optimizer")
    early = meta["early_stopping"]
    stopper.best, stopper.best_epoch = early["best"], early["best_epoch"]
    stopper.wait = early["wait"]
    stopper.best_state = numbered("best_") or None
    return meta


class Events(keras.callbacks.Callback):
    """Speaks the event protocol, checks stop requests, checkpoints every epoch."""

    def __init__(self, job, state, stopper, history, checkpoint_path) -> None:
        super().__init__()
        self.job = job
        self.state = state
        self.stopper = stopper
        self.history = history
        self.checkpoint_path = checkpoint_path
        self.stopped_early = False
        self.last_emit = 0.0
        self.epoch_start = 0.0

    def check_stop(self) -> None:
        if _stop_request:
            raise _stop_request[0]
        if self.state["deadline"] and time.monotonic() > self.state["deadline"]:
            raise Stopped("time budget spent", EXIT_TIMEOUT)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.state["epoch"] = epoch + 1
        self.epoch_start = time.monotonic()
        self.last_emit = 0.0

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self.check_stop()

    def on_test_batch_begin(self, batch, logs=None) -> None:
        self.check_stop()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.state["global_step"] += 1
        steps = self.state["steps_per_epoch"]
        now = time.monotonic()
        if now - self.last_emit >= 0.1 or batch + 1 == steps:
            self.last_emit = now
            emit(
                "batch",
                epoch=self.state["epoch"],
                batch=batch + 1,
                batches=steps,
                loss=round(float((logs or {}).get("loss", math.nan)), 6),
            )
        debug_hook(self.model, self.state, logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        epoch += 1
        metrics = epoch_metrics(logs, learning_rate(self.model))
        self.history.append({"epoch": epoch, **metrics})
        stop = self.stopper.observe(epoch, metrics, self.model)
        emit(
            "epoch",
            epoch=epoch,
            epochs=self.state["epochs"],
            metrics=metrics,
            duration=round(time.monotonic() - self.epoch_start, 4),
        )
        save_checkpoint(
            self.checkpoint_path,
            self.model,
            self.stopper,
            {
                "epoch": epoch,
                "history": self.history,
                "global_step": self.state["global_step"],
            },
        )
        if stop:
            self.stopped_early = True
            self.model.stop_training = True
            settings = self.stopper.settings
            log(
                f"early stopping after epoch {epoch}: no improvement in "
                f"{settings['monitor']} for {settings['patience']} epochs"
            )


def debug_hook(model, state, logs) -> None:
    """Replaced in debug bundles; a no-op otherwise."""


def train(bundle: Path, job: dict, resume: bool) -> dict:
    output_dir = bundle / job.get("output_dir", "output")
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output_dir / CHECKPOINT
    started = time.monotonic()
    seed = int(job.get("seed", 0))
    seed_everything(seed, bool(job.get("deterministic")))
    requested_device = job.get("device", "auto")
    device, name = describe_device()
    preferred = job.get("preferred_device")
    if requested_device in ("auto", "") and preferred:
        # the device the model source asks for, where this machine has that kind
        gpu_asked = preferred.split(":")[0] in ("cuda", "gpu")
        if preferred == "cpu" or (gpu_asked and device in ("cuda", "gpu")):
            requested_device = preferred
        else:
            log(f"the model asks for device {preferred!r}; this machine has none")
    if requested_device not in ("auto", ""):
        device = name = requested_device
    precision = set_precision(job.get("precision", "fp32"), device.split(":")[0])
    x_train, y_train, x_val, y_val = load_data(bundle, job)
    global LABELS
    LABELS = resolve_labels(y_train)
    x, y = prepare(x_train, y_train)
    val = prepare(x_val, y_val) if x_val is not None and len(x_val) else None
    batch_size = int(job["batch_size"])
    epochs = int(job["epochs"])
    steps_per_epoch = math.ceil(len(x) / batch_size)
    max_seconds = job.get("max_seconds")
    stopper = EarlyStopping(job.get("early_stopping"))
    history: list[dict] = []
    state = {
        "global_step": 0,
        "epoch": 0,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "deadline": started + max_seconds if max_seconds else None,
        "debug_every": job.get("debug_every"),
    }
    start_epoch = 1
    with device_scope(requested_device):
        model = build_model()
        model.compile(
            optimizer=make_optimizer(), loss=make_loss(), metrics=make_metrics()
        )
        if resume and checkpoint_path.exists():
            meta = load_checkpoint(checkpoint_path, model, stopper)
            history = meta["history"]
            state["global_step"] = meta["global_step"]
            start_epoch = meta["epoch"] + 1
            # a fresh stream for the epochs to come (not a replay of epoch 1's)
            keras.utils.set_random_seed(seed + meta["epoch"])
        emit(
            "start",
            job_id=job.get("job_id"),
            model=job.get("model"),
            framework="keras",
            keras=keras.__version__,
            backend=KERAS_BACKEND,
            device=device,
            device_name=name,
            epochs=epochs,
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            train_samples=len(x),
            val_samples=len(val[0]) if val else 0,
            params=sum(int(math.prod(w.shape)) for w in model.trainable_weights),
            precision=precision,
            resumed_from=start_epoch - 1 if start_epoch > 1 else None,
        )
        events = Events(job, state, stopper, history, checkpoint_path)
        if start_epoch <= epochs:
            model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                initial_epoch=start_epoch - 1,
                validation_data=val,
                shuffle=bool(job.get("shuffle", True)),
                callbacks=[*make_callbacks(), events],
                verbose=0,
            )
    if stopper.best_state is not None:
        model.set_weights(stopper.best_state)
    weights = output_dir / WEIGHTS
    save_weights_atomic(model, weights)
    write_json_atomic(history, output_dir / "history.json")
    for artifact, path in (
        ("weights", weights),
        ("history", output_dir / "history.json"),
        ("checkpoint", checkpoint_path),
    ):
        if path.exists():
            emit(
                "artifact",
                name=artifact,
                path=str(path.relative_to(bundle)),
                bytes=path.stat().st_size,
            )
    final = history[-1] if history else {}
    result = {
        "metrics": {k: v for k, v in final.items() if k != "epoch"},
        "best_epoch": stopper.best_epoch or (final.get("epoch") if final else None),
        "epochs_run": len(history),
        "stopped_early": events.stopped_early,
        "wall_time": round(time.monotonic() - started, 3),
    }
    if stopper.best_epoch is not None:
        best = next(h for h in history if h["epoch"] == stopper.best_epoch)
        result["best_metrics"] = {k: v for k, v in best.items() if k != "epoch"}
    emit("done", **result)
    return result


def explain(exc: BaseException) -> str | None:
    text = str(exc).lower()
    signs = ("out of memory", "resource_exhausted", "oom when allocating")
    if any(sign in text for sign in signs):
        return "the GPU ran out of memory: try a smaller batch_size or --precision bf16"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = Path(args.job).resolve().parent
    job = json.loads(Path(args.job).read_text())
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    status_path = bundle / job.get("output_dir", "output") / "status.json"
    status_path.parent.mkdir(parents=True, exist_ok=True)
    code = 0
    try:
        train(bundle, job, resume=args.resume or bool(job.get("resume")))
    except Stopped as stop:
        code = stop.exit_code
        log(f"training stopped: {stop}")
    except Exception as exc:  # reported as an event, then a non-zero exit
        code = EXIT_FAILED
        emit(
            "error",
            type=type(exc).__name__,
            message=str(exc),
            traceback=traceback.format_exc(),
            hint=explain(exc),
        )
    write_json_atomic({"exit_code": code}, status_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
