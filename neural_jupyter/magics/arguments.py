"""What every magic shares: shell-style argument splitting, the argument groups declared once
(``--data/--val/--target``, ``--monitor/--as``, ``--gpus/--gpu-ids``, ``--set``), and reading
old flag spellings (deprecated) next to new ones."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from neural_jupyter import deprecation

FRAMEWORK_CHOICES = ("pytorch", "keras")
SHOW_CHOICES = ("summary", "code", "both", "none")
MONITOR_CHOICES = ("auto", "widget", "text", "none")
STATUS_CHOICES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")

PROCS_HELP = "Training processes per machine (data parallel under torchrun; default 1)."
GPUS_HELP = "Number of GPUs."
LOCAL_GPUS_HELP = (
    "Number of GPUs (here: the first N this kernel sees; 0: the CPU). A list of ids such as "
    "0,1 still works for a while, as --gpu-ids."
)
GPU_IDS_HELP = "Which GPUs of this machine to use, e.g. 0,1 or a GPU UUID (CUDA_VISIBLE_DEVICES)."

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def group(*options: Decorator) -> Decorator:
    """Several ``@argument``s as one decorator, in the order written (help lists them so)."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def data_arguments(data_help: str = "Training data, as for %%neural_run.") -> Decorator:
    """``--data``, ``--val``, ``--target``."""
    return group(
        argument("--data", metavar="DATA", help=data_help),
        argument("--val", metavar="DATA", help="Validation data, in the same forms as --data."),
        argument("--target", metavar="COLUMN", help="Label column of a DataFrame or CSV file."),
    )


def monitor_argument() -> Decorator:
    """``--monitor`` (default: ``NeuralMagics.monitor``)."""
    return argument("--monitor", choices=MONITOR_CHOICES, help="Progress display (default: auto).")


def as_argument(help: str = "Also store the result as NAME.") -> Decorator:
    """``--as NAME``."""
    return argument("--as", dest="as_name", metavar="NAME", help=help)


def display_arguments() -> Decorator:
    """``--monitor`` and ``--as``."""
    return group(monitor_argument(), as_argument())


def gpu_arguments(local: bool = False) -> Decorator:
    """``--gpus N`` (a count everywhere) and, where a job runs here, ``--gpu-ids``."""
    count = argument(
        "--gpus", type=gpus_value, metavar="N", help=LOCAL_GPUS_HELP if local else GPUS_HELP
    )
    if not local:
        return count
    return group(count, argument("--gpu-ids", metavar="IDS", help=GPU_IDS_HELP))


def loop_arguments() -> Decorator:
    """The options of the generated training loop that %%neural_run and %neural_submit share
    (precision, torch.compile, channels-last, data placement; docs/warm-start.md)."""
    return group(
        argument("--precision", choices=("fp32", "bf16", "fp16"), help="Mixed precision."),
        argument(
            "--compile",
            action="store_true",
            help="torch.compile the model (PyTorch): the first steps compile it, later ones "
            "run faster on a GPU.",
        ),
        argument(
            "--channels-last",
            action="store_true",
            help="2-D convolution weights in channels-last memory format (PyTorch models "
            "with a Conv2D; faster convolutions on recent GPUs).",
        ),
        argument(
            "--data-on-device",
            choices=("auto", "on", "off"),
            help="Where the data set lives (PyTorch): auto (default) on the device when under "
            "512 MiB; on whenever it fits in half the device's free memory; off in host "
            "memory, each batch copied.",
        ),
    )


def loop_options(args: Any) -> dict[str, Any]:
    """``loop_arguments``' values as API keywords."""
    return {
        **flags(args, "precision", "compile", "channels_last"),
        "data_on_device": args.data_on_device or "auto",
    }


def settings_argument(example: str) -> Decorator:
    """``--set KEY=VALUE`` (repeatable platform options)."""
    return argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"A platform option (repeatable), {example}",
    )


def flags(args: Any, *names: str) -> dict[str, Any]:
    """The parsed values of some flags, by their API keyword (``dest``) names."""
    return {name: getattr(args, name) for name in names}


def gpus_value(text: str) -> int | str:
    """A ``--gpus`` value: a count (digits), or the old list of GPU ids (any other text),
    which ``gpu_flags`` turns into ``--gpu-ids`` with a warning."""
    text = text.strip()
    return int(text) if text.isdigit() else text


def gpu_flags(args: Any, local: bool = True) -> tuple[int | None, str | None]:
    """``(--gpus count, --gpu-ids)``; an old ``--gpus 0,1`` is read as ``--gpu-ids 0,1``
    (with a warning) where the job runs here, and refused for a remote platform."""
    gpus, gpu_ids = args.gpus, getattr(args, "gpu_ids", None)
    if not isinstance(gpus, str):
        return gpus, gpu_ids
    if not local:
        raise UsageError(f"--gpus takes a number of GPUs, got {gpus!r}")
    if gpu_ids is not None:
        raise UsageError("give --gpus (how many GPUs) or --gpu-ids (which ones), not both")
    deprecation.warn(
        f"--gpus {gpus} (a list of GPU ids)",
        f"--gpu-ids {gpus}",
        "--gpus now takes a number of GPUs: --gpus 1 means one GPU, not GPU 1",
        stacklevel=3,
    )
    return None, gpus


def renamed_flag(args: Any, old: str, new: str) -> Any:
    """The value of flag ``--new``, or of its deprecated old name ``--old`` (with a warning);
    both given is a ``UsageError``."""
    old_value, new_value = getattr(args, old), getattr(args, new)
    if old_value is None:
        return new_value
    if new_value is not None:
        raise UsageError(f"give --{new} or its old name --{old}, not both")
    deprecation.warn(f"--{old}", f"--{new}", stacklevel=3)
    return old_value


def split_arguments(line: str) -> list[str]:
    """A magic's argument line split like a shell would: quotes group and are removed
    (``--set "setup=pip install x && y"`` is one argument); an unquoted ``#`` that starts a
    word begins a comment. Backslashes stay literal on Windows (paths)."""
    lexer = shlex.shlex(_strip_comment(line), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    if os.name == "nt":
        lexer.escape = ""
    try:
        return list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UsageError(f"cannot split the arguments: {exc}: {line.strip()}") from None


def _strip_comment(line: str) -> str:
    quote = None
    previous = " "
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and previous.isspace():
            return line[:index]
        previous = char
    return line


def parse_arguments(magic: Any, line: str) -> Any:
    """Parse ``line`` with the ``@argument`` parser of ``magic`` after shell-style splitting.

    (IPython's own ``parse_argstring`` keeps quote characters inside arguments.)
    """
    return magic.parser.parse_args(split_arguments(line))


def key_value(text: str) -> tuple[str, Any]:
    """A ``--set KEY=VALUE`` item, the value read as a bool, int or float where it is one."""
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
