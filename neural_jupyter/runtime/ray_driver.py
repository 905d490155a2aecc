"""The entry point of a Ray job that trains on several processes or machines: it reserves
``nodes`` slots of the cluster at once (a placement group), then runs ``launcher.py`` in each
slot with torchrun's rendezvous arguments, so that every machine starts ``procs_per_node``
training processes of one job. It is copied into the job's working directory beside
``launcher.py`` and the bundle, and uses the standard library and ``ray`` only (both are
on every node of a Ray cluster):

    python ray_driver.py --nodes N --procs-per-node P [--cpus C] [--gpus G]
                         [--strategy STRICT_SPREAD] [--ready-timeout S] -- LAUNCHER ARGS

- The slots: ``N`` bundles of ``{"CPU": C, "GPU": G}``; ``STRICT_SPREAD`` (the default when
  N > 1) puts each on its own machine, ``PACK`` (N = 1) keeps one together. A cluster without
  room for all of them within ``--ready-timeout`` seconds fails the job with a message
  saying what was asked (nothing starts half-way).
- Node 0's address and a free port there are the rendezvous (``--master-addr``/
  ``--master-port``); each slot runs ``launcher.py LAUNCHER ARGS --nnodes N --nproc-per-node
  P --node-rank R ...``. Node 0 keeps ``--print-outputs``/``--outputs`` (rank 0 writes the
  outputs); the others drop them.
- Output: each slot's launcher output comes back to this driver line by line (a streaming
  Ray task) and is printed here, so the job's log is what one launcher prints: node 0's
  lines as they are (its events drive the monitor), other nodes' lines prefixed
  ``[node R]``.
- A node whose launcher fails ends the job with its exit code and its last lines; the other
  nodes are cancelled. Stopping the Ray job ends this driver, Ray then ends its tasks, and a
  launcher whose task process dies gets SIGTERM (Linux ``PR_SET_PDEATHSIG``), which it
  passes on to torchrun and the training processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

NODE_ONLY_OPTIONS = {"--print-outputs": 1, "--outputs": 1}  # node 0's (value count)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="ray_driver.py", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--procs-per-node", type=int, required=True)
    parser.add_argument("--cpus", type=float, default=0.0, help="CPUs per node")
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per node")
    parser.add_argument("--strategy", default="")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    ours, _, theirs = _split(argv)
    return parser.parse_args(ours), theirs


def _split(argv: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], "--", argv[at + 1 :]
    return argv, "", []


def without_node_only(argv: list[str]) -> list[str]:
    """The launcher's arguments for nodes other than node 0."""
    kept, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in NODE_ONLY_OPTIONS:
            skip = 0 if "=" in arg else NODE_ONLY_OPTIONS[name]
            continue
        kept.append(arg)
    return kept


def say(message: str) -> None:
    print(json.dumps({"event": "status", "message": message}), flush=True)


def _die_with_parent() -> None:
    """In the launcher's process: SIGTERM when the Ray worker that started it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the worker's own cleanup is all there is
        pass


def rendezvous() -> tuple[str, int]:
    """This node's address and a port free on it."""
    import ray

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def run_node(argv: list[str]):
    """Run the launcher in this slot; yield its output lines, then ``{"exit": code}``."""
    child = subprocess.Popen(
        [sys.executable, "-u", "launcher.py", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=_die_with_parent if os.name == "posix" else None,
    )
    assert child.stdout is not None
    for raw in iter(child.stdout.readline, b""):
        yield raw.decode("utf-8", errors="replace").rstrip("\n")
    yield {"exit": child.wait()}


def main(argv: list[str]) -> int:
    args, launcher_args = parse_args(argv)
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(log_to_driver=False)
    slot: dict[str, float] = {"CPU": args.cpus or float(args.procs_per_node)}
    if args.gpus:
        slot["GPU"] = args.gpus
    strategy = args.strategy or ("STRICT_SPREAD" if args.nodes > 1 else "PACK")
    group = placement_group([dict(slot) for _ in range(args.nodes)], strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=args.ready_timeout)
    if not ready:
        print(
            f"neural-jupyter: the cluster has no room for {args.nodes} × {slot} "
            f"({strategy}) after {args.ready_timeout:g} s; nothing was started",
            file=sys.stderr,
            flush=True,
        )
        return 3
    say(f"{args.nodes} node(s) × {args.procs_per_node} process(es) reserved ({strategy})")

    def placed(index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)

    address = ray.remote(num_cpus=0)(rendezvous)
    master, port = ray.get(address.options(scheduling_strategy=placed(0)).remote())
    node_task = ray.remote(run_node)
    lines: queue.Queue = queue.Queue()
    generators = []
    for rank in range(args.nodes):
        node_args = launcher_args if rank == 0 else without_node_only(launcher_args)
        node_args = [
            *node_args,
            *("--nnodes", str(args.nodes), "--nproc-per-node", str(args.procs_per_node)),
            *("--node-rank", str(rank), "--master-addr", master, "--master-port", str(port)),
        ]
        generator = node_task.options(
            num_returns="streaming",
            num_cpus=slot["CPU"],
            num_gpus=slot.get("GPU", 0),
            scheduling_strategy=placed(rank),
        ).remote(node_args)
        generators.append(generator)
        threading.Thread(target=_pump, args=(rank, generator, lines), daemon=True).start()
    return _relay(lines, generators)


def _pump(rank: int, generator, lines: queue.Queue) -> None:
    import ray

    code = None
    try:
        for ref in generator:
            item = ray.get(ref)
            if isinstance(item, dict):
                code = int(item.get("exit", 1))
            else:
                lines.put((rank, item))
    except Exception as exc:  # the task died (its node went away, it was cancelled)
        lines.put((rank, f"neural-jupyter: node {rank} ended: {type(exc).__name__}: {exc}"))
        code = 1 if code is None else code
    lines.put((rank, {"exit": 1 if code is None else code}))


def _relay(lines: queue.Queue, generators: list) -> int:
    import ray

    running, failure = len(generators), 0
    while running:
        rank, item = lines.get()
        if isinstance(item, dict):
            running -= 1
            code = item["exit"]
            if code and not failure:
                failure = code
                print(f"neural-jupyter: node {rank} failed with exit code {code}", flush=True)
                for other in generators:
                    with contextlib.suppress(Exception):
                        ray.cancel(other, force=True)
            continue
        print(item if rank == 0 else f"[node {rank}] {item}", flush=True)
    return failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
