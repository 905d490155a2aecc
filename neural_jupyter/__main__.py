"""``python -m neural_jupyter quickstart [NOTEBOOK]``: run a notebook headlessly, print its output.

Used by README's first command: executes ``notebooks/quick_start.ipynb`` in a fresh kernel
(compile, train on the built-in digits data, list jobs) and prints each cell's text output,
failing loudly if any cell fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_NOTEBOOK = Path("notebooks") / "quick_start.ipynb"


def _text_outputs(cell) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(output.get("text", ""))
        elif output.get("output_type") in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "text/plain" in data and "application/vnd.jupyter.widget-view+json" not in data:
                texts.append(data["text/plain"] + "\n")
    return texts


def quickstart(path: Path, timeout: int) -> int:
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError:
        print(
            'this needs the notebook extra: pip install "neural-jupyter[notebook]"', file=sys.stderr
        )
        return 2
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for cell in notebook.cells:
        if cell.cell_type == "code":
            sys.stdout.write("".join(_text_outputs(cell)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neural_jupyter")
    commands = parser.add_subparsers(dest="command", required=True)
    quick = commands.add_parser("quickstart", help="run the quick-start notebook headlessly")
    quick.add_argument("notebook", nargs="?", type=Path, default=DEFAULT_NOTEBOOK)
    quick.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    docs = commands.add_parser("docs", help="regenerate docs/language.md and docs/magics.md")
    docs.add_argument("directory", nargs="?", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if args.command == "docs":
        from neural_jupyter.docgen import write

        for path in write(args.directory):
            print(f"wrote {path}")
        return 0
    if not args.notebook.exists():
        parser.error(f"no notebook at {args.notebook} (run from the repository root)")
    return quickstart(args.notebook, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
