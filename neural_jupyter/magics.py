"""IPython magics: thin wrappers that parse arguments, call the public API and display.

Options are traitlets (``%config NeuralMagics.default_backend = "keras"``); each magic's
``@argument`` help strings are its documentation (``%neural_compile?``) and feed the generated
magics reference.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Enum, Float
from traitlets.config import Configurable

BACKEND_CHOICES = ("pytorch", "keras")
SHOW_CHOICES = ("summary", "code", "both", "none")
MONITOR_CHOICES = ("auto", "widget", "text", "none")
STATUS_CHOICES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")


@magics_class
class NeuralMagics(Magics, Configurable):
    """The ``%neural_*`` magics."""

    default_backend = Enum(
        BACKEND_CHOICES,
        default_value="pytorch",
        config=True,
        help="Framework that %%neural_compile generates code for when --backend is not given.",
    )
    show = Enum(
        SHOW_CHOICES,
        default_value="summary",
        config=True,
        help="What %%neural_compile displays when --show is not given.",
    )

    monitor = Enum(
        MONITOR_CHOICES,
        default_value="auto",
        config=True,
        help="How %%neural_run and %neural_attach show progress: a widget where a Jupyter "
        "front-end is likely, text otherwise (auto), or always one of them.",
    )

    confirm_cost_above = Float(
        5.0,
        config=True,
        help="%neural_submit asks for --yes (or a click in the panel) when a job's budget "
        "(--max-hours × hourly price) is above this many US dollars.",
    )

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        Configurable.__init__(self, config=shell.config if shell is not None else None)
        Magics.__init__(self, shell=shell, **kwargs)
        if shell is not None:
            shell.configurables.append(self)

    # --- helpers -----------------------------------------------------------------------------
    def _cell_name(self) -> str:
        count = getattr(self.shell, "execution_count", None)
        return f"<cell In[{count}]>" if count else "<cell>"

    def _store(self, name: str, value: Any) -> None:
        if not name.isidentifier():
            raise UsageError(f"--as needs a Python identifier, got {name!r}")
        self.shell.user_ns[name] = value

    def _display(self, *objects: Any) -> None:
        from IPython.display import display

        display(*objects)

    # --- %%neural_compile ---------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "path",
        nargs="?",
        help="Line-magic form: a .neural file to compile (the cell form compiles the cell).",
    )
    @argument(
        "-b",
        "--backend",
        choices=BACKEND_CHOICES,
        help="Framework to generate code for (default: NeuralMagics.default_backend).",
    )
    @argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="Variable to store the CompiledModel in (default: the network's name).",
    )
    @argument(
        "--show",
        choices=SHOW_CHOICES,
        help="Display the summary table, the generated code, both, or nothing.",
    )
    @line_cell_magic
    def neural_compile(self, line: str, cell: str | None = None) -> None:
        """Compile a model: parse, validate, infer shapes, generate code, show a summary.

        The CompiledModel is stored in the namespace under the network's name (or --as).
        """
        from neural_jupyter.compiler import compile_all, compile_file

        args = parse_argstring(self.neural_compile, line)
        backend = args.backend or self.default_backend
        if cell is None:
            if not args.path:
                raise UsageError("give a .neural file, or use %%neural_compile with a cell")
            models = [compile_file(args.path, backend)]
        else:
            if args.path:
                raise UsageError(f"unexpected argument {args.path!r} in the cell form")
            models = compile_all(cell, backend, source_name=self._cell_name())
        if args.as_name and len(models) != 1:
            raise UsageError("--as needs exactly one network in the cell")
        show = args.show or self.show
        for model in models:
            self._store(args.as_name or model.name, model)
            self._show_model(model, show)

    def _show_model(self, model: Any, show: str) -> None:
        from IPython.display import Code

        if show in ("summary", "both"):
            self._display(model.summary())
        if show in ("code", "both"):
            self._display(Code(model.code, language="python"))

    # --- %%neural_run -------------------------------------------------------------------------
    def _resolve_model(self, model_name: str | None, cell: str, backend: str) -> Any:
        from neural_jupyter.compiler import CompiledModel, compile_model

        text = cell.strip()
        name = model_name or (text if text.isidentifier() else None)
        if name is not None:
            value = self.shell.user_ns.get(name)
            if not isinstance(value, CompiledModel):
                raise UsageError(
                    f"'{name}' is not a compiled model in this notebook; run "
                    "%%neural_compile first or put the model source in the cell"
                )
            return value
        if not text:
            raise UsageError(
                "put the model source (or a compiled model's name) in the cell, or use --model NAME"
            )
        return compile_model(text, backend, source_name=self._cell_name())

    @magic_arguments()
    @argument("--model", metavar="NAME", help="A compiled model to train (instead of the cell).")
    @argument(
        "--data",
        metavar="DATA",
        help="Training data: 'X_train,y_train' notebook variables, a DataFrame name with "
        "--target, a .npz/.csv file, 'x.npy,y.npy', 'digits' or 'synthetic'.",
    )
    @argument("--val", metavar="DATA", help="Validation data, in the same forms as --data.")
    @argument("--target", metavar="COLUMN", help="Label column of a DataFrame or CSV file.")
    @argument("--epochs", type=int, help="Override the model's epochs.")
    @argument("--batch-size", type=int, help="Override the model's batch size.")
    @argument("--seed", type=int, help="Override the model's random seed.")
    @argument("--backend", default="local", help="Where to train (default: local).")
    @argument("--timeout", type=float, metavar="S", help="Stop the job after S seconds.")
    @argument("--gpus", metavar="IDS", help="GPUs to use, e.g. 0,1 (CUDA_VISIBLE_DEVICES).")
    @argument("--precision", choices=("fp32", "bf16", "fp16"), help="Mixed precision.")
    @argument("--debug", action="store_true", help="Emit per-layer statistics (dashboard).")
    @argument("--no-wait", action="store_true", help="Return the Job at once; train on.")
    @argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")
    @argument("--as", dest="as_name", metavar="NAME", help="Also store the result as NAME.")
    @cell_magic
    def neural_run(self, line: str, cell: str) -> Any:
        """Train a model locally with a live monitor; the result is a TrainingRun.

        The cell holds model source or the name of a compiled model. Ctrl-C detaches (the job
        keeps running: %neural_attach ID / %neural_cancel ID).
        """
        from neural_jupyter import api

        args = parse_argstring(self.neural_run, line)
        model = self._resolve_model(args.model, cell, self.default_backend)
        result = api.run(
            model,
            args.data,
            val=args.val,
            target=args.target,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            backend=args.backend,
            timeout=args.timeout,
            gpus=args.gpus,
            precision=args.precision,
            debug=args.debug,
            wait=not args.no_wait,
            monitor=args.monitor or self.monitor,
            namespace=self.shell.user_ns,
        )
        if args.as_name:
            self._store(args.as_name, result)
        return result

    # --- jobs -----------------------------------------------------------------------------------
    # --- %neural_submit -----------------------------------------------------------------------
    @magic_arguments()
    @argument("model", metavar="MODEL", help="A compiled model in the notebook.")
    @argument("--platform", help="ssh, sagemaker, ...; without it, the submission panel opens.")
    @argument("--host", help="SSH: a ~/.ssh/config alias or user@host:port.")
    @argument(
        "--trust-new-host",
        action="store_true",
        help="SSH: accept and remember an unknown host key (off by default: unknown hosts "
        "are refused).",
    )
    @argument("--instance", help="Instance type, e.g. ml.g5.xlarge.")
    @argument("--gpus", type=int, help="Number of GPUs.")
    @argument("--gpu-type", help="GPU model where the platform lets you choose.")
    @argument("--max-hours", type=float, help="Budget: the job is stopped after this long.")
    @argument("--spot", action="store_true", help="Use spot / preemptible capacity.")
    @argument("--region", help="Platform region.")
    @argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A platform option (repeatable), e.g. --set role=arn:aws:iam::1:role/SM.",
    )
    @argument("--data", metavar="DATA", help="Training data, as for %%neural_run.")
    @argument("--val", metavar="DATA", help="Validation data.")
    @argument("--target", metavar="COLUMN", help="Label column of a DataFrame or CSV file.")
    @argument("--epochs", type=int, help="Override the model's epochs.")
    @argument("--batch-size", type=int, help="Override the model's batch size.")
    @argument("--dry-run", action="store_true", help="Show the request and the cost; send nothing.")
    @argument("--yes", action="store_true", help="Confirm a job above the cost threshold.")
    @argument("--new", action="store_true", help="Submit again even if submitted before.")
    @argument("--no-wait", action="store_true", help="Return the Job at once.")
    @argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")
    @argument("--as", dest="as_name", metavar="NAME", help="Also store the result as NAME.")
    @line_magic
    def neural_submit(self, line: str) -> Any:
        """Send a training job to another machine or a cloud platform and watch it live.

        Without --platform, a panel offers platforms, instance types with prices, a cost
        estimate and a credentials check. Re-running the same submit finds the job it already
        started instead of paying for a second one.
        """
        from neural_jupyter import api

        args = parse_argstring(self.neural_submit, line)
        model = self._resolve_model(args.model, "", self.default_backend)
        common = {
            "val": args.val,
            "target": args.target,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "namespace": self.shell.user_ns,
            "confirm_above": self.confirm_cost_above,
        }
        if not args.platform:
            return self._submit_panel(model, args.data, common)
        extra = dict(_key_value(item) for item in args.settings)
        if args.host:
            extra["host"] = args.host
        if args.trust_new_host:
            extra["trust_new_host"] = True
        result = api.submit(
            model,
            args.data,
            platform=args.platform,
            instance=args.instance,
            gpus=args.gpus,
            gpu_type=args.gpu_type,
            max_hours=args.max_hours,
            spot=args.spot,
            region=args.region,
            extra=extra,
            dry_run=args.dry_run,
            yes=args.yes,
            new=args.new,
            wait=not args.no_wait,
            monitor=args.monitor or self.monitor,
            **common,
        )
        if args.as_name:
            self._store(args.as_name, result)
        return result

    def _submit_panel(self, model: Any, data: Any, common: dict[str, Any]) -> None:
        from neural_jupyter import api
        from neural_jupyter.ui.monitor import widget_frontend
        from neural_jupyter.ui.submit_panel import SubmitPanel, text_panel

        if not widget_frontend():
            print(text_panel(model.name))
            return None

        def submit(**choices: Any) -> Any:
            return api.submit(
                model, data, yes=True, wait=False, monitor="none", **choices, **common
            )

        def show(job: Any) -> Any:
            return api.watch_in_background(job, "widget", show=False)

        self._display(SubmitPanel(model.name, submit, show))
        return None

    @magic_arguments()
    @argument("--status", type=str.upper, choices=STATUS_CHOICES, help="Only jobs in this state.")
    @argument(
        "--instances",
        action="store_true",
        help="List paid cloud instances that are still running (billing), not jobs.",
    )
    @argument("--backend", help="Only jobs on this backend.")
    @argument("--limit", type=int, default=20, help="At most this many (newest first).")
    @line_magic
    def neural_jobs(self, line: str) -> None:
        """List jobs from the job store (all kernels, all backends)."""
        from neural_jupyter import jobs
        from neural_jupyter.ui.tables import JobTable

        args = parse_argstring(self.neural_jobs, line)
        if args.instances:
            from neural_jupyter.ui.tables import InstanceTable

            self._display(InstanceTable(jobs.JobStore().live_instances()))
            return
        records = [
            job.record
            for job in jobs.list(status=args.status, backend=args.backend, limit=args.limit)
        ]
        self._display(JobTable(records))

    @magic_arguments()
    @argument("job_id", metavar="ID", help="Job id (a unique prefix is enough).")
    @argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")
    @line_magic
    def neural_attach(self, line: str) -> Any:
        """Watch a job again (also after a kernel restart); returns its TrainingRun."""
        from neural_jupyter import api

        args = parse_argstring(self.neural_attach, line)
        return api.attach(args.job_id, args.monitor or self.monitor)

    @magic_arguments()
    @argument("job_id", metavar="ID", help="Job id (a unique prefix is enough).")
    @line_magic
    def neural_cancel(self, line: str) -> None:
        """Stop a job for good (its whole process tree, or the remote job)."""
        from neural_jupyter import api

        args = parse_argstring(self.neural_cancel, line)
        job = api.cancel(args.job_id)
        print(f"job {job.id} is {job.record.status.value}")

    @magic_arguments()
    @argument("job_id", metavar="ID", help="Job id (a unique prefix is enough).")
    @argument("--tail", type=int, metavar="N", help="Only the last N lines.")
    @line_magic
    def neural_logs(self, line: str) -> None:
        """Print a job's log lines (its output without the event protocol)."""
        from neural_jupyter import jobs

        args = parse_argstring(self.neural_logs, line)
        for text in jobs.get(args.job_id).logs(tail=args.tail):
            print(text)

    # --- %neural_sweep --------------------------------------------------------------------------
    @magic_arguments()
    @argument("model", metavar="MODEL", help="A compiled model with HPO(...) values.")
    @argument("--data", metavar="DATA", help="Training data, as for %%neural_run.")
    @argument("--val", metavar="DATA", help="Validation data.")
    @argument("--target", metavar="COLUMN", help="Label column of a DataFrame or CSV file.")
    @argument(
        "--strategy",
        choices=("grid", "random", "optuna"),
        default="grid",
        help="grid (every combination), random (--trials N) or optuna (TPE + pruning).",
    )
    @argument("--trials", type=int, help="Number of configurations (random, optuna).")
    @argument("--seeds", type=int, default=1, help="Seeds per configuration.")
    @argument("--parallel", type=int, default=1, help="Trials running at once.")
    @argument("--backend", default="local", help="Where trials run.")
    @argument("--metric", default="val_loss", help="Metric to optimise (best epoch).")
    @argument("--mode", choices=("min", "max"), help="Default: max for accuracy, else min.")
    @argument("--timeout-per-trial", type=float, metavar="S", help="Stop a trial after S s.")
    @argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="Values for a hyper-parameter or run setting (epochs, batch_size).",
    )
    @argument("--name", help="Sweep name (re-using a name resumes that sweep).")
    @argument("--storage", help="Where results and artifacts go: a directory or s3://bucket/p.")
    @argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")
    @argument("--as", dest="as_name", metavar="NAME", help="Also store the result as NAME.")
    @line_magic
    def neural_sweep(self, line: str) -> Any:
        """Train a model over its search space × seeds; re-running resumes (finished trials
        are reused, failed or lost ones run again)."""
        from neural_jupyter.jobs.sweeps import Sweep
        from neural_jupyter.ui.monitor import widget_frontend
        from neural_jupyter.ui.sweep_monitor import (
            SweepResultView,
            TextSweepMonitor,
            WidgetSweepMonitor,
        )

        args = parse_argstring(self.neural_sweep, line)
        model = self._resolve_model(args.model, "", self.default_backend)
        mode = args.monitor or self.monitor
        use_widget = mode == "widget" or (mode == "auto" and widget_frontend())
        view = (
            WidgetSweepMonitor() if use_widget else (TextSweepMonitor() if mode != "none" else None)
        )
        sweep = Sweep(
            model,
            args.data,
            strategy=args.strategy,
            trials=args.trials,
            seeds=args.seeds,
            parallel=args.parallel,
            backend=args.backend,
            metric=args.metric,
            mode=args.mode,
            timeout_per_trial=args.timeout_per_trial,
            name=args.name,
            grid=args.grid,
            val=args.val,
            target=args.target,
            namespace=self.shell.user_ns,
            storage=args.storage,
            on_update=view,
        )
        if use_widget:
            self._display(view)
        result = sweep.run()
        if args.as_name:
            self._store(args.as_name, result)
        self._display(SweepResultView(result))
        return result

    # --- builder --------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", default="MyNet", help="Network name to start with.")
    @argument("--input", dest="input_shape", default="28, 28, 1", help="Input shape to start with.")
    @line_magic
    def neural_builder(self, line: str) -> Any:
        """A form to build a network layer by layer with live validation; writes the model
        source into a new cell."""
        from neural_jupyter.ui.builder import ModelBuilder

        args = parse_argstring(self.neural_builder, line)
        builder = ModelBuilder(self.shell, args.name, args.input_shape)
        self._display(builder)
        return None

    # --- dashboard ------------------------------------------------------------------------------
    @magic_arguments()
    @argument("job_id", nargs="?", metavar="JOB", help="Job to show first (default: newest).")
    @argument(
        "--tunnel",
        choices=("auto", "none", "colab", "ngrok", "proxy"),
        default="auto",
        help="How to reach it: auto = Colab's proxy on Colab, jupyter-server-proxy on a hub, "
        "else inline; ngrok only when asked (needs NGROK_AUTHTOKEN; always password-protected).",
    )
    @argument("--port", type=int, default=0, help="Local port (default: a free one).")
    @argument("--stop", action="store_true", help="Stop the dashboard and close its tunnel.")
    @argument(
        "--keep-tunnel", action="store_true", help="Keep an ngrok tunnel open after the job ends."
    )
    @line_magic
    def neural_dashboard(self, line: str) -> Any:
        """A live debug dashboard (curves, gradient flow, activations, anomalies, model graph).

        Listens on 127.0.0.1 with a random token; run %%neural_run --debug for layer stats.
        """
        from neural_jupyter.ui.dashboard import control

        args = parse_argstring(self.neural_dashboard, line)
        if args.stop:
            print("dashboard stopped" if control.stop() else "no dashboard was running")
            return None
        job_id = None
        if args.job_id:
            from neural_jupyter import jobs

            job_id = jobs.get(args.job_id).id
        board = control.start(
            job_id, args.tunnel, args.port, close_tunnel_at_job_end=not args.keep_tunnel
        )
        if board.tunnel.kind == "ngrok":
            print(
                f"dashboard: {board.url}\nuser: {board.tunnel.username}  password: "
                f"{board.tunnel.password}  (shown once; the tunnel closes with --stop, at "
                "job end or when the kernel exits)"
            )
        self._display(board)
        return None

    # --- environment ----------------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "--apply",
        action="store_true",
        help="Also set the GPU memory-growth variables in this kernel (warns when a "
        "framework was already initialised and it is too late).",
    )
    @line_magic
    def neural_env(self, line: str) -> None:
        """Show the platform, accelerators, framework versions and the job settings."""
        from neural_jupyter.runtime.env_report import environment_report
        from neural_jupyter.runtime.gpu_settings import apply_to_kernel

        args = parse_argstring(self.neural_env, line)
        self._display(environment_report())
        if args.apply:
            warnings = apply_to_kernel()
            for warning in warnings:
                print(f"warning: {warning}")
            print("memory-growth settings applied to this kernel")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set takes KEY=VALUE, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), int(value)
    except ValueError:
        pass
    try:
        return key.strip(), float(value)
    except ValueError:
        return key.strip(), value
