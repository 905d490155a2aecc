"""``python -m neural_jupyter``: run the quick start headlessly, or write the reference docs.

``quickstart`` executes the quick-start notebook (shipped inside the package, so it works
from any directory) in a fresh kernel, in a scratch directory, and prints each cell's text
output, failing loudly if any cell fails. ``docs DIRECTORY`` writes the generated references
(language.md, magics.md) into DIRECTORY and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

DESCRIPTION = (
    "neural-jupyter: define a neural network in a small declarative language, compile it to "
    "PyTorch or Keras, train it on this machine or on a cloud platform (SSH, SageMaker, "
    "Vertex AI, Azure ML, Databricks, Kaggle, Kubernetes) and watch it live, from Jupyter "
    "notebook cells (%load_ext neural_jupyter). This command runs the quick-start notebook "
    "or writes the generated reference docs."
)
EPILOG = "Documentation: https://github.com/neural-jupyter/neural-jupyter/tree/main/docs"


def quick_start_notebook() -> Path:
    """The quick-start notebook: the copy inside the installed package (a wheel), or the
    repository's ``notebooks/quick_start.ipynb`` (an editable install or a checkout)."""
    packaged = resources.files("neural_jupyter").joinpath("notebooks/quick_start.ipynb")
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "notebooks" / "quick_start.ipynb"
    if checkout.is_file():
        return checkout
    raise FileNotFoundError("the quick-start notebook is missing from this installation")


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
        from neural_jupyter.install import install_hint

        print(f"this needs the notebook extra: {install_hint('notebook')}", file=sys.stderr)
        return 2
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="neural-jupyter-quickstart-") as scratch:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": scratch}},
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
    parser = argparse.ArgumentParser(
        prog="python -m neural_jupyter", description=DESCRIPTION, epilog=EPILOG
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    quick = commands.add_parser(
        "quickstart",
        help="run the quick-start notebook headlessly (compile, train on the bundled digits "
        "data on this CPU, list jobs) and print its output",
        description="Run the quick-start notebook (or NOTEBOOK) in a fresh kernel and print "
        "each cell's text output. Works from any directory.",
    )
    quick.add_argument("notebook", nargs="?", type=Path, help="another notebook to run")
    quick.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    docs = commands.add_parser(
        "docs",
        help="write the generated references (language.md, magics.md) into DIRECTORY",
        description="Write docs/language.md and docs/magics.md as generated from the code "
        "into DIRECTORY (in the repository: python -m neural_jupyter docs docs).",
    )
    docs.add_argument("directory", type=Path, metavar="DIRECTORY", help="where to write them")
    args = parser.parse_args(argv)
    if args.command == "docs":
        from neural_jupyter.docgen import write

        for path in write(args.directory):
            print(f"wrote {path}")
        return 0
    notebook = args.notebook or quick_start_notebook()
    if not notebook.exists():
        parser.error(f"no notebook at {notebook}")
    return quickstart(notebook, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
