# ruff: noqa
# The generic part of every generated PyTorch train.py. The code generator prepends the
# imports, the model class and the network-specific hooks (make_loss, make_optimizer,
# make_scheduler and the constants TASK, LABELS, CLASSES, OUTPUT_ACTIVATION, METRICS,
# INPUT_DTYPE)
# and appends everything below the BODY marker. It must only use the standard library,
# numpy and torch: a bundle runs anywhere without neural-jupyter installed.
# ----- BODY -----
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)
EXIT_TIMEOUT = 124
EXIT_STOPPED = 143


class Stopped(Exception):
    """Raised inside the loop when a stop signal arrives or the time budget is spent."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


_stop_request: list[Stopped] = []


class Distributed:
    """This process's place in a torchrun job: rank, world size (1 without torchrun)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.backend = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


DIST = Distributed()


def start_distributed(device: torch.device) -> None:
    """Join torchrun's process group: NCCL when each process has a GPU of its own,
    gloo on the CPU or when processes share a GPU (NCCL refuses two ranks on one
    device); NEURAL_JUPYTER_DIST_BACKEND overrides the choice."""
    if not DIST.active:
        return
    import datetime

    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_gpu = device.type == "cuda" and DIST.local_world <= torch.cuda.device_count()
    backend = os.environ.get("NEURAL_JUPYTER_DIST_BACKEND") or (
        "nccl" if own_gpu else "gloo"
    )
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    DIST.backend = backend
    if DIST.main:
        log(
            f"data parallel: {DIST.world} processes ({backend}), "
            f"{DIST.local_world} on this node"
        )


def stop_distributed() -> None:
    if DIST.backend is not None:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        DIST.backend = None


def die_with_parent() -> None:
    """Under torchrun (which starts each process in a session of its own), end with it:
    a torchrun killed outright leaves no rank behind (Linux)."""
    if not DIST.active or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(
            1, signal.SIGKILL
        )  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent already went
            os.kill(os.getpid(), signal.SIGKILL)


def summed_over_ranks(sums: dict, count: int, device: torch.device) -> dict:
    """Each metric's sum over every process's samples, divided by their count: the mean
    over the whole data set (what one process would report)."""
    keys = sorted(sums)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    values = torch.stack(
        [torch.as_tensor(sums[key]).to(device=device, dtype=dtype) for key in keys]
        + [torch.tensor(float(count), device=device, dtype=dtype)]
    )
    if DIST.active:
        import torch.distributed as dist

        dist.all_reduce(values)
    totals = values.tolist()
    return {key: value / totals[-1] for key, value in zip(keys, totals)}


def pending_stop(state: dict, step: int):
    """The stop to obey now, if any: a stop signal or the spent budget. Under torchrun
    every process decides together every 10 steps, so they all stop at the same step."""
    local = _stop_request[0] if _stop_request else None
    if local is None and state["deadline"] and time.monotonic() > state["deadline"]:
        local = Stopped("time budget spent", EXIT_TIMEOUT)
    if not DIST.active:
        return local
    if step % 10:
        return None
    import torch.distributed as dist

    flag = torch.tensor(
        [0 if local is None else local.exit_code], device=state["device"]
    )
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    code = int(flag.item())
    if code == 0:
        return None
    return local or Stopped("another process stopped", code)


def emit(event: str, **fields) -> None:
    """One line of the event protocol on stdout (other output is plain log lines). Under
    torchrun only rank 0 speaks, but any rank reports its own error."""
    if not DIST.main:
        if event != "error":
            return
        fields = {"rank": DIST.rank, **fields}
    record = {"event": event, "time": round(time.time(), 3), **fields}
    sys.stdout.write(json.dumps(record, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


def log(message: str) -> None:
    if not DIST.main:
        message = f"[rank {DIST.rank}] {message}"
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _on_signal(signum, frame) -> None:
    _stop_request.append(Stopped(f"signal {signal.Signals(signum).name}", EXIT_STOPPED))


def seed_everything(seed: int, deterministic: bool) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def pick_device(requested: str, preferred: str | None = None) -> torch.device:
    """The job's device; ``preferred`` (the device the model source asks for) is used
    when this machine has it, else the automatic choice."""
    if requested not in ("auto", ""):
        device = torch.device(requested)
        if DIST.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", DIST.local_rank % torch.cuda.device_count())
        return device
    if preferred and not (DIST.active and preferred.startswith("cuda")):
        if device_available(preferred):
            return torch.device(preferred)
        log(
            f"the model asks for device {preferred!r}, which this machine does not have"
        )
    if torch.cuda.is_available():
        if DIST.active:  # one GPU per process, shared round-robin when too few
            return torch.device("cuda", DIST.local_rank % torch.cuda.device_count())
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_available(name: str) -> bool:
    device = torch.device(name)
    if device.type == "cuda":
        index = device.index or 0
        return torch.cuda.is_available() and index < torch.cuda.device_count()
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return device.type == "cpu"


def resolve_labels(y: np.ndarray) -> str:
    """LABELS; "auto" (a cross-entropy the source did not pin to a label format) is
    decided here: rows as wide as the output are one-hot, else class indices."""
    if LABELS != "auto":
        return LABELS
    y = np.asarray(y)
    return "onehot" if y.ndim == 2 and y.shape[1] == CLASSES > 1 else "sparse"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def load_data(bundle: Path, job: dict, generator: torch.Generator):
    """Training and validation arrays; a seeded random split if no validation set."""
    with np.load(bundle / job.get("data", "data.npz")) as data:
        arrays = {key: data[key] for key in data.files}
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_val, y_val = arrays.get("x_val"), arrays.get("y_val")
    split = float(job.get("validation_split") or 0.0)
    if x_val is None and split > 0:
        count = int(round(len(x_train) * split))
        if 0 < count < len(x_train):
            order = torch.randperm(len(x_train), generator=generator).numpy()
            val_idx, train_idx = order[:count], order[count:]
            x_val, y_val = x_train[val_idx], y_train[val_idx]
            x_train, y_train = x_train[train_idx], y_train[train_idx]
    return x_train, y_train, x_val, y_val


def to_tensors(x: np.ndarray, y: np.ndarray):
    """Host tensors of the model's dtypes (``place_data`` moves them)."""
    x_dtype = torch.long if INPUT_DTYPE == "int64" else torch.float32
    y_dtype = torch.long if LABELS == "sparse" else torch.float32
    x_t = torch.as_tensor(x).to(x_dtype)
    y_t = torch.as_tensor(y).to(y_dtype)
    if LABELS == "binary":
        y_t = y_t.reshape(len(y_t), -1)
    return x_t, y_t


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.element_size() * tensor.numel()


def place_data(mode: str, device: torch.device, pairs: list) -> list:
    """The (x, y) pairs where they live for the whole run (``data_on_device``). On the
    device there are no per-batch copies: "auto" puts each set there when under 512 MiB,
    "on" all of them whenever they fit in half the device's free memory, "off" none
    (each batch is copied). On the CPU the data is on the device whatever the mode."""
    keep = [nbytes(x) < 512 * 2**20 for x, _ in pairs]
    if mode == "off" and device.type != "cpu":
        log("data on the device: off (host memory; each batch is copied to the device)")
        keep = [False for _ in pairs]
    elif mode == "on" and device.type != "cpu":
        size = sum(nbytes(t) for pair in pairs for t in pair)
        free = free_device_memory(device)
        fits = free is None or size <= free // 2
        keep = [fits for _ in pairs]
        log(
            f"data on the device: {size / 2**20:.1f} MiB, copied once"
            if fits
            else f"data on the device: {size / 2**20:.0f} MiB does not fit in half the "
            f"device's free memory ({free / 2**20:.0f} MiB); it stays in host memory"
        )
    return [
        (x.to(device), y.to(device)) if on_device else (x, y)
        for (x, y), on_device in zip(pairs, keep)
    ]


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (None: unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "mps":
            mps = torch.mps
            return int(mps.recommended_max_memory() - mps.driver_allocated_memory())
    except (AttributeError, RuntimeError):
        return None
    return None


def use_channels_last(core: nn.Module) -> None:
    """2-D convolution weights in channels-last memory format (``channels_last``).
    The model's NHWC inputs already reach its convolutions channels-last (the permute
    to NCHW keeps their memory order); the weights follow suit, so no step converts
    them."""
    if any(p.dim() == 4 for p in core.parameters()):
        core.to(memory_format=torch.channels_last)
        log("channels-last memory format: on")
    else:
        log("channels-last memory format: ignored (the model has no 2-D convolution)")


def prepare_model(core: nn.Module, job: dict, device: torch.device):
    """The model the loop calls: DistributedDataParallel under torchrun, and
    torch.compile when the job asks for it (``compile``); ``core`` keeps the weights."""
    model = core
    if DIST.active:  # gradients averaged across processes at every step
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    if job.get("compile"):
        log("torch.compile: on (the first steps and the first evaluation compile)")
        model = torch.compile(model)
    return model


def batch_stats(output: torch.Tensor, target: torch.Tensor) -> dict:
    """Sums (not means) of each metric over the batch, as tensors (no device sync)."""
    stats = {}
    if "accuracy" in METRICS:
        if TASK == "multiclass":
            labels = target if LABELS == "sparse" else target.argmax(dim=-1)
            stats["accuracy"] = (output.argmax(dim=-1) == labels).sum()
        else:
            # binary models output logits here (BCEWithLogitsLoss): threshold at 0
            predicted = (output > 0).to(target.dtype)
            stats["accuracy"] = (predicted == target).float().mean(dim=-1).sum()
    if "mae" in METRICS or "mse" in METRICS:
        values = apply_output_activation(output).float()
        difference = (values - target.reshape(values.shape)).reshape(len(values), -1)
        if "mae" in METRICS:
            stats["mae"] = difference.abs().mean(dim=-1).sum()
        if "mse" in METRICS:
            stats["mse"] = difference.pow(2).mean(dim=-1).sum()
    return stats


def apply_output_activation(output: torch.Tensor) -> torch.Tensor:
    if OUTPUT_ACTIVATION == "softmax":
        return torch.softmax(output, dim=-1)
    if OUTPUT_ACTIVATION == "sigmoid":
        return torch.sigmoid(output)
    return output


def loss_target(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    if TASK == "regression":
        return target.reshape(output.shape)
    return target


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

    def observe(self, epoch: int, metrics: dict, model: nn.Module) -> bool:
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
                self.best_state = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in model.state_dict().items()
                }
            return False
        self.wait += 1
        return self.wait > self.settings["patience"]

    def state(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_state": self.best_state,
        }

    def restore(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.best_state = state["wait"], state["best_state"]


def save_atomic(obj, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def write_json_atomic(obj, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(temporary, path)


def run_epoch(
    model, loss_fn, optimizer, scheduler, x, y, job, state, device, autocast, scaler
):
    """One pass over the training data; returns mean loss and metrics."""
    model.train()
    batch_size = job["batch_size"]
    sampler = state["sampler"]
    if sampler is not None:  # this process's share: every process the same number
        sampler.set_epoch(state["epoch"])
        order = torch.as_tensor(list(sampler), dtype=torch.long, device=x.device)
    elif job.get("shuffle", True):
        order = torch.randperm(len(x), generator=state["generator"]).to(x.device)
    else:
        order = torch.arange(len(x), device=x.device)
    count = len(order)
    steps = math.ceil(count / batch_size)
    total_loss = torch.zeros((), device=device)
    totals: dict = {}
    last_emit = 0.0
    for step in range(steps):
        stop = pending_stop(state, step)
        if stop is not None:
            raise stop
        index = order[step * batch_size : (step + 1) * batch_size]
        xb = x[index].to(device, non_blocking=True)
        yb = y[index].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        debugger = state["debugger"]
        if debugger is not None:
            debugger.start_step(state["global_step"] + 1)
        with autocast():
            output = model(xb)
            loss = loss_fn(output, loss_target(yb, output))
        if scaler is not None:
            scaler.scale(loss).backward()
            if debugger is not None:
                scaler.unscale_(optimizer)
                debugger.before_update(loss, xb)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if debugger is not None:
                debugger.before_update(loss, xb)
            optimizer.step()
        if debugger is not None:
            debugger.after_update(state)
        if scheduler is not None and scheduler[1] == "batch":
            scheduler[0].step()
        with torch.no_grad():
            total_loss += loss.detach() * len(index)
            for key, value in batch_stats(output.detach(), yb).items():
                totals[key] = totals.get(key, 0) + value
        state["global_step"] += 1
        now = time.monotonic()
        if now - last_emit >= 0.1 or step == steps - 1:
            last_emit = now
            emit(
                "batch",
                epoch=state["epoch"],
                batch=step + 1,
                batches=steps,
                loss=round(loss.item(), 6),
            )
    return summed_over_ranks({"loss": total_loss, **totals}, count, device)


@torch.no_grad()
def evaluate(model, loss_fn, x, y, batch_size, device, autocast) -> dict:
    model.eval()
    if DIST.active:  # each process a slice; the sums are added up across them
        x, y = x[DIST.rank :: DIST.world], y[DIST.rank :: DIST.world]
    total_loss = torch.zeros((), device=device)
    totals: dict = {}
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        with autocast():
            output = model(xb)
            loss = loss_fn(output, loss_target(yb, output))
        total_loss += loss.float() * len(xb)
        for key, value in batch_stats(output, yb).items():
            totals[key] = totals.get(key, 0) + value
    sums = summed_over_ranks({"loss": total_loss, **totals}, len(x), device)
    return {f"val_{key}": value for key, value in sums.items()}


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


class Debugger:
    """Debug mode: every N steps a ``layer_stats`` event with, per layer, the activation
    mean/std and dead-ReLU fraction, the gradient norm and the weight-update ratio; plus
    step time, peak memory, and the first layer and step where NaN/Inf appeared."""

    def __init__(self, model: nn.Module, every: int, device: torch.device) -> None:
        self.model = model
        self.every = every
        self.device = device
        self.layers = dict(model.named_children())
        self.activations: dict = {}
        self.handles: list = []
        self.before: dict = {}
        self.step = 0
        self.due = False
        self.last_time = time.monotonic()
        self.last_step = 0
        self.nan_reported = False

    def _hook(self, name: str):
        def record(module, inputs, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            values = out.detach().float()
            finite = bool(torch.isfinite(values).all())
            stats = {"finite": finite}
            if finite and values.numel():
                stats["mean"] = values.mean().item()
                stats["std"] = values.std().item() if values.numel() > 1 else 0.0
                if LAYER_ACTIVATIONS.get(name) == "relu":
                    stats["dead_fraction"] = (values <= 0).float().mean().item()
            self.activations[name] = stats

        return record

    def _attach(self) -> None:
        self.activations = {}
        self.handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in self.layers.items()
        ]

    def _detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def start_step(self, step: int) -> None:
        self.step = step
        self.due = step % self.every == 0
        if self.due:
            self._attach()

    def before_update(self, loss: torch.Tensor, xb: torch.Tensor) -> None:
        if self.due:
            self._detach()
            self.before = {
                name: [p.detach().clone() for p in module.parameters()]
                for name, module in self.layers.items()
            }
        if not self.nan_reported and not bool(torch.isfinite(loss.detach())):
            self._report_non_finite(xb)

    def _report_non_finite(self, xb: torch.Tensor) -> None:
        """Find the first layer whose output is not finite by re-running the batch."""
        self.nan_reported = True
        self._attach()
        with torch.no_grad():
            self.model(xb)
        self._detach()
        first = next(
            (
                n
                for n in self.layers
                if not self.activations.get(n, {}).get("finite", 1)
            ),
            None,
        )
        if first is None:
            first = next(
                (
                    name
                    for name, module in self.layers.items()
                    for p in module.parameters()
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())
                ),
                "the loss",
            )
        emit(
            "layer_stats",
            step=self.step,
            epoch=None,
            layers=[],
            anomalies=[
                {
                    "kind": "non_finite",
                    "layer": first,
                    "step": self.step,
                    "message": f"NaN/Inf first appeared in {first} at step {self.step}",
                }
            ],
        )

    def after_update(self, state: dict) -> None:
        if not self.due:
            return
        layers = []
        anomalies = []
        for name, module in self.layers.items():
            params = list(module.parameters())
            entry = {"name": name, **self.activations.get(name, {})}
            if params:
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    entry["grad_norm"] = torch.sqrt(
                        sum(g.detach().float().pow(2).sum() for g in grads)
                    ).item()
                old = self.before.get(name, [])
                if old:
                    delta = sum(
                        (p.detach() - o).float().pow(2).sum()
                        for p, o in zip(params, old)
                    )
                    size = sum(o.float().pow(2).sum() for o in old)
                    entry["update_ratio"] = (
                        torch.sqrt(delta) / (torch.sqrt(size) + 1e-12)
                    ).item()
            if entry.get("dead_fraction", 0) > 0.9:
                anomalies.append(
                    {
                        "kind": "dead_relu",
                        "layer": name,
                        "message": f"{entry['dead_fraction']:.0%} of {name}'s "
                        "ReLU units are inactive",
                    }
                )
            if entry.get("grad_norm") is not None and entry["grad_norm"] < 1e-7:
                anomalies.append(
                    {
                        "kind": "vanishing_gradient",
                        "layer": name,
                        "message": f"{name}'s gradient norm is "
                        f"{entry['grad_norm']:.1e}",
                    }
                )
            layers.append(entry)
        now = time.monotonic()
        steps = max(self.step - self.last_step, 1)
        emit(
            "layer_stats",
            step=self.step,
            epoch=state["epoch"],
            layers=layers,
            anomalies=anomalies,
            step_time=round((now - self.last_time) / steps, 6),
            peak_memory_bytes=peak_memory_bytes(self.device),
        )
        self.last_time, self.last_step = now, self.step
        self.before = {}


def make_autocast(precision: str, device: torch.device):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        if precision == "fp16" and device.type == "cpu":
            log("fp16 mixed precision needs a GPU; training in fp32 on the CPU")
        else:
            scaler = (
                torch.amp.GradScaler("cuda")
                if (precision == "fp16" and device.type == "cuda")
                else None
            )
            return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
    return contextlib.nullcontext, None


def train(bundle: Path, job: dict, resume: bool) -> dict:
    output_dir = bundle / job.get("output_dir", "output")
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output_dir / "checkpoint.pt"
    started = time.monotonic()
    generator = seed_everything(int(job.get("seed", 0)), bool(job.get("deterministic")))
    device = pick_device(job.get("device", "auto"), job.get("preferred_device"))
    start_distributed(device)
    x_train, y_train, x_val, y_val = load_data(bundle, job, generator)
    global LABELS
    LABELS = resolve_labels(y_train)
    pairs = [to_tensors(x_train, y_train)]
    if x_val is not None and len(x_val):
        pairs.append(to_tensors(x_val, y_val))
    pairs = place_data(job.get("data_on_device", "auto"), device, pairs)
    (x, y), val = pairs[0], (pairs[1] if len(pairs) > 1 else None)
    core = build_model().to(device)
    if job.get("channels_last"):
        use_channels_last(core)
    loss_fn = make_loss()
    optimizer = make_optimizer(core.parameters())
    share = math.ceil(len(x) / DIST.world)  # each process's part of the data
    steps_per_epoch = math.ceil(share / job["batch_size"])
    scheduler = make_scheduler(optimizer)
    autocast, scaler = make_autocast(job.get("precision", "fp32"), device)
    stopper = EarlyStopping(job.get("early_stopping"))
    history: list[dict] = []
    start_epoch = 1
    max_seconds = job.get("max_seconds")
    sampler = None
    if DIST.active:
        sampler = torch.utils.data.DistributedSampler(
            range(len(x)),
            num_replicas=DIST.world,
            rank=DIST.rank,
            shuffle=bool(job.get("shuffle", True)),
            seed=int(job.get("seed", 0)),
        )
    state = {
        "generator": generator,
        "sampler": sampler,
        "device": device,
        "global_step": 0,
        "epoch": 0,
        "deadline": started + max_seconds if max_seconds else None,
        "debugger": (
            Debugger(core, int(job["debug_every"]), device)
            if job.get("debug_every")
            else None
        ),
    }
    checkpoint = None
    if resume and (DIST.main or not DIST.active) and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if resume and DIST.active:  # rank 0's checkpoint (other nodes may have none)
        import torch.distributed as dist

        shared = [checkpoint]
        dist.broadcast_object_list(shared, src=0)
        checkpoint = shared[0]
    if checkpoint is not None:
        core.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler[0].load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"])
        history = checkpoint["history"]
        stopper.restore(checkpoint["early_stopping"])
        state["global_step"] = checkpoint["global_step"]
        start_epoch = checkpoint["epoch"] + 1
    model = prepare_model(core, job, device)
    epochs = int(job["epochs"])
    emit(
        "start",
        job_id=job.get("job_id"),
        model=job.get("model"),
        framework="pytorch",
        torch=torch.__version__,
        device=str(device),
        device_name=device_name(device),
        epochs=epochs,
        batch_size=job["batch_size"],
        steps_per_epoch=steps_per_epoch,
        train_samples=len(x),
        val_samples=len(val[0]) if val else 0,
        params=sum(p.numel() for p in core.parameters() if p.requires_grad),
        world_size=DIST.world,
        precision=job.get("precision", "fp32"),
        resumed_from=start_epoch - 1 if start_epoch > 1 else None,
    )
    stopped_early = False
    for epoch in range(start_epoch, epochs + 1):
        epoch_start = time.monotonic()
        state["epoch"] = epoch
        metrics = run_epoch(
            model,
            loss_fn,
            optimizer,
            scheduler,
            x,
            y,
            job,
            state,
            device,
            autocast,
            scaler,
        )
        if val is not None:
            metrics.update(
                evaluate(
                    model, loss_fn, val[0], val[1], job["batch_size"], device, autocast
                )
            )
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None and scheduler[1] == "epoch":
            scheduler[0].step()
        history.append({"epoch": epoch, **metrics})
        stop = stopper.observe(epoch, metrics, core)
        emit(
            "epoch",
            epoch=epoch,
            epochs=epochs,
            metrics=metrics,
            duration=round(time.monotonic() - epoch_start, 4),
        )
        if DIST.main:  # one checkpoint, rank 0's (the weights are the same everywhere)
            save_atomic(
                {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler[0].state_dict()
                    if scheduler is not None
                    else None,
                    "generator": generator.get_state(),
                    "history": history,
                    "early_stopping": stopper.state(),
                    "global_step": state["global_step"],
                    "epoch": epoch,
                },
                checkpoint_path,
            )
        if stop:
            stopped_early = True
            settings = stopper.settings
            log(
                f"early stopping after epoch {epoch}: no improvement in "
                f"{settings['monitor']} for {settings['patience']} epochs"
            )
            break
    if stopper.best_state is not None:
        core.load_state_dict(stopper.best_state)
    if not DIST.main:
        return {}
    weights = output_dir / "model.pt"
    save_atomic(core.state_dict(), weights)
    write_json_atomic(history, output_dir / "history.json")
    for name, path in (
        ("weights", weights),
        ("history", output_dir / "history.json"),
        ("checkpoint", checkpoint_path),
    ):
        emit(
            "artifact",
            name=name,
            path=str(path.relative_to(bundle)),
            bytes=path.stat().st_size,
        )
    final = history[-1] if history else {}
    result = {
        "metrics": {k: v for k, v in final.items() if k != "epoch"},
        "best_epoch": stopper.best_epoch or (final.get("epoch") if final else None),
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "wall_time": round(time.monotonic() - started, 3),
    }
    if stopper.best_epoch is not None:
        best = next(h for h in history if h["epoch"] == stopper.best_epoch)
        result["best_metrics"] = {k: v for k, v in best.items() if k != "epoch"}
    emit("done", **result)
    return result


def explain(exc: BaseException) -> str | None:
    text = str(exc)
    if "out of memory" in text.lower():
        return "the GPU ran out of memory: try a smaller batch_size or --precision bf16"
    if type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return (
            "torch.compile failed: train without --compile (on the CPU it needs a C "
            "compiler)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", default="job.json", help="job settings (JSON)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint"
    )
    args = parser.parse_args(argv)
    bundle = Path(args.job).resolve().parent
    job = json.loads(Path(args.job).read_text())
    die_with_parent()
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
        code = 1
        emit(
            "error",
            type=type(exc).__name__,
            message=str(exc),
            traceback=traceback.format_exc(),
            hint=explain(exc),
        )
    finally:
        stop_distributed()
    if DIST.main:
        write_json_atomic({"exit_code": code}, status_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
