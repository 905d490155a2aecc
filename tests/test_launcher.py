"""``runtime/launcher.py``, the program platforms run: run as a real process on bundles whose
``train.py`` is a small stand-in (the platforms' own tests run it with the real one)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from neural_jupyter.runtime import launcher
from neural_jupyter.runtime.bundle import LAUNCHER, launcher_source

TRAIN = """
import json, os, sys
job = json.load(open("job.json"))
print(json.dumps({"event": "start", "max_seconds": job.get("max_seconds"), "argv": sys.argv[1:]}))
print("a plain line", file=sys.stderr)
os.makedirs("output", exist_ok=True)
open("output/model.pt", "wb").write(b"weights")
open("output/status.json", "w").write('{"exit_code": 0}')
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def bundle_files(tmp_path: Path, **job) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(TRAIN)
    (folder / "job.json").write_text(json.dumps({"output_dir": "output", **job}))
    (folder / "requirements.txt").write_text(
        "json  # in the standard library: nothing to install\n"
    )
    (folder / LAUNCHER).write_text(launcher_source())
    return folder


def archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(cwd / LAUNCHER) if (cwd / LAUNCHER).exists() else LAUNCHER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_the_launcher_is_the_module_shipped_in_bundles():
    assert launcher_source() == Path(launcher.__file__).read_text()
    assert "import neural_jupyter" not in launcher_source()  # standard library only


def test_a_bundle_archive_is_unpacked_run_and_its_outputs_copied(tmp_path):
    folder = bundle_files(tmp_path, max_seconds=1000)
    source = tmp_path / "bundle.tar.gz"
    source.write_bytes(archive(folder))
    work, outputs = tmp_path / "work", tmp_path / "outputs"
    done = run(
        [
            *("--bundle", str(source), "--work", str(work), "--outputs", str(outputs)),
            *("--install-missing", "--budget-margin"),
        ],
        folder,
    )
    assert done.returncode == 0, done.stderr
    start = json.loads(done.stdout.splitlines()[0])
    assert start["max_seconds"] == 900  # stops 10 % (at most 2 min) before the platform does
    assert start["argv"] == ["--job", "job.json"]
    assert "a plain line" in done.stderr
    assert (outputs / "model.pt").read_bytes() == b"weights"
    assert (work / "train.py").exists()


def test_the_exit_code_and_a_wrong_checksum(tmp_path):
    folder = bundle_files(tmp_path)
    source = tmp_path / "bundle.tar.gz"
    source.write_bytes(archive(folder))
    failed = run(["--bundle", str(source), "--work", str(tmp_path / "w1")], folder, EXIT="3")
    assert failed.returncode == 3
    wrong = run(["--bundle", str(source), "--sha256", "0" * 64], folder)
    assert wrong.returncode == 2 and "checksum" in wrong.stderr
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    right = run(
        ["--bundle", str(source), "--sha256", digest, "--work", str(tmp_path / "w2")], folder
    )
    assert right.returncode == 0, right.stderr


def test_data_comes_from_an_attached_data_set_when_the_bundle_has_none(tmp_path):
    folder = bundle_files(tmp_path)
    inputs = tmp_path / "inputs" / "my-data"
    inputs.mkdir(parents=True)
    (inputs / "data.npz").write_bytes(b"npz")
    done = run(["--data-search", "$NOT_SET:" + str(tmp_path / "inputs")], folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "data.npz").read_bytes() == b"npz"
    missing = bundle_files(tmp_path / "other")
    lost = run(["--data-search", str(tmp_path / "nowhere")], missing)
    assert lost.returncode == 2 and "no data.npz" in lost.stderr


@pytest.mark.parametrize("spot", [False, True])
def test_sagemaker_model_dir_and_checkpoints(tmp_path, spot):
    folder = bundle_files(tmp_path)
    model = tmp_path / "model"
    args = ["--neural_checkpoint_dir", str(tmp_path / "ckpt")] if spot else []
    done = run(args, folder, SM_MODEL_DIR=str(model))
    assert done.returncode == 0, done.stderr
    assert (model / "model.pt").read_bytes() == b"weights"  # where SageMaker uploads from
    assert (folder / "output").is_symlink()


# --- requirements ------------------------------------------------------------------------------
USES_TOY = """
import json, os, sys
import njtoy
os.makedirs("output", exist_ok=True)
print(json.dumps({"event": "start", "value": njtoy.VALUE, "file": njtoy.__file__}))
"""


@pytest.fixture
def toy(tmp_path):
    """A Python that lacks ``njtoy`` and installs it from a local wheel only."""
    from usercode_jobs import toy_python, toy_wheel

    root = tmp_path / "toy"
    toy_wheel(root / "wheels")
    return toy_python(root / "venv", root / "wheels")


def run_with(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), str(cwd / LAUNCHER), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )


def toy_bundle(tmp_path: Path, requirements: list[str]) -> Path:
    folder = bundle_files(tmp_path, install_requirements=requirements)
    (folder / "train.py").write_text(USES_TOY)
    return folder


def test_a_user_code_bundle_gets_what_the_image_lacks_and_keeps_its_gpu_builds(tmp_path, toy):
    import importlib.metadata as md

    pins = ["njtoy==1.0", f"cloudpickle=={md.version('cloudpickle')}", "torch==0.0.1"]
    folder = toy_bundle(tmp_path, pins)
    done = run_with(toy, [], folder)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    # only the missing one is installed: cloudpickle is there at that version, torch is the
    # image's own build (kept, and said), and the monitor is told what happens
    assert lines[0] == {"event": "status", "message": "installing 1 requirement(s): njtoy==1.0"}
    assert lines[1]["value"] == 4242
    assert Path(lines[1]["file"]).is_relative_to(toy.parent)  # the image's environment
    assert f"kept torch {md.version('torch').split('+')[0]} (the image's build" in done.stderr
    again = run_with(toy, [], toy_bundle(tmp_path / "again", pins))
    assert json.loads(again.stdout.splitlines()[0]) == {
        "event": "status",
        "message": "requirements: all 3 present in the image",
    }


def test_packages_go_to_the_jobs_folder_when_asked_and_failures_are_said(tmp_path, toy):
    folder = toy_bundle(tmp_path, ["njtoy==1.0"])
    done = run_with(toy, ["--packages", "job"], folder)
    assert done.returncode == 0, done.stderr
    start = json.loads(done.stdout.splitlines()[-1])
    assert Path(start["file"]).is_relative_to(folder / launcher.PACKAGES)
    # the interpreter's environment is left as it was
    assert subprocess.run([str(toy), "-c", "import njtoy"], capture_output=True).returncode != 0
    offline = run_with(toy, ["--offline"], toy_bundle(tmp_path / "offline", ["njtoy==1.0"]))
    assert "not installed (this job has no internet): njtoy==1.0" in offline.stderr
    assert "installing" not in offline.stdout and offline.returncode != 0
    missing = run_with(toy, [], toy_bundle(tmp_path / "missing", ["njtoy==9.9"]))
    assert "pip could not install njtoy==9.9" in missing.stderr
    assert "No module named 'njtoy'" in missing.stderr  # it ran anyway and says what lacks


def test_requirement_checks_without_pip(monkeypatch):
    assert launcher.satisfied("2.13.0", "==2.13") is True
    assert launcher.satisfied("1.26.4", ">=1.24,<2") is True
    assert launcher.satisfied("2.1.0", ">=1.24,<2") is False
    assert launcher.satisfied("1.0rc1", ">=1.0") is None  # pip decides
    assert launcher.satisfied("3.1.2", "==3.1.*") is True
    assert launcher.kept_build("nvidia-cudnn-cu12") and not launcher.kept_build("numpy")
    lines = ["json", "numpy>=1", "numpy==0.1", "torch==0.0.1", "pkg @ https://x.org/p.whl"]
    install, notes = launcher.to_install([*lines, "x; python_version<'3'"], only_missing=False)
    assert install == ["json", "numpy==0.1", "pkg @ https://x.org/p.whl", "x; python_version<'3'"]
    assert len(notes) == 1 and notes[0].startswith("torch ")  # the image's build is kept
    assert launcher.to_install(["json", "numpy==0.1"], only_missing=True) == ([], [])
    monkeypatch.setattr(launcher.os, "access", lambda path, mode: False)
    assert launcher.install_target("/w") == f"/w/{launcher.PACKAGES}"  # read-only env
    assert launcher.install_target("/w", "env") is None
