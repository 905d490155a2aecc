"""``%neural_sweep``: a model over its search space × seeds; re-running resumes."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    data_arguments,
    display_arguments,
    flags,
    parse_arguments,
    renamed_flag,
)
from neural_jupyter.magics.base import NeuralMagicsBase


@magics_class
class SweepMagics(NeuralMagicsBase):
    """``%neural_sweep``."""

    @magic_arguments()
    @argument("model", metavar="MODEL", help="A compiled model with HPO(...) values.")
    @data_arguments()
    @argument(
        "--strategy",
        choices=("grid", "random", "optuna"),
        default=None,
        help="grid (every combination), random (--trials N) or optuna (TPE + pruning); "
        "default: the model's search_method, else grid.",
    )
    @argument("--trials", type=int, help="Number of configurations (random, optuna).")
    @argument("--seeds", type=int, default=1, help="Seeds per configuration.")
    @argument(
        "--parallel",
        type=int,
        default=None,
        help="Trials running at once (default: 1, or on a Ray cluster as many as it holds).",
    )
    @argument("--platform", help="Where trials run (default: local).")
    @argument("--backend", help="Deprecated: the old name of --platform.")
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
    @display_arguments()
    @line_magic
    def neural_sweep(self, line: str) -> Any:
        """Train a model over its search space × seeds; re-running resumes (finished trials
        are reused, failed or lost ones run again)."""
        from neural_jupyter import api

        args = parse_arguments(self.neural_sweep, line)
        result = api.sweep(
            self.resolve_model(args.model, None),
            args.data,
            platform=renamed_flag(args, "backend", "platform") or "local",
            monitor=self.monitor(args),
            **self.data_options(args),
            **flags(args, "strategy", "trials", "seeds", "parallel", "metric", "mode"),
            **flags(args, "timeout_per_trial", "name", "grid", "storage"),
        )
        self.store(args.as_name, result)
        return result
