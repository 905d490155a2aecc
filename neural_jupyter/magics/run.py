"""``%%neural_run``: train a model here (or on a platform) with a live monitor."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    PROCS_HELP,
    data_arguments,
    display_arguments,
    flags,
    gpu_arguments,
    gpu_flags,
    loop_arguments,
    loop_options,
    parse_arguments,
    renamed_flag,
)
from neural_jupyter.magics.base import NeuralMagicsBase

DATA_HELP = (
    "Training data: 'X_train,y_train' notebook variables, a DataFrame name with --target, a "
    ".npz/.csv file, 'x.npy,y.npy', 'digits' or 'synthetic'."
)


@magics_class
class RunMagics(NeuralMagicsBase):
    """``%%neural_run``."""

    @magic_arguments()
    @argument("--model", metavar="NAME", help="A compiled model to train (instead of the cell).")
    @data_arguments(DATA_HELP)
    @argument("--epochs", type=int, help="Override the model's epochs.")
    @argument("--batch-size", type=int, help="Override the model's batch size.")
    @argument("--seed", type=int, help="Override the model's random seed.")
    @argument("--platform", help="Where to train (default: local).")
    @argument("--backend", help="Deprecated: the old name of --platform.")
    @argument("--timeout", type=float, metavar="S", help="Stop the job after S seconds.")
    @gpu_arguments(local=True)
    @argument("--procs-per-node", type=int, default=1, metavar="N", help=PROCS_HELP)
    @loop_arguments()
    @argument("--debug", action="store_true", help="Emit per-layer statistics (dashboard).")
    @argument("--no-wait", action="store_true", help="Return the Job at once; train on.")
    @display_arguments()
    @cell_magic
    def neural_run(self, line: str, cell: str) -> Any:
        """Train a model locally with a live monitor; the result is a TrainingRun.

        The cell holds model source or the name of a compiled model. Ctrl-C detaches (the job
        keeps running: %neural_attach ID / %neural_cancel ID).
        """
        from neural_jupyter import api

        args = parse_arguments(self.neural_run, line)
        model = self.resolve_model(args.model, cell)
        gpus, gpu_ids = gpu_flags(args)
        result = api.run(
            model,
            args.data,
            platform=renamed_flag(args, "backend", "platform") or "local",
            gpus=gpus,
            gpu_ids=gpu_ids,
            wait=not args.no_wait,
            monitor=self.monitor(args),
            **self.data_options(args),
            **flags(args, "epochs", "batch_size", "seed", "timeout", "procs_per_node", "debug"),
            **loop_options(args),
        )
        self.store(args.as_name, result)
        return result
