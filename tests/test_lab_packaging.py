"""Packaging of the JupyterLab extension and the server extension: the committed build matches
its sources, wheels (standard and editable) carry both in their shared data, Jupyter finds
them, and ``import neural_jupyter`` / ``%load_ext`` stay as light as before."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "labextension"
BUILT = ROOT / "neural_jupyter" / "labextension"
SERVER_CONFIG = "etc/jupyter/jupyter_server_config.d/neural_jupyter.json"
LABEXTENSION = "share/jupyter/labextensions/neural-jupyter"
# every file labextension/build.mjs reads (keep in step with sourceFiles() there)
TOP_FILES = ("build.mjs", "package.json", "package-lock.json", "tsconfig.json")


def source_files() -> list[str]:
    nested = [
        path.relative_to(SOURCE).as_posix()
        for folder in ("src", "style")
        for path in (SOURCE / folder).rglob("*")
        if path.is_file()
    ]
    return sorted([*TOP_FILES, *nested])


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in source_files():
        digest.update(name.encode() + b"\0")
        digest.update((SOURCE / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_the_committed_build_is_built_from_these_sources():
    stamp = json.loads((BUILT / "build-source.json").read_text())
    assert stamp["files"] == source_files()
    assert stamp["sha256"] == source_hash(), (
        "labextension/ changed since neural_jupyter/labextension was built: "
        "cd labextension && npm ci && npm run build, and commit the result"
    )
    package = json.loads((BUILT / "package.json").read_text())
    assert package["name"] == "neural-jupyter"
    remote = package["jupyterlab"]["_build"]["load"]
    assert (BUILT / remote).is_file()


@pytest.mark.parametrize("version", ["standard", "editable"])
def test_wheels_install_the_lab_and_server_extensions(tmp_path, version):
    builders = pytest.importorskip("hatchling.builders.wheel")
    if version == "editable":
        pytest.importorskip("editables")
    builder = builders.WheelBuilder(str(ROOT))
    (wheel,) = builder.build(directory=str(tmp_path), versions=[version])
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        data = "neural_jupyter-0.1.0.data/data/"
        config = json.loads(archive.read(data + SERVER_CONFIG))
        built = sorted(
            n.removeprefix(data + LABEXTENSION + "/") for n in names if LABEXTENSION in n
        )
    assert config == {"ServerApp": {"jpserver_extensions": {"neural_jupyter.server": True}}}
    expected = sorted(
        path.relative_to(BUILT).as_posix() for path in BUILT.rglob("*") if path.is_file()
    )
    assert built == expected
    assert not any("node_modules" in name or name.endswith(".ts") for name in names)


def jupyter(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done.stdout + done.stderr


def test_jupyter_finds_both_extensions(tmp_path):
    """With the files where an install puts them, Jupyter lists both as enabled and OK."""
    data = tmp_path / "share" / "jupyter"
    (data / "labextensions").mkdir(parents=True)
    (data / "labextensions" / "neural-jupyter").symlink_to(BUILT)
    config = tmp_path / "config"
    (config / "jupyter_server_config.d").mkdir(parents=True)
    (config / "jupyter_server_config.d" / "neural_jupyter.json").write_bytes(
        (ROOT / "jupyter-config" / "jupyter_server_config.d" / "neural_jupyter.json").read_bytes()
    )
    env = {
        **os.environ,
        "JUPYTER_PATH": str(data),
        "JUPYTER_CONFIG_DIR": str(config),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    labs = jupyter("labextension", "list", env=env)
    line = next((x for x in labs.splitlines() if "neural-jupyter" in x), "")
    assert "v0.1.0" in line and "enabled" in line and "OK" in line, labs
    servers = jupyter("server", "extension", "list", env=env)
    lines = servers.splitlines()
    index = next(i for i, x in enumerate(lines) if "neural_jupyter.server" in x and "enabled" in x)
    assert any("OK" in x for x in lines[index + 1 : index + 4]), servers


def test_importing_the_package_does_not_load_the_server_extension():
    code = (
        "import sys, neural_jupyter\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'neural_jupyter')\n"
        "print(sorted(m for m in ('neural_jupyter.server', 'jupyter_server', 'tornado')"
        " if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
