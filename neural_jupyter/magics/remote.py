"""Magics that run the user's own code as jobs: ``%%neural_remote`` (a cell) and
``%neural_script`` (a script or project folder). Thin: parse, call ``neural_jupyter.usercode``,
store the results. The monitor and the cost threshold follow ``NeuralMagics``' settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    as_argument,
    gpu_arguments,
    gpu_flags,
    group,
    key_value,
    monitor_argument,
    parse_arguments,
    settings_argument,
)
from neural_jupyter.magics.base import NeuralMagicsBase

# the options every user-code magic shares (where it runs, budget, confirmation)
platform_arguments = group(
    argument("--platform", default="local", help="Where it runs (default: local)."),
    argument("--instance", help="Instance type, e.g. ml.g5.xlarge."),
    gpu_arguments(),
    argument("--max-hours", type=float, help="Budget: the job is stopped after this long."),
    argument("--timeout", type=float, metavar="S", help="Stop the job after S seconds."),
    argument(
        "--requirements",
        default="auto",
        metavar="R",
        help="What the job installs: auto (the notebook's versions of what the code "
        "imports), none, a requirements file, or a comma-separated list.",
    ),
    settings_argument("as for %%neural_submit."),
    argument("--dry-run", action="store_true", help="Show the plan and cost; send nothing."),
    argument("--yes", action="store_true", help="Confirm a job above the cost threshold."),
    argument("--new", action="store_true", help="Start again even if started before."),
    argument("--no-wait", action="store_true", help="Return the Job at once."),
    monitor_argument(),
    argument("--name", help="Job name (default: the cell or script name)."),
)


@magics_class
class RemoteMagics(NeuralMagicsBase):
    """``%%neural_remote`` and ``%neural_script``."""

    def _options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "platform": args.platform,
            "instance": args.instance,
            "gpus": gpu_flags(args, local=False)[0],
            "max_hours": args.max_hours,
            "timeout": args.timeout,
            "extra": dict(key_value(item) for item in args.settings),
            "yes": args.yes,
            "new": args.new,
            "monitor": self.monitor(args),
            "confirm_above": self.options.confirm_cost_above,
            "requirements": requirements_option(args.requirements),
            "dry_run": args.dry_run,
            "wait": not args.no_wait,
        }

    @magic_arguments()
    @argument(
        "--inputs",
        default="",
        metavar="A,B",
        help="Notebook variables the cell's code gets (the only ones it sees).",
    )
    @argument(
        "--outputs",
        default="",
        metavar="X,Y",
        help="Variables the code defines that come back into the notebook.",
    )
    @platform_arguments
    @cell_magic
    def neural_remote(self, line: str, cell: str) -> Any:
        """Run the cell's Python code as a job (live monitor, job store, cancel); the named
        outputs come back into the notebook. Python API: neural_jupyter.run_cell."""
        from neural_jupyter.usercode import run_cell

        args = parse_arguments(self.neural_remote, line)
        options = self._options(args)
        count = getattr(self.shell, "execution_count", None)
        result = run_cell(
            cell,
            inputs=_names(args.inputs),
            outputs=_names(args.outputs),
            namespace=self.shell.user_ns,
            name=args.name or (f"cell-{count}" if count else "cell"),
            **options,
        )
        if isinstance(result, dict):
            self.shell.user_ns.update(result)
            if result:
                print(f"brought back: {', '.join(result)}")
            return None
        return result

    @magic_arguments()
    @argument("path", help="A script, or a project folder (run from its root).")
    @argument(
        "script_args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="The script's own arguments (everything after PATH).",
    )
    @argument("--script", help="The entry script inside a project folder (default: train.py).")
    @argument("--data", metavar="DIR", help="A data folder (or file) shipped as data/.")
    @argument(
        "--outputs",
        default="outputs",
        metavar="DIR",
        help="The folder (relative to the working directory) brought back.",
    )
    @as_argument()
    @platform_arguments
    @line_magic
    def neural_script(self, line: str) -> Any:
        """Run a script or a project folder as a job and bring its outputs folder back.
        Options go before PATH, the script's arguments after it. Python API:
        neural_jupyter.run_script."""
        from neural_jupyter.usercode import run_script

        args = parse_arguments(self.neural_script, line)
        options = self._options(args)
        if args.name:
            options["name"] = args.name
        result = run_script(
            Path(args.path),
            args.script_args,
            script=args.script,
            data=args.data,
            outputs=args.outputs,
            **options,
        )
        self.store(args.as_name, result)
        return result


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if not name.isidentifier()]
    if bad:
        raise UsageError(f"not Python names: {', '.join(map(repr, bad))}")
    return names


def requirements_option(value: str) -> Any:
    """``auto``, ``none``, a requirements file, or a comma-separated list."""
    if value == "auto":
        return "auto"
    if value.lower() == "none":
        return None
    if Path(value).expanduser().is_file():
        return value
    return [part.strip() for part in value.split(",") if part.strip()]
