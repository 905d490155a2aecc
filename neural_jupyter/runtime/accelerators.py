"""What this machine can compute with: CUDA GPUs, TPU, Apple MPS, CPU count and RAM.

Detection imports no framework. GPUs come from ``nvidia-smi`` (a subprocess with a short
timeout), or from ``torch.cuda`` only when torch is already imported; that path never
initialises CUDA itself, because initialising it would reserve GPU memory in the kernel and
make memory settings too late. Every outside input is injectable (``environ``,
``path_exists``, ``run``, ``modules``, ``read_text``, ``machine``) so tests pass fakes.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neural_jupyter.runtime.environment import PathExists, ReadText, _read_text

Runner = Callable[[Sequence[str], float], str]

NVIDIA_SMI = (
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.used,driver_version",
    "--format=csv,noheader,nounits",
)
NVIDIA_SMI_TIMEOUT = 5.0


@dataclass(frozen=True)
class GPU:
    """One CUDA GPU. ``index`` is nvidia-smi's physical index (from ``torch.cuda``: the
    process's logical index); memory in MiB, ``None`` when unknown."""

    index: int
    name: str
    memory_total_mb: int | None = None
    memory_used_mb: int | None = None
    driver_version: str | None = None


@dataclass(frozen=True)
class Accelerators:
    """The compute found. ``source`` says where the GPU list came from:
    ``"nvidia-smi"``, ``"torch.cuda"`` or ``"none"``; ``notes`` says what went wrong."""

    gpus: tuple[GPU, ...]
    tpu: str | None
    mps: bool
    cpu_count: int
    ram_bytes: int | None
    source: str
    notes: tuple[str, ...] = ()


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run ``argv`` and return its stdout; raises ``FileNotFoundError`` if it is missing."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def _number(text: str) -> int | None:
    try:
        return round(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_nvidia_smi(text: str, visible_devices: str | None = None) -> tuple[GPU, ...]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version
    --format=csv,noheader,nounits`` output, filtered by ``visible_devices``
    (a ``CUDA_VISIBLE_DEVICES`` value; ``None`` means unset). Malformed lines are skipped."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        name = ", ".join(fields[1:-3])  # a name could contain a comma
        total, used, driver = fields[-3:]
        gpus.append(GPU(int(fields[0]), name, _number(total), _number(used), driver or None))
    return filter_visible(tuple(gpus), visible_devices)


def filter_visible(gpus: tuple[GPU, ...], visible_devices: str | None) -> tuple[GPU, ...]:
    """The GPUs a CUDA process sees under ``CUDA_VISIBLE_DEVICES=visible_devices``.

    Like CUDA: listed order, enumeration stops at the first invalid or repeated index, and an
    empty value or ``-1`` hides every GPU. UUID entries (``GPU-...``/``MIG-...``) cannot be
    matched against an index list, so then all GPUs are returned unfiltered.
    """
    if visible_devices is None:
        return gpus
    tokens = [t.strip() for t in visible_devices.split(",")]
    if any(t.upper().startswith(("GPU-", "MIG-")) for t in tokens):
        return gpus
    by_index = {gpu.index: gpu for gpu in gpus}
    chosen: dict[int, GPU] = {}
    for token in tokens:
        gpu = by_index.get(int(token)) if token.isdigit() else None
        if gpu is None or gpu.index in chosen:
            break
        chosen[gpu.index] = gpu
    return tuple(chosen.values())


def _torch_gpus(torch: Any) -> tuple[tuple[GPU, ...], str | None]:
    """GPUs from an already-imported torch, without initialising CUDA."""
    cuda = torch.cuda
    if not cuda.is_available():
        return (), None
    count = cuda.device_count()
    if not cuda.is_initialized():
        note = "torch has not initialised CUDA; GPU names and memory not queried"
        return tuple(GPU(i, "CUDA device") for i in range(count)), note
    # get_device_properties needs no new context; mem_get_info would create one per device
    props = [cuda.get_device_properties(i) for i in range(count)]
    return tuple(GPU(i, p.name, p.total_memory // 2**20) for i, p in enumerate(props)), None


def _detect_gpus(
    environ: Mapping[str, str], run: Runner, modules: Mapping[str, Any]
) -> tuple[tuple[GPU, ...], str, list[str]]:
    torch = modules.get("torch")
    if torch is not None and _torch_cuda_initialized(torch):
        gpus, _ = _torch_gpus(torch)
        return gpus, "torch.cuda", []
    notes: list[str] = []
    try:
        output = run(NVIDIA_SMI, NVIDIA_SMI_TIMEOUT)
    except FileNotFoundError:
        pass  # no NVIDIA driver tools: no CUDA GPU, or a container without them
    except subprocess.TimeoutExpired:
        notes.append(f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT:g} s")
    except subprocess.CalledProcessError as error:
        detail = (error.stdout or error.stderr or "").strip().splitlines()
        notes.append("nvidia-smi failed" + (f": {detail[0]}" if detail else ""))
    except OSError as error:
        notes.append(f"nvidia-smi could not run: {error}")
    else:
        return parse_nvidia_smi(output, environ.get("CUDA_VISIBLE_DEVICES")), "nvidia-smi", notes
    if torch is not None:
        try:
            gpus, note = _torch_gpus(torch)
        except Exception as error:  # a broken CUDA install must not break detection
            notes.append(f"torch.cuda failed: {error}")
        else:
            notes.extend([note] if note else [])
            if gpus:
                return gpus, "torch.cuda", notes
    return (), "none", notes


def _torch_cuda_initialized(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def detect_tpu(environ: Mapping[str, str], path_exists: PathExists) -> str | None:
    """A short TPU description, or ``None``.

    Evidence: ``TPU_ACCELERATOR_TYPE`` (TPU VMs, e.g. ``v2-8``), ``COLAB_TPU_ADDR`` (Colab's
    older TPU nodes), ``TPU_NAME``, a ``/dev/accel0`` device (TPU VM), or ``/dev/vfio/0``
    on Colab/Kaggle (newer TPU VMs; elsewhere VFIO usually means device passthrough).
    """
    if environ.get("TPU_ACCELERATOR_TYPE"):
        return f"TPU {environ['TPU_ACCELERATOR_TYPE']}"
    if environ.get("COLAB_TPU_ADDR"):
        return f"TPU node at {environ['COLAB_TPU_ADDR']}"
    if environ.get("TPU_NAME"):
        return f"TPU {environ['TPU_NAME']}"
    if path_exists("/dev/accel0"):
        return "TPU VM (/dev/accel0)"
    hosted = any(n.startswith(("COLAB_", "KAGGLE_KERNEL")) for n in environ)
    if hosted and path_exists("/dev/vfio/0"):
        return "TPU VM (/dev/vfio)"
    return None


def detect_mps(modules: Mapping[str, Any], machine: tuple[str, str]) -> bool:
    """Apple Metal (MPS): torch's own answer if torch is imported, else Apple silicon macOS."""
    torch = modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.backends.mps.is_available())
        except Exception:
            pass
    system, arch = machine
    return system == "Darwin" and arch == "arm64"


def _cgroup_cpus(read_text: ReadText) -> float | None:
    text = read_text("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max ..."
    if text:
        quota, _, period = text.strip().partition(" ")
    else:
        quota = (read_text("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or "").strip()
        period = (read_text("/sys/fs/cgroup/cpu/cpu.cfs_period_us") or "").strip()
    try:
        quota_n, period_n = int(quota), int(period)
    except ValueError:
        return None
    return quota_n / period_n if quota_n > 0 and period_n > 0 else None


def cpu_count(read_text: ReadText = _read_text) -> int:
    """CPUs this process may use: its affinity set, capped by a container's CPU quota."""
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = _cgroup_cpus(read_text)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def ram_bytes(read_text: ReadText = _read_text) -> int | None:
    """Total memory: /proc/meminfo (else sysconf), capped by a container's memory limit."""
    total = None
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            break
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = (read_text(path) or "").strip()
        if limit.isdigit() and int(limit) > 0:
            total = int(limit) if total is None else min(total, int(limit))
            break
    return total


def detect_accelerators(
    environ: Mapping[str, str] | None = None,
    path_exists: PathExists | None = None,
    run: Runner | None = None,
    *,
    modules: Mapping[str, Any] | None = None,
    read_text: ReadText | None = None,
    machine: tuple[str, str] | None = None,
) -> Accelerators:
    """Detect GPUs, TPU, MPS, CPUs and RAM; imports no framework that is not imported yet.

    ``run(argv, timeout) -> stdout`` runs a command (``FileNotFoundError`` when missing);
    ``machine`` is ``(platform.system(), platform.machine())``.
    """
    environ = os.environ if environ is None else environ
    path_exists = os.path.exists if path_exists is None else path_exists
    modules = sys.modules if modules is None else modules
    read_text = _read_text if read_text is None else read_text
    machine = (platform.system(), platform.machine()) if machine is None else machine
    gpus, source, notes = _detect_gpus(environ, run or run_command, modules)
    return Accelerators(
        gpus=gpus,
        tpu=detect_tpu(environ, path_exists),
        mps=detect_mps(modules, machine),
        cpu_count=cpu_count(read_text),
        ram_bytes=ram_bytes(read_text),
        source=source,
        notes=tuple(notes),
    )
