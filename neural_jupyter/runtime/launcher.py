"""The launcher a remote platform runs: get the job bundle, run ``train.py``, hand back its
outputs. It is copied into every bundle as ``launcher.py`` and uses the standard library
only (plus ``google-cloud-storage`` where it is there, for ``gs://`` locations), so it runs
in any platform's image; each platform's entry command calls it with arguments:

    python launcher.py [--bundle SOURCE] [--work DIR] [--install-missing] [--budget-margin]
                       [--packages auto|job|env] [--offline]
                       [--outputs DEST] [--print-outputs MAX_BYTES] [--logs URI]
                       [--data-search DIR] [--neural_checkpoint_dir DIR]
                       [--nnodes N --nproc-per-node P --node-rank R
                        --master-addr HOST --master-port PORT]

``SOURCE``: a ``.tar.gz`` path, an ``http(s)://`` or ``gs://`` URI, ``embedded`` (the
``BUNDLE`` below, filled in by a platform that ships one file) or nothing: the bundle is the
launcher's own directory. ``DEST``: a directory or a ``gs://`` prefix. ``--print-outputs``
prints the output files (every file under ``output/``) base64-encoded into the log between
``##neural-artifact`` lines (at most MAX_BYTES in all) for platforms whose log is the only
way back. ``--logs`` copies the job's stdout/stderr to ``URI/stdout.log`` /
``URI/stderr.log`` every ``NEURAL_JUPYTER_LOG_SYNC_SECONDS`` (15) seconds. With
``SM_MODEL_DIR`` set (SageMaker) the outputs are written there, or under
``--neural_checkpoint_dir`` (managed spot), which also resumes from its last checkpoint. With
``--nnodes``/``--nproc-per-node`` above 1 × 1, ``train.py`` runs under torchrun
(``python -m torch.distributed.run``) as node ``--node-rank`` of the rendezvous at
``--master-addr:--master-port``: ``P`` processes here, ``N × P`` in all, each with torchrun's
``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` environment (a platform that spans machines, such as
``ray_driver.py``, starts one launcher per machine). Only node 0 hands outputs back
(``--outputs``, ``--print-outputs``: rank 0 writes them); node ``R`` > 0 copies its log to
``URI/node-R/`` instead of ``URI/`` (its errors stay readable, node 0's copy intact). The exit
code is ``train.py``'s (128 + N for signal N); under torchrun, torchrun's (non-zero when any
process failed).

Requirements: a bundle whose ``job.json`` lists ``install_requirements`` (user code: the
notebook's versions of what it imports) gets each one installed that the image lacks or has
at another version, on every platform; ``--install-missing`` installs the lines of
``requirements.txt`` the image lacks (model bundles). The image's own builds of the GPU
frameworks (``KEEP_IMAGE_BUILDS``) are kept: they match the platform's drivers. Packages go
into the interpreter's environment (``--packages env``: a platform's throw-away container)
or into a folder of the job put on ``PYTHONPATH`` (``--packages job``: a machine that
outlives the job, whose environment stays as it was); ``auto`` (the default) is ``env``
unless the environment cannot be written to (PEP 668 "externally managed", or a read-only
site-packages); ``--offline`` (a platform without internet) only says what it would
install. A failed install is reported and the code runs anyway (its import error then says
what is missing).
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import urllib.parse
import urllib.request

ARTIFACT_MARK = "##neural-artifact"
ARTIFACT_CHUNK = 6144  # bytes of an output file per log line (before base64)
EXIT_RECORD = "status.json"
BUDGET_MARGIN = (120.0, 0.1)  # stop this much (seconds, fraction) before the platform does
PACKAGES = ".neural-packages"  # where requirements go when the environment is read-only
# Distributions an image builds for its GPUs and drivers: kept when present, whatever
# version the notebook has (a pip-installed wheel would not match the platform's CUDA).
KEEP_IMAGE_BUILDS = (
    "torch",
    "torchvision",
    "torchaudio",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "jax",
    "jaxlib",
    "triton",
    "xformers",
    "nvidia-*",
    "cupy-*",
)
BUNDLE = ""  # a platform that ships one file puts the bundle here (base64 of a .tar.gz)
ARGS: list[str] = []  # ... and its arguments here


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launcher.py", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="", help="where the bundle comes from")
    parser.add_argument("--work", default="", help="where to unpack it (default: a temp dir)")
    parser.add_argument("--sha256", default=os.environ.get("NJ_BUNDLE_SHA256", ""))
    parser.add_argument("--install-missing", action="store_true")
    parser.add_argument("--packages", choices=("auto", "job", "env"), default="auto")
    parser.add_argument("--offline", action="store_true", help="never run pip")
    parser.add_argument("--budget-margin", action="store_true")
    parser.add_argument("--outputs", default="", help="copy output/ here at the end")
    parser.add_argument("--print-outputs", type=int, default=-1, metavar="MAX_BYTES")
    parser.add_argument("--logs", default="", help="copy the logs under this gs:// prefix")
    parser.add_argument(
        "--data-search", default="", help="DIR[:DIR...] to find data.npz in if missing"
    )
    parser.add_argument("--neural_checkpoint_dir", default="")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=None)
    parser.add_argument("--master-addr", default=None)
    parser.add_argument("--master-port", type=int, default=None)
    args, _ = parser.parse_known_args(argv)  # SageMaker adds its own hyperparameters
    return args


# --- storage ------------------------------------------------------------------------------
_gcs = None


def _gcs_client():
    """A Cloud Storage client, or None: then the FUSE mount at /gcs/ is used."""
    global _gcs
    if _gcs is None:
        try:
            from google.cloud import storage

            _gcs = storage.Client(project=os.environ.get("CLOUD_ML_PROJECT_ID") or None)
        except Exception as exc:  # no library or no credentials
            print(f"neural-jupyter: using /gcs/ ({exc})", file=sys.stderr)
            _gcs = False
    return _gcs or None


def fetch(source: str, path: str) -> None:
    """Copy ``source`` (a path, ``gs://`` or ``http(s)://`` URI) to the file ``path``."""
    if source.startswith("gs://"):
        client = _gcs_client()
        if client is None:
            shutil.copyfile("/gcs/" + source[5:], path)
            return
        bucket, _, name = source[5:].partition("/")
        client.bucket(bucket).blob(name).download_to_filename(path)
    elif source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=600) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    else:
        shutil.copyfile(source, path)


def put(path: str, target: str) -> None:
    """Copy the file ``path`` to ``target`` (a path or a ``gs://`` URI)."""
    if target.startswith("gs://"):
        client = _gcs_client()
        if client is not None:
            bucket, _, name = target[5:].partition("/")
            client.bucket(bucket).blob(name).upload_from_filename(path)
            return
        target = "/gcs/" + target[5:]
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    shutil.copyfile(path, target)


# --- the bundle ---------------------------------------------------------------------------
def unpack(data: bytes, directory: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(directory, filter="data")
        else:  # Python < 3.12 without the backported filter
            archive.extractall(directory)


def prepare_bundle(args: argparse.Namespace) -> str:
    """The directory holding train.py: the launcher's own, or the bundle unpacked."""
    if not args.bundle:
        return os.path.dirname(os.path.abspath(__file__))
    work = args.work or tempfile.mkdtemp(prefix="neural-jupyter-")
    os.makedirs(work, exist_ok=True)
    if args.bundle == "embedded":
        data = base64.b64decode(BUNDLE)
    else:
        local = os.path.join(tempfile.mkdtemp(prefix="neural-jupyter-"), "bundle.tar.gz")
        fetch(args.bundle, local)
        with open(local, "rb") as handle:
            data = handle.read()
    if args.sha256 and hashlib.sha256(data).hexdigest() != args.sha256:
        print("neural-jupyter: the bundle's checksum does not match; not run", file=sys.stderr)
        sys.exit(2)
    unpack(data, work)
    return work


def find_data(bundle: str, search: str) -> None:
    """A bundle sent without its data: take ``data.npz`` from an attached data set (the
    first of the ``:``-separated folders that exists; environment variables expanded)."""
    data = os.path.join(bundle, "data.npz")
    if not search or os.path.exists(data):
        return
    with open(os.path.join(bundle, "job.json")) as handle:
        if json.load(handle).get("kind", "model") != "model":
            return  # user code ships its data (if any) as data/
    folders = [os.path.expandvars(f) for f in search.split(":")]
    folder = next((f for f in folders if os.path.isdir(f)), "")
    pattern = os.path.join(folder, "**", "data.npz")
    found = sorted(glob.glob(pattern, recursive=True)) if folder else []
    if not found:
        print("neural-jupyter: no data.npz in the bundle or the attached dataset", file=sys.stderr)
        sys.exit(2)
    shutil.copyfile(found[0], data)


def say(message: str) -> None:
    """A status line for the monitor (an event on stdout)."""
    print(json.dumps({"event": "status", "message": message}), flush=True)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (local label dropped), or None."""
    from importlib import metadata

    for candidate in dict.fromkeys((name, normalized(name), normalized(name).replace("-", "_"))):
        try:
            return metadata.version(candidate).split("+", 1)[0]
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken installation: treat as missing
            return None
    return None


def _release(version: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+(?:\.\d+)*)$", version.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _compare(installed: str, op: str, wanted: str) -> bool | None:
    """Whether ``installed op wanted`` holds; None when these versions cannot be compared
    here (pre-releases, ``~=``...): pip decides then."""
    if op in ("==", "===") and installed == wanted:
        return True
    if op == "==" and wanted.endswith(".*"):
        prefix = _release(wanted[:-2])
        have = _release(installed)
        return None if prefix is None or have is None else have[: len(prefix)] == prefix
    have, want = _release(installed), _release(wanted)
    if have is None or want is None:
        return None
    width = max(len(have), len(want))
    have, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
    checks = {
        "==": have == want,
        "!=": have != want,
        ">=": have >= want,
        "<=": have <= want,
        ">": have > want,
        "<": have < want,
    }
    return checks.get(op)


def satisfied(installed: str, specifier: str) -> bool | None:
    """Whether the installed version meets ``specifier`` (``>=1.2,<2``; empty: any)."""
    verdict: bool | None = True
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        match = re.match(r"^(===|==|!=|>=|<=|~=|>|<)\s*(\S+)$", clause)
        result = _compare(installed, match.group(1), match.group(2)) if match else None
        if result is False:
            return False
        if result is None:
            verdict = None
    return verdict


def kept_build(name: str) -> bool:
    name = normalized(name)
    return any(
        name == keep or (keep.endswith("*") and name.startswith(keep[:-1]))
        for keep in KEEP_IMAGE_BUILDS
    )


def read_requirements(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        lines = [line.split(" #")[0].split("\t#")[0].strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


def to_install(lines: list[str], only_missing: bool) -> tuple[list[str], list[str]]:
    """The requirement lines pip must install, and notes on what is kept as the image has it.

    A line with an environment marker, a URL or pip options is left to pip."""
    install, notes = [], []
    for line in lines:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;@]*)$", line)
        if not match:
            install.append(line)
            continue
        name, specifier = match.group(1), match.group(3).strip()
        have = installed_version(name)
        if only_missing:
            module = normalized(name).replace("-", "_")
            if have is None and importlib.util.find_spec(module) is None:
                install.append(line)
            continue
        if have is None:
            install.append(line)
        elif kept_build(name):
            if satisfied(have, specifier) is False:
                notes.append(f"{name} {have} (the image's build; the notebook has {specifier})")
        elif satisfied(have, specifier) is not True:
            install.append(line)
    return install, notes


def install_target(work: str, packages: str = "auto") -> str | None:
    """None: pip installs into this interpreter's environment; else the job's own folder
    (asked for, or the environment is externally managed, PEP 668, or read-only)."""
    if packages != "auto":
        return os.path.join(work, PACKAGES) if packages == "job" else None
    paths = sysconfig.get_paths()
    managed = sys.prefix == sys.base_prefix and os.path.exists(
        os.path.join(paths["stdlib"], "EXTERNALLY-MANAGED")
    )
    if managed or not os.access(paths["purelib"], os.W_OK):
        return os.path.join(work, PACKAGES)
    return None


def install_requirements(
    bundle: str, install_missing: bool, packages: str = "auto", offline: bool = False
) -> dict:
    """Install what the bundle needs and the image lacks (see the module docstring); the
    environment variables ``train.py`` then needs (``PYTHONPATH`` with the job's packages)."""
    with open(os.path.join(bundle, "job.json")) as handle:
        asked = json.load(handle).get("install_requirements")
    if isinstance(asked, list):
        lines, only_missing = [str(line).strip() for line in asked if str(line).strip()], False
    elif install_missing:
        lines, only_missing = read_requirements(os.path.join(bundle, "requirements.txt")), True
    else:
        return {}
    install, notes = to_install(lines, only_missing)
    for note in notes:
        print(f"neural-jupyter: kept {note}", file=sys.stderr, flush=True)
    if not install:
        if lines and not only_missing:
            say(f"requirements: all {len(lines)} present in the image")
        return {}
    if offline:
        print(
            f"neural-jupyter: not installed (this job has no internet): {', '.join(install)}",
            file=sys.stderr,
            flush=True,
        )
        return {}
    if importlib.util.find_spec("pip") is None:
        print(
            f"neural-jupyter: cannot install {', '.join(install)}: {sys.executable} has no pip "
            "(install python3-pip there, or choose another Python for the job)",
            file=sys.stderr,
            flush=True,
        )
        return {}
    target = install_target(bundle, packages)
    say(f"installing {len(install)} requirement(s): {', '.join(install)}")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-input", "--progress-bar", "off", "--retries", "2", "--timeout", "30"]
    if target:
        command += ["--target", target]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        log = sys.stderr.fileno()  # pip's own lines are log lines, never events
    except (AttributeError, OSError, ValueError):
        log = None
    code = subprocess.call([*command, *install], stdout=log)
    if code != 0:
        print(
            f"neural-jupyter: pip could not install {', '.join(install)} (exit code {code}); "
            "running anyway (is the package index reachable from the job?)",
            file=sys.stderr,
            flush=True,
        )
    if not target:
        return {}
    path = os.pathsep.join(p for p in (target, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def shrink_budget(bundle: str) -> None:
    """Stop training a little before the platform's limit so its outputs are still saved."""
    job_file = os.path.join(bundle, "job.json")
    with open(job_file) as handle:
        settings = json.load(handle)
    if settings.get("max_seconds"):
        budget = float(settings["max_seconds"])
        seconds, fraction = BUDGET_MARGIN
        settings["max_seconds"] = budget - min(seconds, budget * fraction)
        with open(job_file, "w") as handle:
            json.dump(settings, handle)


def link_output(bundle: str, target: str) -> str:
    """Make the bundle's output directory a link to ``target`` (written there directly)."""
    with open(os.path.join(bundle, "job.json")) as handle:
        output = os.path.join(bundle, json.load(handle).get("output_dir", "output"))
    os.makedirs(target, exist_ok=True)
    if os.path.islink(output):
        os.unlink(output)
    elif os.path.isdir(output):
        shutil.rmtree(output)
    os.symlink(target, output, target_is_directory=True)
    return output


# --- running train.py ---------------------------------------------------------------------
DEFAULT_MASTER_PORT = 29500


def platform_rendezvous(environ: dict[str, str]) -> tuple[int, str, int | None] | None:
    """This machine's node rank, node 0's address and port (None: torchrun's default) as
    the platform that started the machines tells them, or None where it tells nothing:

    - SageMaker: ``SM_HOSTS`` (JSON list) and ``SM_CURRENT_HOST``; node 0 is the first host
      in sorted order (``algo-1``);
    - Vertex AI: ``CLUSTER_SPEC``; node 0 is workerpool0's one replica, workerpool1's
      replica ``i`` is node ``i + 1``;
    - a Kubernetes indexed Job: ``JOB_COMPLETION_INDEX`` (node 0's address comes from
      ``--master-addr``, the headless service name of index 0);
    - Azure ML's PyTorch distribution, and anything else that sets them: ``NODE_RANK``,
      ``MASTER_ADDR``, ``MASTER_PORT``.
    """
    if environ.get("SM_HOSTS") and environ.get("SM_CURRENT_HOST"):
        hosts = sorted(json.loads(environ["SM_HOSTS"]))
        return hosts.index(environ["SM_CURRENT_HOST"]), hosts[0], None
    if environ.get("CLUSTER_SPEC"):
        spec = json.loads(environ["CLUSTER_SPEC"])
        host, _, port = spec["cluster"]["workerpool0"][0].partition(":")
        task = spec["task"]
        rank = 0 if task["type"] == "workerpool0" else 1 + int(task["index"])
        return rank, host, int(port) if port else None
    if environ.get("JOB_COMPLETION_INDEX"):
        return int(environ["JOB_COMPLETION_INDEX"]), "", None
    if environ.get("NODE_RANK") and environ.get("MASTER_ADDR"):
        port = environ.get("MASTER_PORT")
        return int(environ["NODE_RANK"]), environ["MASTER_ADDR"], int(port) if port else None
    return None


def torchrun_arguments(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> list[str]:
    """torchrun's options for this node, or nothing for a single process. What the command
    line leaves out (node rank, node 0's address and port) comes from the platform."""
    if args.nnodes * args.nproc_per_node <= 1:
        return []
    if args.nnodes == 1:  # one machine: its own rendezvous, whatever the platform says
        return [
            *("-m", "torch.distributed.run", "--standalone", "--nnodes", "1"),
            *("--nproc-per-node", str(args.nproc_per_node)),
        ]
    found = platform_rendezvous(dict(os.environ if environ is None else environ))
    rank, master, port = found or (0, "", None)
    if args.nnodes > 1 and found is None and args.node_rank is None:
        raise SystemExit(
            f"neural-jupyter: {args.nnodes} nodes, but nothing says which one this is "
            "(--node-rank) or where node 0 is (--master-addr)"
        )
    rank = rank if args.node_rank is None else args.node_rank
    master = args.master_addr or master or "127.0.0.1"
    port = args.master_port or port or DEFAULT_MASTER_PORT
    return [
        *("-m", "torch.distributed.run", "--nnodes", str(args.nnodes)),
        *("--nproc-per-node", str(args.nproc_per_node), "--node-rank", str(rank)),
        *("--master-addr", master, "--master-port", str(port)),
    ]


def wait_for_host(host: str, seconds: float = 600.0, every: float = 2.0) -> bool:
    """Wait until ``host`` resolves (a pod's DNS name appears once the pod has an address:
    node 0's may come later than this node's start); False if it never did."""
    import socket
    import time

    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            socket.getaddrinfo(host, None)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            if not said:
                say(f"waiting for node 0 ({host}) to have an address")
                said = True
            time.sleep(every)


def node_rank(torchrun: list[str]) -> int:
    """This machine's node rank in ``torchrun``'s options (0 without torchrun)."""
    if "--node-rank" in torchrun:
        return int(torchrun[torchrun.index("--node-rank") + 1])
    return 0


def run(
    bundle: str,
    resume: bool,
    logs: str,
    env: dict[str, str] | None = None,
    torchrun: list[str] | None = None,
) -> int:
    """``python train.py`` (under torchrun with ``torchrun``'s options), its output echoed
    (and copied to ``logs``), signals passed on."""
    script = os.path.join(bundle, "train.py")
    command = [sys.executable, "-u", *(torchrun or []), script, "--job", "job.json"]
    if resume:
        print("resuming from the last checkpoint", file=sys.stderr, flush=True)
        command.append("--resume")
    child = subprocess.Popen(
        command,
        cwd=bundle,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: child.send_signal(signum))
    copies = tempfile.mkdtemp(prefix="neural-jupyter-logs-") if logs else ""
    lock = threading.Lock()

    def pump(source, name: str, echo) -> None:
        path = os.path.join(copies, name + ".log") if copies else os.devnull
        with open(path, "ab") as copy:
            for line in iter(source.readline, b""):
                echo.buffer.write(line)
                echo.flush()
                with lock:
                    copy.write(line)
                    copy.flush()

    pumps = [
        threading.Thread(target=pump, args=(child.stdout, "stdout", sys.stdout)),
        threading.Thread(target=pump, args=(child.stderr, "stderr", sys.stderr)),
    ]
    for thread in pumps:
        thread.start()
    stop, sizes = threading.Event(), {}
    syncer = None
    if logs:
        every = float(os.environ.get("NEURAL_JUPYTER_LOG_SYNC_SECONDS") or 15)
        syncer = threading.Thread(target=_sync_loop, args=(stop, every, copies, logs, sizes))
        syncer.daemon = True
        syncer.start()
    code = child.wait()
    for thread in pumps:
        thread.join()
    if syncer is not None:
        stop.set()
        syncer.join()
        sync_logs(copies, logs, {})
    return code


def sync_logs(copies: str, target: str, sizes: dict) -> None:
    for name in ("stdout", "stderr"):
        path = os.path.join(copies, name + ".log")
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size >= 0 and sizes.get(name) != size:
            put(path, target.rstrip("/") + "/" + name + ".log")
            sizes[name] = size


def _sync_loop(stop: threading.Event, every: float, copies: str, target: str, sizes: dict):
    while not stop.wait(every):
        try:
            sync_logs(copies, target, sizes)
        except Exception as exc:
            print(f"neural-jupyter: could not copy the logs: {exc}", file=sys.stderr)


# --- outputs ------------------------------------------------------------------------------
def copy_outputs(output: str, destination: str) -> None:
    """Every file under ``output`` to ``destination`` (a directory or a gs:// prefix)."""
    for root, _, names in os.walk(output):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, output).replace(os.sep, "/")
            if destination.startswith("gs://"):
                put(path, destination.rstrip("/") + "/" + relative)
            else:
                put(path, os.path.join(destination, relative))


def output_files(output: str) -> list[str]:
    """Every file under ``output`` (relative, ``/``-separated, sorted) but the exit record."""
    found = []
    for root, _, names in os.walk(output):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), output).replace(os.sep, "/")
            if relative != EXIT_RECORD:
                found.append(relative)
    return sorted(found)


def print_outputs(output: str, budget: int) -> None:
    """The output files base64-encoded into the log, for platforms whose log is the only
    way back (checked with their SHA-256 when decoded); paths URL-quoted (spaces)."""
    for relative in output_files(output) if os.path.isdir(output) else []:
        path = os.path.join(output, *relative.split("/"))
        name = "output/" + urllib.parse.quote(relative)
        size = os.path.getsize(path)
        if size > budget:
            print(f"{ARTIFACT_MARK}-skipped {name} {size}", flush=True)
            continue
        budget -= size
        with open(path, "rb") as handle:
            blob = handle.read()
        print(f"{ARTIFACT_MARK}-begin {name} {size} {hashlib.sha256(blob).hexdigest()}")
        for start in range(0, len(blob), ARTIFACT_CHUNK):
            chunk = base64.b64encode(blob[start : start + ARTIFACT_CHUNK]).decode()
            print(f"{ARTIFACT_MARK} {name} {chunk}")
        print(f"{ARTIFACT_MARK}-end {name}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bundle = prepare_bundle(args)
    find_data(bundle, args.data_search)
    env = install_requirements(bundle, args.install_missing, args.packages, args.offline)
    if args.budget_margin:
        shrink_budget(bundle)
    model_dir = os.environ.get("SM_MODEL_DIR", "")
    checkpoints = args.neural_checkpoint_dir
    output = os.path.join(bundle, "output")
    if checkpoints or model_dir:
        output = link_output(bundle, checkpoints or model_dir)
    resume = bool(checkpoints) and os.path.exists(os.path.join(checkpoints, "checkpoint.pt"))
    sys.stdout.flush()
    torchrun = torchrun_arguments(args)
    rank = node_rank(torchrun)
    if args.nnodes > 1 and not wait_for_host(torchrun[torchrun.index("--master-addr") + 1]):
        say("node 0's address never resolved; torchrun will say why it cannot meet it")
    logs = args.logs.rstrip("/") + f"/node-{rank}" if args.logs and rank else args.logs
    code = run(bundle, resume, logs, env, torchrun)
    if checkpoints and model_dir and os.path.realpath(checkpoints) != os.path.realpath(model_dir):
        os.makedirs(model_dir, exist_ok=True)
        for name in os.listdir(checkpoints):
            if os.path.isfile(os.path.join(checkpoints, name)):
                shutil.copy2(os.path.join(checkpoints, name), os.path.join(model_dir, name))
    if args.outputs and os.path.isdir(output) and not rank:  # rank 0 wrote them, on node 0
        copy_outputs(output, args.outputs)
    if args.print_outputs >= 0 and not rank:
        print_outputs(output, args.print_outputs)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ARGS))
