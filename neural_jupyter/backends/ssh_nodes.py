"""One ssh job on several hosts: ``--nodes N`` with ``--set hosts=host-a,host-b,...``.

Each host is one node of a single torchrun rendezvous (static ranks): host ``R`` of the list
is node ``R`` and runs ``launcher.py --nnodes N --nproc-per-node P --node-rank R
--master-addr <host 0> --master-port <master_port>`` in a job directory of its own,
``<workdir>/<job name>-nodeR`` (hosts sharing a home directory over NFS, or two names of one
machine, never share one), started detached by the ssh backend's own ``stage``/``start``
exactly as a one-host job. Node 0 is the rendezvous: its host name as the other hosts reach
it (``--set master_addr=`` when that differs from the name this machine connects to).

Read as one job:

- events, logs and outputs are node 0's (only rank 0 writes events and outputs); the other
  nodes' ``stdout.log``/``stderr.log`` are mirrored to the job's ``logs/node-R/``;
- it runs while any node runs and succeeds when every node did; the first node that fails
  fails the job (``RemoteStatus.failed_node``, its error and the end of its stderr in the
  message) and the others are stopped. When one node dies the others' ranks fail too, with
  connection errors: a failure that reads like that waits a few seconds for the node that
  caused it before the job's error is chosen;
- cancel stops every process group of the job on every host;
- what ``submit`` returns (``details["nodes"]``, each host's record) finds every node again
  from a new process.

This module knows the ssh backend only through the backend object it is handed (as
``ssh_instances`` does), so the two do not import each other.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neural_jupyter.backends import base
from neural_jupyter.backends.base import State
from neural_jupyter.backends.ssh_providers import remote_name
from neural_jupyter.errors import ConfigurationError, NeuralError
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.jobdir import JobDir
from neural_jupyter.runtime.torchrun import first_failure

DEFAULT_MASTER_PORT = 29500
SETTLE_SECONDS = 10.0  # how long a knock-on failure waits for the node that caused it
SETTLE_STEP = 0.5
TAIL_LINES = 8  # of a failed node's stderr, in the job's error
TAIL_BYTES = 64 * 1024
# what a rank says when another node went away: a knock-on failure, not the cause
KNOCK_ON = (
    "closed by peer",
    "reset by peer",
    "broken pipe",
    "connection refused",
    "distnetworkerror",
    "diststoreerror",
    "rendezvousclosederror",
    "sigterm",
)
HOSTS_HINT = (
    "--set hosts=host-a,host-b (extra={'hosts': 'host-a,host-b'}), one host per node; "
    "the first one is node 0 and the rendezvous"
)


# --- options --------------------------------------------------------------------------------
def host_list(extra: Mapping[str, Any]) -> list[str]:
    """The ``hosts`` option as a list (comma-separated text or a list of host specs)."""
    value = extra.get("hosts")
    if value in (None, ""):
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = [str(item) for item in value]
    else:
        raise ConfigurationError(
            f"--set hosts= takes host names separated by commas, got {value!r}",
            hint=HOSTS_HINT,
        )
    hosts = [item.strip() for item in items if item.strip()]
    if not hosts:
        raise ConfigurationError("--set hosts= names no host", hint=HOSTS_HINT)
    return hosts


def check_hosts(resources: base.ResourceSpec) -> None:
    """Refuse a ``--nodes``/``hosts`` combination that does not give one host per node."""
    extra = resources.extra
    hosts = host_list(extra)
    nodes = resources.nodes
    if extra.get("provider"):
        if hosts or nodes > 1:
            raise ConfigurationError(
                f"--nodes {nodes} / --set hosts=: a rented instance (provider=) is one "
                "machine; several hosts must be machines you can already ssh into",
                hint="drop --nodes and hosts=, or drop provider= and pass " + HOSTS_HINT,
            )
        return
    if nodes > 1 and not hosts:
        raise ConfigurationError(
            f"--nodes {nodes}: the ssh platform needs the {nodes} hosts to run on",
            hint="pass " + HOSTS_HINT,
        )
    if hosts and len(hosts) != nodes:
        raise ConfigurationError(
            f"--nodes {nodes} does not match --set hosts=, which names {len(hosts)} "
            f"host(s) ({', '.join(hosts)}): one host per node",
            hint=f"--nodes {len(hosts)}, or list {nodes} host(s) in hosts=",
        )
    if hosts and extra.get("host"):
        raise ConfigurationError(
            "both --set host= (or --host) and --set hosts= were given: name the machines "
            "in one of them",
            hint="hosts= for several machines (node 0 first), host= for one",
        )


def wants_nodes(resources: base.ResourceSpec) -> bool:
    return resources.nodes > 1


def is_multi(details: Mapping[str, Any]) -> bool:
    nodes = details.get("nodes")
    return isinstance(nodes, list) and len(nodes) > 1


def node_arguments(resources: base.ResourceSpec, rank: int, master: str, port: int) -> list[str]:
    """The launcher's torchrun options on node ``rank`` (static ranks, node 0 the store)."""
    return [
        *("--nnodes", str(resources.nodes), "--nproc-per-node", str(resources.procs_per_node)),
        *("--node-rank", str(rank), "--master-addr", master, "--master-port", str(port)),
    ]


def node_dir_name(job: base.RemoteJob, rank: int) -> str:
    return f"{remote_name(job.idempotency_key)}-node{rank}"


def rendezvous(extra: Mapping[str, Any], first: Any) -> tuple[str, int]:
    """Node 0's address as the other nodes reach it, and the port torchrun meets on."""
    master = str(extra.get("master_addr") or first.hostname)
    port = int(extra.get("master_port") or DEFAULT_MASTER_PORT)
    return master, port


def _targets(backend: Any, resources: base.ResourceSpec) -> list[Any]:
    extra = resources.extra
    return [backend.target_from_extra({**extra, "host": spec}) for spec in host_list(extra)]


# --- submit and plan ------------------------------------------------------------------------
def submit(
    backend: Any, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
) -> base.Submission:
    """Stage the bundle on every host (so a host that refuses the login fails the submit
    before anything runs), then start every node; a node that cannot start stops those
    started before it."""
    check_hosts(resources)
    extra = resources.extra
    targets = _targets(backend, resources)
    master, port = rendezvous(extra, targets[0])
    job_dirs = [
        backend.stage(
            target,
            bundle,
            resources,
            node_dir_name(job, rank),
            node_arguments(resources, rank, master, port),
        )
        for rank, target in enumerate(targets)
    ]
    nodes: list[dict[str, Any]] = []
    try:
        for target, job_dir in zip(targets, job_dirs, strict=True):
            record = backend.start(target, job_dir)
            nodes.append(backend.node_details(target, job_dir, record, extra))
    except NeuralError:
        for rank, node in enumerate(nodes):
            with contextlib.suppress(NeuralError):
                backend.stop(node, f"node {rank} of job {job.id}", marker="peer_failed")
        raise
    details = {**nodes[0], "nodes": nodes, "rendezvous": f"{master}:{port}"}
    return base.Submission(f"{targets[0].address}:{job_dirs[0]}", details)


def plan(backend: Any, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
    """What ``submit`` would start on each host (nothing is contacted)."""
    check_hosts(resources)
    extra = resources.extra
    targets = _targets(backend, resources)
    master, port = rendezvous(extra, targets[0])
    workdir = str(extra.get("workdir") or backend.default_workdir)
    python = str(extra.get("python") or backend.default_python)
    nodes = []
    for rank, target in enumerate(targets):
        job_dir = f"{workdir.rstrip('/')}/{node_dir_name(job, rank)}"
        command = backend.train_command(
            python,
            resources.max_seconds,
            resources.procs_per_node,
            node_arguments(resources, rank, master, port),
        )
        nodes.append(
            {
                "node": rank,
                "host": target.address,
                "remote_dir": job_dir,
                "command": f"cd {job_dir} && setsid nohup sh run.sh  # runs: {command}",
            }
        )
    return {
        "hosts": [node["host"] for node in nodes],
        "rendezvous": f"{master}:{port}",
        "nodes": nodes,
        "remote_dir": nodes[0]["remote_dir"],
        "command": nodes[0]["command"],
    }


# --- one look at every node -----------------------------------------------------------------
@dataclass(frozen=True)
class NodesProbe:
    """What one look at every node showed: ``alive`` and ``status()`` as for one host."""

    probes: tuple[Any, ...]
    verdict: base.RemoteStatus | None = None  # a node failed: the job's failure

    @property
    def alive(self) -> bool:
        return self.verdict is None and any(probe.alive for probe in self.probes)

    def status(self) -> base.RemoteStatus:
        if self.verdict is not None:
            return self.verdict
        probes = self.probes
        if any("cancel_requested" in probe.markers for probe in probes):
            alive = any(probe.alive for probe in probes)
            return base.RemoteStatus(State.RUNNING if alive else State.CANCELLED)
        if any(probe.alive for probe in probes):
            return base.RemoteStatus(State.RUNNING)
        statuses = [probe.status() for probe in probes]
        if all(status.state == State.SUCCEEDED for status in statuses):
            return base.RemoteStatus(State.SUCCEEDED, 0)
        return base.RemoteStatus(
            State.FAILED,
            statuses[0].exit_code,
            "; ".join(f"node {r}: {s.message or s.state}" for r, s in enumerate(statuses)),
        )


def nodes_of(job: base.RemoteJob) -> list[Mapping[str, Any]]:
    return list(job.details["nodes"])


def look(backend: Any, job: base.RemoteJob) -> NodesProbe:
    """Probe every node and mirror the other nodes' logs; when a node failed, decide the
    job's error and stop the nodes still running."""
    nodes = nodes_of(job)
    probes = _probe_all(backend, job, nodes)
    if any("cancel_requested" in probe.markers for probe in probes):
        return NodesProbe(probes)
    failed = _failed(probes)
    deadline = time.monotonic() + SETTLE_SECONDS
    while (
        failed
        and all(_knock_on(job, rank) for rank in failed)
        and any(probe.alive for probe in probes)
        and time.monotonic() < deadline
    ):
        time.sleep(SETTLE_STEP)
        probes = _probe_all(backend, job, nodes)
        failed = _failed(probes)
    if not failed:
        return NodesProbe(probes)
    rank = min(failed, key=lambda r: (_knock_on(job, r), r))
    for other, (node, probe) in enumerate(zip(nodes, probes, strict=True)):
        if probe.alive:
            with contextlib.suppress(NeuralError):
                backend.stop(node, f"node {other} of job {job.id}", marker="peer_failed")
    status = probes[rank].status()
    verdict = base.RemoteStatus(
        State.FAILED,
        status.exit_code,
        describe_failure(job, rank, str(nodes[rank].get("host")), status),
        status.timed_out,
        failed_node=str(nodes[rank].get("host")),
    )
    return NodesProbe(probes, verdict)


def _probe_all(backend: Any, job: base.RemoteJob, nodes: Sequence[Mapping[str, Any]]) -> tuple:
    probes = []
    for rank, node in enumerate(nodes):
        target = backend.target.from_details(node)
        probe = backend._probe(target, node)
        if rank or not probe.alive:  # node 0's running log is the job's stream's to mirror
            _mirror(backend, job, rank, node, final=not probe.alive)
        probes.append(probe)
    return tuple(probes)


def _mirror(backend: Any, job: base.RemoteJob, rank: int, node: Mapping[str, Any], final: bool):
    directory = _log_dir(job, rank)
    directory.mkdir(parents=True, exist_ok=True)
    sftp = backend.open_sftp(backend.target.from_details(node))
    try:
        backend.sync_logs(sftp, node, directory, final=final)
    finally:
        sftp.close()


def _log_dir(job: base.RemoteJob, rank: int):
    return job.files.root if rank == 0 else job.files.node_logs(rank)


def _failed(probes: Sequence[Any]) -> list[int]:
    return [
        rank
        for rank, probe in enumerate(probes)
        if not probe.alive and probe.status().state == State.FAILED
    ]


def _tail(job: base.RemoteJob, rank: int, stream: str) -> list[str]:
    path = JobDir(_log_dir(job, rank)).log(stream)
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-60:]


def _knock_on(job: base.RemoteJob, rank: int) -> bool:
    """Whether node ``rank`` failed because another node went away (its ranks lost their
    peers) rather than on its own."""
    text = "\n".join(_tail(job, rank, "stderr") + _tail(job, rank, "stdout")).lower()
    return any(word in text for word in KNOCK_ON)


def describe_failure(job: base.RemoteJob, rank: int, host: str, status: base.RemoteStatus) -> str:
    """``node R (host) failed: <its rank's error>`` and the last lines of its stderr."""
    stderr = _tail(job, rank, "stderr")
    failed = first_failure(stderr)
    cause = failed.describe() if failed else _error_event(_tail(job, rank, "stdout"))
    cause = cause or status.message or "it failed"
    text = f"node {rank} ({host}) failed: {cause}"
    tail = [line for line in stderr if line.strip()][-TAIL_LINES:]
    if tail:
        text += f"\nthe end of node {rank}'s stderr:\n" + "\n".join(tail)
    return text


def _error_event(lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        if not line.startswith('{"event": "error"'):
            continue
        with contextlib.suppress(ValueError, TypeError):
            error = json.loads(line)
            rank = f"rank {error['rank']}: " if error.get("rank") else ""
            return f"{rank}{error.get('type', 'Error')}: {error.get('message', '')}"
    return None


# --- cancel ---------------------------------------------------------------------------------
def cancel(backend: Any, job: base.RemoteJob) -> None:
    """Stop every node (node 0 first: its cancel marker makes the job CANCELLED whatever
    the others' ranks do as their peers go); the first error after trying them all."""
    errors: list[NeuralError] = []
    for rank, node in enumerate(nodes_of(job)):
        try:
            backend.stop(node, f"node {rank} of job {job.id}")
        except NeuralError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
