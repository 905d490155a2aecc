"""GPU memory growth and device selection, for job subprocesses and for the running kernel.

By default TensorFlow and JAX reserve (nearly) all GPU memory at start-up, so a second
process, or the notebook kernel beside a job, runs out of memory. The variables in
``MEMORY_GROWTH_ENV`` make each framework allocate as it goes. They are read when the
framework first initialises the GPU, not at import, so they must be set before that.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

from neural_jupyter.errors import ConfigurationError

MEMORY_GROWTH_ENV: Mapping[str, str] = MappingProxyType(
    {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
)

_INDEX_LIST = re.compile(r"\d+(,\d+)*")
_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z/-]+")
_RESTART = "restart the kernel and apply the settings before the framework first uses the GPU"


def parse_gpus(gpus: str) -> str | None:
    """Validate a ``--gpu-ids`` value; return the ``CUDA_VISIBLE_DEVICES`` value (``None``:
    all).

    Accepted: ``"0"``, ``"0,1"`` (indices, no repeats), GPU/MIG UUIDs, ``"all"``, ``"none"``.
    """
    text = gpus.replace(" ", "")
    if text.lower() == "all":
        return None
    if text.lower() == "none":
        return "-1"
    tokens = text.split(",")
    uuids = all(_UUID.fullmatch(t) for t in tokens)
    if (uuids or _INDEX_LIST.fullmatch(text)) and len(set(tokens)) == len(tokens):
        return text
    raise ConfigurationError(
        f"--gpu-ids must be a comma-separated list of GPU indices such as 0 or 0,1 "
        f"(each at most once), GPU UUIDs, 'all' or 'none'; got {gpus!r}",
        hint="list the GPUs with %neural_env or nvidia-smi",
    )


def ids_for_count(count: int, environ: Mapping[str, str] | None = None) -> str:
    """The ``--gpu-ids`` that give a local job ``count`` GPUs (``--gpus N``): the first ``count``
    of those this kernel sees (its own ``CUDA_VISIBLE_DEVICES`` when set, else 0 … N-1);
    ``"none"`` for 0. Raises ``ConfigurationError`` when fewer are visible."""
    if count == 0:
        return "none"
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").replace(" ", "")
    if not visible:
        return ",".join(str(index) for index in range(count))
    tokens = [] if visible == "-1" else visible.split(",")
    if count > len(tokens):
        raise ConfigurationError(
            f"--gpus {count}: this kernel sees only {len(tokens)} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={visible})",
            hint="ask for fewer, or choose devices with --gpu-ids",
        )
    return ",".join(tokens[:count])


def _alloc_conf(current: str | None) -> str | None:
    """The PYTORCH_CUDA_ALLOC_CONF to set, merged into the user's own, or ``None`` to keep."""
    wanted = MEMORY_GROWTH_ENV["PYTORCH_CUDA_ALLOC_CONF"]
    if not current:
        return wanted
    if "expandable_segments" in current or "cudaMallocAsync" in current:
        return None  # the user chose; cudaMallocAsync does not take the option
    return f"{current},{wanted}"


def job_environment(
    gpus: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables to add to a job's environment (``base``: what it inherits).

    Memory growth for TensorFlow, JAX and PyTorch, leaving alone any of them the user already
    set in ``base`` (an existing ``PYTORCH_CUDA_ALLOC_CONF`` gets the option appended), plus
    ``CUDA_VISIBLE_DEVICES`` when ``gpus`` (the ``--gpu-ids`` value) selects devices.
    Raises ``ConfigurationError`` for a malformed ``gpus``.
    """
    base = {} if base is None else base
    visible = parse_gpus(gpus) if gpus is not None else None
    extra: dict[str, str] = {}
    if "TF_FORCE_GPU_ALLOW_GROWTH" not in base:
        extra["TF_FORCE_GPU_ALLOW_GROWTH"] = MEMORY_GROWTH_ENV["TF_FORCE_GPU_ALLOW_GROWTH"]
    jax_chosen = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION")
    if not any(name in base for name in jax_chosen):
        extra["XLA_PYTHON_CLIENT_PREALLOCATE"] = MEMORY_GROWTH_ENV["XLA_PYTHON_CLIENT_PREALLOCATE"]
    alloc = _alloc_conf(base.get("PYTORCH_CUDA_ALLOC_CONF"))
    if alloc is not None:
        extra["PYTORCH_CUDA_ALLOC_CONF"] = alloc
    if visible is not None:
        extra["CUDA_VISIBLE_DEVICES"] = visible
    return extra


def _torch_warning(torch: Any) -> str | None:
    try:
        initialized = bool(torch.cuda.is_initialized())
    except Exception:
        return None
    if not initialized:
        return None
    return (
        "PyTorch has already initialised CUDA in this kernel: PYTORCH_CUDA_ALLOC_CONF is "
        f"too late to take effect, {_RESTART}."
    )


def _jax_warning(modules: Mapping[str, Any]) -> str | None:
    bridge = modules.get("jax._src.xla_bridge")
    backends = getattr(bridge, "_backends", None)
    if isinstance(backends, dict) and not backends:
        return None  # imported, but no backend (and no GPU memory) yet
    return (
        "JAX is already imported and may have reserved GPU memory: "
        f"XLA_PYTHON_CLIENT_PREALLOCATE may be too late to take effect, {_RESTART}."
    )


def _tensorflow_warnings(tf: Any) -> list[str]:
    try:
        devices = list(tf.config.list_physical_devices("GPU"))
    except Exception as error:
        return [f"could not list TensorFlow's GPUs to enable memory growth: {error}"]
    for device in devices:
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # "Physical devices cannot be modified after being initialized"
            return [
                "TensorFlow has already initialised its GPUs in this kernel: memory growth is "
                f"too late to take effect, {_RESTART}."
            ]
    return []


def apply_to_kernel(
    environ: MutableMapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> list[str]:
    """Set the memory-growth variables in this process; return warnings where too late.

    Never imports a framework. An imported TensorFlow also gets
    ``tf.config.experimental.set_memory_growth(gpu, True)`` for each GPU. Defaults:
    ``os.environ`` and ``sys.modules``.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    extra = job_environment(base=environ)
    environ.update(extra)
    warnings: list[str] = []
    if "PYTORCH_CUDA_ALLOC_CONF" in extra and "torch" in modules:
        warnings += [w for w in [_torch_warning(modules["torch"])] if w]
    if "XLA_PYTHON_CLIENT_PREALLOCATE" in extra and "jax" in modules:
        warnings += [w for w in [_jax_warning(modules)] if w]
    if "tensorflow" in modules:
        warnings += _tensorflow_warnings(modules["tensorflow"])
    return warnings
