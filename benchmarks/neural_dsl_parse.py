"""Time neural-dsl 0.2.9's parser alone. Runs INSIDE benchmarks/.venv-neuraldsl.

Started by ``bench_compile.py`` (not meant to be run by hand) as a worker: it reads one JSON
request per line on stdin and answers each with one JSON line on stdout, so the driver can
alternate rounds of our compile and their parse (load on a shared machine then hits both
sides alike). Requests::

    {"op": "check", "key": "cnn10", "source": "...", "expected": {...}}  # parse, compare
    {"op": "time", "key": "cnn10", "calls": 100}        # wall and CPU seconds per call
    {"op": "time_shipped", "key": "cnn10", "calls": 25} # parse_network as shipped
    {"op": "info"}                                      # versions, machine
    {"op": "quit"}

What is timed ("parse alone", the way neural-dsl's own CLI parses a file in
``neural/cli/cli.py``)::

    tree = neural.parser.parser.network_parser.parse(source)   # lark LALR, their grammar
    model = neural.parser.parser.ModelTransformer().transform(tree)

``network_parser`` is the module-level ``create_parser('network')`` instance, so building the
grammar is excluded, as our parser's setup is excluded on our side. Their leftover tracing and
debug logging do not count against them: ``PYSNOOPER_DISABLED=1`` (read by pysnooper at import)
and ``logging.disable(CRITICAL)``. For information only, ``time_shipped`` times
``ModelTransformer().parse_network(source)`` as shipped (it lexes twice and emits DEBUG log
records; the log stream is sent to /dev/null).
"""

from __future__ import annotations

import os

# pysnooper reads this once, at import; neural.parser.parser decorates methods at import.
os.environ.setdefault("PYSNOOPER_DISABLED", "1")

import gc
import json
import logging
import sys
from importlib import metadata
from time import perf_counter, process_time

from _common import machine_info


def check(model: dict, expected: dict) -> None:
    """Fail loudly unless neural-dsl really parsed the whole network as we did."""
    types = [layer["type"] for layer in model["layers"]]
    assert model["name"] == expected["name"], (model["name"], expected["name"])
    assert types == expected["layer_types"], ("neural-dsl parsed other layers", types)
    shape = [None if v is None else int(v) for v in model["input"]["shape"]]
    assert shape == expected["input"], (shape, expected["input"])
    optimizer = model.get("optimizer")
    if isinstance(optimizer, dict):
        optimizer = optimizer.get("type")
    if expected.get("optimizer") is not None:
        assert str(optimizer).startswith(expected["optimizer"]), optimizer
    assert model.get("loss") == expected.get("loss"), model.get("loss")


def main() -> None:
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    answer = sys.stdout
    sys.stdout = devnull  # nothing they print may cost terminal or pipe time

    start = perf_counter()
    import pysnooper.tracer
    from neural.parser import parser as nd

    import_s = perf_counter() - start
    for handler in logging.getLogger().handlers:  # their basicConfig(level=DEBUG) handler
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    assert pysnooper.tracer.DISABLED, "PYSNOOPER_DISABLED must be set before import"
    logging.disable(logging.CRITICAL)  # headline: no leftover debug logging

    def parse_alone(source: str) -> dict:
        tree = nd.network_parser.parse(source)
        return nd.ModelTransformer().transform(tree)

    def parse_network(source: str) -> dict:
        return nd.ModelTransformer().parse_network(source)

    sources: dict[str, str] = {}
    shipped_fails: dict[str, str] = {}  # parse_network as shipped crashes on some programs
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        if op == "info":
            reply: dict = {
                "entry_point": (
                    "neural.parser.parser.network_parser.parse(src) + "
                    "neural.parser.parser.ModelTransformer().transform(tree)"
                ),
                "secondary_entry_point": (
                    "neural.parser.parser.ModelTransformer().parse_network(src)"
                ),
                "versions": {
                    "neural-dsl": metadata.version("neural-dsl"),
                    "lark": metadata.version("lark"),
                    "pysnooper": metadata.version("pysnooper"),
                },
                "pysnooper_disabled": bool(pysnooper.tracer.DISABLED),
                "import_parser_module_s": import_s,
                "machine": machine_info(),
            }
        elif op == "check":
            sources[request["key"]] = request["source"]
            model = parse_alone(request["source"])
            check(model, request["expected"])
            logging.disable(logging.NOTSET)
            try:
                check(parse_network(request["source"]), request["expected"])
            except Exception as exc:  # their parse_network's framework detection can crash
                shipped_fails[request["key"]] = f"{type(exc).__name__}: {exc}"
            logging.disable(logging.CRITICAL)
            reply = {
                "layers_parsed": len(model["layers"]),
                "parse_network_error": shipped_fails.get(request["key"]),
            }
        elif op == "time_shipped" and request["key"] in shipped_fails:
            reply = {"seconds": None, "error": shipped_fails[request["key"]]}
        else:
            source = sources[request["key"]]
            shipped = op == "time_shipped"
            fn = parse_network if shipped else parse_alone
            if shipped:
                logging.disable(logging.NOTSET)  # as shipped: their DEBUG records are formatted
            fn(source)  # warm
            gc.collect()
            seconds, cpu = [], []
            for _ in range(request["calls"]):
                began, began_cpu = perf_counter(), process_time()
                fn(source)
                cpu.append(process_time() - began_cpu)
                seconds.append(perf_counter() - began)
            logging.disable(logging.CRITICAL)
            reply = {"seconds": seconds, "cpu_seconds": cpu}
        answer.write(json.dumps(reply) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()
