"""``%neural_warm``: start, stop or show this kernel's warm worker (``runtime/warm.py``).
Thin: parse, call ``neural_jupyter.warm``, display.

    %config WarmMagics.warm_start = "off"      # auto (default), on, off
    %config WarmMagics.idle_timeout = 300      # seconds without a job before it exits
"""

from __future__ import annotations

from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Enum, Float, default, observe, validate

from neural_jupyter.magics.arguments import FRAMEWORK_CHOICES, parse_arguments
from neural_jupyter.magics.base import ConfigurableMagics, non_negative
from neural_jupyter.runtime import warm


@magics_class
class WarmMagics(ConfigurableMagics):
    """``%neural_warm`` and the warm-start options."""

    warm_start = Enum(
        warm.MODES,
        config=True,
        help="When local training jobs get a warm worker (the framework imported once, "
        "forked per job): auto starts it in the background after the first local run, on "
        "also right away, off never (and stops a running one). Default: "
        "$NEURAL_JUPYTER_WARM_START or auto.",
    )
    idle_timeout = Float(
        config=True,
        help="Seconds without a job after which the warm worker exits (0: only with the "
        "kernel). Default: $NEURAL_JUPYTER_WARM_IDLE or 900.",
    )

    @default("warm_start")
    def _default_mode(self) -> str:
        return warm.status().mode

    @default("idle_timeout")
    def _default_idle(self) -> float:
        return warm.status().idle_timeout

    @validate("idle_timeout")
    def _valid_idle(self, proposal: Any) -> float:
        return non_negative("WarmMagics", proposal)

    @observe("warm_start")
    def _mode_changed(self, change: dict[str, Any]) -> None:
        warm.configure(mode=change["new"])

    @observe("idle_timeout")
    def _idle_changed(self, change: dict[str, Any]) -> None:
        warm.configure(idle_timeout=change["new"])

    @magic_arguments()
    @argument(
        "action",
        nargs="?",
        default="status",
        choices=("status", "start", "stop"),
        help="status (default): state, framework, pid, resident memory and why the last "
        "local job started cold, if it did; start: start a worker now; stop: stop it "
        "(running jobs go on).",
    )
    @argument(
        "--framework",
        default="pytorch",
        choices=FRAMEWORK_CHOICES,
        help="The framework the started worker imports (keras needs KERAS_BACKEND=torch).",
    )
    @argument("--wait", action="store_true", help="With start: return once it is ready.")
    @line_magic
    def neural_warm(self, line: str) -> Any:
        """Start, stop or show the warm worker that local training jobs start from."""
        args = parse_arguments(self.neural_warm, line)
        if args.action == "start":
            return warm.start(args.framework, wait=args.wait)
        if args.action == "stop":
            print("warm worker stopped" if warm.stop() else "no warm worker was running")
            return None
        return warm.status()
