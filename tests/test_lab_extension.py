"""The JupyterLab extension in a real JupyterLab driven by headless Chromium (Debian's package,
through playwright): the "Neural jobs" sidebar shows a job a notebook started, cancels it (the
training process is gone), asks before cancelling a paid job, opens logs and the dashboard;
model cells and ``.neural`` files are highlighted. Screenshots go to tests/artifacts/.

Where the package is installed into this environment (``pip install -e .`` copies the built
extension to ``share/jupyter/labextensions``), that copy is what JupyterLab loads; otherwise
(a development environment installed before the extension existed) the test points
JupyterLab at this checkout's build and server-extension config.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BUILT = ROOT / "neural_jupyter" / "labextension"
INSTALLED = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "neural-jupyter"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = """network Slow {
  input: (8, 8, 1)
  layers:
    Flatten()
    Dense(64, "relu") * 2  # two hidden layers
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train { epochs: 100000  batch_size: 32  validation_split: 0.2 }
}"""


def cell(source: str, kind: str = "code") -> dict:
    base = {"cell_type": kind, "metadata": {}, "source": source}
    return {**base, "outputs": [], "execution_count": None} if kind == "code" else base


def notebook() -> dict:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            cell("%load_ext neural_jupyter"),
            cell("%%neural_compile --show summary\n" + MODEL),
            cell("%%neural_run --data digits --no-wait --monitor none --as job\nSlow"),
            cell("print(job.id)"),
        ],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright")
    pytest.importorskip("jupyterlab")
    if not (BUILT / "package.json").exists():
        pytest.fail(
            "the JupyterLab extension is not built: cd labextension && npm ci && npm run build"
        )
    root = tmp_path_factory.mktemp("lab")
    (root / "train.ipynb").write_text(json.dumps(notebook()))
    (root / "model.neural").write_text(MODEL + "\n")
    config = tmp_path_factory.mktemp("jupyter-config")
    (config / "labconfig").mkdir()
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    home = tmp_path_factory.mktemp("neural-home")
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "NEURAL_JUPYTER_HOME": str(home),
        "JUPYTER_PLATFORM_DIRS": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if not (INSTALLED / "package.json").exists():
        data = tmp_path_factory.mktemp("jupyter-data")
        (data / "labextensions").mkdir()
        (data / "labextensions" / "neural-jupyter").symlink_to(BUILT)
        env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data), env.get("JUPYTER_PATH")]))
        extra = str(ROOT / "jupyter-config")
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            filter(None, [extra, env.get("JUPYTER_CONFIG_PATH")])
        )
    token = secrets.token_hex(16)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            "--allow-root",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            # the paid job below is a store record only: never ask a real cloud about it
            "--NeuralJobsServer.remote_refresh_seconds=0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{base}/api/status?token={token}", timeout=2).ok:
                break
        time.sleep(0.3)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start: " + server.stderr.read().decode()[-2000:])
    yield base, token, home
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield chromium
        chromium.close()


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def api(base: str, token: str, path: str) -> dict:
    reply = requests.get(f"{base}/neural-jupyter/api/{path}", params={"token": token}, timeout=30)
    reply.raise_for_status()
    return reply.json()


def open_sidebar(page) -> None:
    """Show the panel. JupyterLab may restore it open from the last session while the page
    loads, and a click on its tab then closes it: click until it stays visible."""
    tab = page.locator(".jp-SideBar .lm-TabBar-tab[data-id='neural-jupyter-jobs']")
    tab.wait_for(timeout=60_000)
    header = page.locator("#neural-jupyter-jobs .nj-header")
    for _ in range(5):
        with contextlib.suppress(Exception):
            header.wait_for(state="visible", timeout=3_000)
            return
        tab.click()
    header.wait_for(state="visible", timeout=10_000)


def test_sidebar_follows_and_cancels_a_notebook_job(lab, browser):
    base, token, home = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{base}/lab/tree/train.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    with contextlib.suppress(Exception):  # JupyterLab may ask which kernel to start
        page.click(".jp-Dialog .jp-mod-accept", timeout=5_000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=90_000)
    open_sidebar(page)
    page.wait_for_selector("#neural-jupyter-jobs .nj-empty:has-text('No jobs yet')", timeout=30_000)

    # the model cell is highlighted as the model language, the Python cell is not
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    model_cell = cells.nth(1)
    model_cell.locator(".tok-keyword", has_text="network").first.wait_for(timeout=30_000)
    assert model_cell.locator(".tok-typeName", has_text="Dense").count() >= 1
    assert model_cell.locator(".tok-string", has_text='"relu"').count() >= 1
    assert model_cell.locator(".tok-number", has_text="100000").count() == 1
    assert model_cell.locator(".tok-comment").count() == 1
    assert model_cell.locator(".tok-meta", has_text="%%neural_compile").count() == 1
    keyword_colour = model_cell.locator(".tok-keyword").first.evaluate(
        "e => getComputedStyle(e).color"
    )
    plain_colour = model_cell.locator(".cm-line").first.evaluate("e => getComputedStyle(e).color")
    assert keyword_colour != plain_colour  # the theme colours the tokens
    assert cells.nth(0).locator("[class*='tok-']").count() == 0
    model_cell.screenshot(path=str(ARTIFACTS / "lab_model_cell.png"))

    page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
    clicked = time.monotonic()
    row = page.locator("#neural-jupyter-jobs .nj-job").first
    try:
        row.wait_for(timeout=60_000)
        appeared = time.monotonic() - clicked
        seen = datetime.now(timezone.utc)
        page.wait_for_selector(
            "#neural-jupyter-jobs .nj-job[data-status='RUNNING'] .nj-metric", timeout=90_000
        )
        page.wait_for_function(
            "() => /epoch [3-9]|epoch \\d\\d/.test("
            "document.querySelector('#neural-jupyter-jobs .nj-progress-text').textContent)",
            timeout=60_000,
        )
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "lab_sidebar_failure.png"))
        raise
    job_id = row.get_attribute("data-job-id")
    from neural_jupyter.jobs import JobStore

    store = JobStore(home / "jobs.sqlite")
    recorded = datetime.fromisoformat(store.get(job_id).created_at)
    delay = (seen - recorded).total_seconds()
    print(f"the job was in the sidebar {delay:.1f} s after the kernel recorded it")
    print(f"({appeared:.1f} s after Run All, which first loads, compiles and writes the bundle)")
    assert delay < 10  # a 2 s poll
    assert row.locator(".nj-badge").inner_text() == "running"
    assert row.locator(".nj-platform").inner_text() == "local"
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    row.locator(".nj-copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == f"%neural_attach {job_id}"
    assert row.locator(".nj-metric dt", has_text="loss").count() >= 1
    assert row.locator(".nj-cost").count() == 0  # local jobs cost nothing extra
    page.locator("#neural-jupyter-jobs").screenshot(path=str(ARTIFACTS / "lab_sidebar_running.png"))
    page.screenshot(path=str(ARTIFACTS / "lab_sidebar_page.png"))

    pid = int(store.get(job_id).remote_id.removeprefix("pid:"))
    assert not pid_gone(pid)

    # logs open in a tab, events left out
    row.locator(".nj-logs").click()
    log = page.locator(".nj-LogView .nj-log")
    log.wait_for(timeout=30_000)
    page.wait_for_selector(f".nj-log-status:has-text('lines of {job_id}')", timeout=30_000)
    assert '{"event"' not in log.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab_logs.png"))

    # a local job is cancelled without a question; its process is gone
    row.locator(".nj-cancel").click()
    page.wait_for_selector(
        f"#neural-jupyter-jobs .nj-job[data-job-id='{job_id}'][data-status='CANCELLED']",
        timeout=30_000,
    )
    deadline = time.monotonic() + 15
    while not pid_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_gone(pid)
    assert store.get(job_id).status.value == "CANCELLED"
    cancelled = page.locator(f"#neural-jupyter-jobs .nj-job[data-job-id='{job_id}']")
    assert cancelled.locator(".nj-cancel").count() == 0
    page.locator("#neural-jupyter-jobs").screenshot(
        path=str(ARTIFACTS / "lab_sidebar_cancelled.png")
    )

    # the dashboard opens in a tab, served by Jupyter itself
    cancelled.locator(".nj-dashboard").click()
    frame = page.wait_for_selector(
        "iframe[src*='/neural-jupyter/dashboard/']", timeout=30_000
    ).content_frame()
    frame.wait_for_function(
        "() => document.querySelectorAll('#curves .scatterlayer .trace').length > 0",
        timeout=60_000,
    )
    page.screenshot(path=str(ARTIFACTS / "lab_dashboard.png"))
    page.close()


def test_paid_job_asks_before_cancelling(lab, browser):
    """A job on a paid platform shows its cost so far, and Cancel asks first ("Keep running"
    leaves it alone). The job is a store record only; nothing is sent to any cloud."""
    base, token, home = lab
    from neural_jupyter.jobs import JobStore

    store = JobStore(home / "jobs.sqlite")
    record = store.create(
        name="BigNet",
        platform="sagemaker",
        model_name="BigNet",
        config={"resources": {"instance_type": "ml.g5.xlarge"}, "settings": {"epochs": 20}},
        status="RUNNING",
    )
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{base}/lab?token={token}")
    open_sidebar(page)
    row = page.locator(f"#neural-jupyter-jobs .nj-job[data-job-id='{record.id}']")
    row.wait_for(timeout=30_000)
    cost = row.locator(".nj-cost").inner_text()
    assert "ml.g5.xlarge" in cost and "so far" in cost and "/h" in cost, cost
    assert api(base, token, f"jobs/{record.id}")["paid"] is True
    row.locator(".nj-cancel").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    assert "Cancel a paid job?" in dialog.inner_text()
    assert "ml.g5.xlarge" in dialog.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab_paid_cancel_dialog.png"))
    dialog.locator("button", has_text="Keep running").click()
    dialog.wait_for(state="detached", timeout=10_000)
    time.sleep(1)
    assert store.get(record.id).status.value == "RUNNING"
    page.locator("#neural-jupyter-jobs").screenshot(path=str(ARTIFACTS / "lab_sidebar_paid.png"))
    page.close()


def test_neural_files_are_highlighted(lab, browser):
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1200, "height": 700})
    page.goto(f"{base}/lab/tree/model.neural?token={token}")
    editor = page.locator(".jp-FileEditor")
    editor.locator(".tok-keyword", has_text="network").first.wait_for(timeout=60_000)
    assert editor.locator(".tok-typeName", has_text="Output").count() == 1
    assert editor.locator(".tok-propertyName", has_text="epochs").count() == 1
    editor.screenshot(path=str(ARTIFACTS / "lab_neural_file.png"))
    page.close()
