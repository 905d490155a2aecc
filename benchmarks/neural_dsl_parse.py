"""Time neural-dsl 0.2.9's parser alone. Runs INSIDE benchmarks/.venv-neuraldsl.

Started by ``bench_compile.py`` (not meant to be run by hand). Reads a JSON job on stdin::

    {"models": {"cnn10": {"source": "...", "name": "...", "input": [28, 28, 1],
                          "layer_types": ["Conv2D", ...], "repeats": 1000, "warmup": 50}}}

and writes the timings as JSON to the file named by argv[1].

What is timed ("parse alone", the way neural-dsl's own CLI parses a file in
``neural/cli/cli.py``)::

    tree = neural.parser.parser.network_parser.parse(source)   # lark LALR, their grammar
    model = neural.parser.parser.ModelTransformer().transform(tree)

``network_parser`` is the module-level ``create_parser('network')`` instance, so building the
grammar is excluded, as our cached parser's construction is excluded on our side. Their
leftover tracing and debug logging do not count against them: ``PYSNOOPER_DISABLED=1`` (read by
pysnooper at import) and ``logging.disable(CRITICAL)``. For information only we also time
``ModelTransformer().parse_network(source)`` as shipped (it lexes twice and emits DEBUG log
records; the log stream is sent to /dev/null).
"""

from __future__ import annotations

import os

# pysnooper reads this once, at import; neural.parser.parser decorates methods at import.
os.environ.setdefault("PYSNOOPER_DISABLED", "1")

import json
import logging
import sys
from importlib import metadata
from time import perf_counter

from _common import machine_info, measure, summarize


def check(model: dict, expected: dict) -> None:
    """Fail loudly unless neural-dsl really parsed the whole network."""
    types = [layer["type"] for layer in model["layers"]]
    assert model["name"] == expected["name"], (model["name"], expected["name"])
    assert len(types) == len(expected["layer_types"]), (len(types), len(expected["layer_types"]))
    assert types == expected["layer_types"], "neural-dsl parsed different layers"
    assert list(model["input"]["shape"]) == expected["input"], model["input"]
    assert model.get("optimizer", {}).get("type") == "Adam", model.get("optimizer")
    assert model.get("loss") == "sparse_categorical_crossentropy", model.get("loss")


def main() -> None:
    job = json.load(sys.stdin)
    out_path = sys.argv[1]

    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    real_stdout = sys.stdout
    sys.stdout = devnull  # nothing they print may cost terminal or pipe time

    start = perf_counter()
    import pysnooper.tracer
    from neural.parser import parser as nd

    import_s = perf_counter() - start
    for handler in logging.getLogger().handlers:  # their basicConfig(level=DEBUG) handler
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)

    results: dict = {
        "entry_point": (
            "neural.parser.parser.network_parser.parse(src) + "
            "neural.parser.parser.ModelTransformer().transform(tree)"
        ),
        "secondary_entry_point": "neural.parser.parser.ModelTransformer().parse_network(src)",
        "versions": {
            "neural-dsl": metadata.version("neural-dsl"),
            "lark": metadata.version("lark"),
            "pysnooper": metadata.version("pysnooper"),
        },
        "pysnooper_disabled": bool(pysnooper.tracer.DISABLED),
        "import_parser_module_s": import_s,
        "machine": machine_info(),
        "models": {},
    }
    assert pysnooper.tracer.DISABLED, "PYSNOOPER_DISABLED must be set before import"

    def parse_alone(source: str) -> dict:
        tree = nd.network_parser.parse(source)
        return nd.ModelTransformer().transform(tree)

    def parse_network(source: str) -> dict:
        return nd.ModelTransformer().parse_network(source)

    for key, spec in job["models"].items():
        source, repeats, warmup = spec["source"], spec["repeats"], spec["warmup"]

        logging.disable(logging.NOTSET)  # as shipped: their DEBUG records are formatted
        check(parse_network(source), spec)
        shipped = measure(
            lambda s=source: parse_network(s), max(10, repeats // 4), max(3, warmup // 4)
        )

        logging.disable(logging.CRITICAL)  # headline: no leftover debug logging
        check(parse_alone(source), spec)
        alone = measure(lambda s=source: parse_alone(s), repeats, warmup)

        results["models"][key] = {
            "layers_parsed": len(parse_alone(source)["layers"]),
            "parse": summarize(alone),
            "parse_network_as_shipped": summarize(shipped),
        }

    sys.stdout = real_stdout
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
