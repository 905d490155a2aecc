"""``%neural_submit``: train on another machine or a cloud platform (or open the panel)."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    PROCS_HELP,
    data_arguments,
    display_arguments,
    flags,
    gpu_arguments,
    gpu_flags,
    key_value,
    loop_arguments,
    loop_options,
    parse_arguments,
    settings_argument,
)
from neural_jupyter.magics.base import NeuralMagicsBase


@magics_class
class SubmitMagics(NeuralMagicsBase):
    """``%neural_submit``."""

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
    @gpu_arguments()
    @argument("--gpu-type", help="GPU model where the platform lets you choose.")
    @argument("--max-hours", type=float, help="Budget: the job is stopped after this long.")
    @argument("--spot", action="store_true", help="Use spot / preemptible capacity.")
    @argument("--region", help="Platform region.")
    @argument("--nodes", type=int, default=1, metavar="N", help="Machines (data parallel).")
    @argument("--procs-per-node", type=int, default=1, metavar="N", help=PROCS_HELP)
    @settings_argument(
        "e.g. --set role=arn:aws:iam::123456789012:role/SM; quote values with spaces: "
        '--set "setup=pip install -r requirements.txt".'
    )
    @data_arguments()
    @argument("--epochs", type=int, help="Override the model's epochs.")
    @argument("--batch-size", type=int, help="Override the model's batch size.")
    @loop_arguments()
    @argument("--dry-run", action="store_true", help="Show the request and the cost; send nothing.")
    @argument("--yes", action="store_true", help="Confirm a job above the cost threshold.")
    @argument("--new", action="store_true", help="Submit again even if submitted before.")
    @argument("--no-wait", action="store_true", help="Return the Job at once.")
    @display_arguments()
    @line_magic
    def neural_submit(self, line: str) -> Any:
        """Send a training job to another machine or a cloud platform and watch it live.

        Without --platform, a panel offers platforms, instance types with prices, a cost
        estimate and a credentials check. Re-running the same submit finds the job it already
        started instead of paying for a second one.
        """
        from neural_jupyter import api

        args = parse_arguments(self.neural_submit, line)
        model = self.resolve_model(args.model, None)
        common = {
            **self.data_options(args),
            **flags(args, "epochs", "batch_size"),
            **loop_options(args),
            "confirm_above": self.options.confirm_cost_above,
        }
        if not args.platform:
            return self._submit_panel(model, args.data, common)
        extra = dict(key_value(item) for item in args.settings)
        if args.host:
            extra["host"] = args.host
        if args.trust_new_host:
            extra["trust_new_host"] = True
        result = api.submit(
            model,
            args.data,
            gpus=gpu_flags(args, local=False)[0],
            extra=extra,
            wait=not args.no_wait,
            monitor=self.monitor(args),
            **flags(args, "platform", "instance", "gpu_type", "max_hours", "spot", "region"),
            **flags(args, "nodes", "procs_per_node", "dry_run", "yes", "new"),
            **common,
        )
        self.store(args.as_name, result)
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

        self.display(SubmitPanel(model.name, submit, show))
        return None
