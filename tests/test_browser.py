"""The quick start in a real JupyterLab driven by headless Chromium (Debian's package, through
playwright): the JobMonitor widget renders, its progress reaches the end, its chart has points;
the dashboard answers with its token and refuses without (403). Screenshots go to
tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chromium_path():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright")
    pytest.importorskip("jupyterlab")
    return CHROMIUM


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium_path):
    root = tmp_path_factory.mktemp("lab")
    config = tmp_path_factory.mktemp("jupyter-config")
    (config / "labconfig").mkdir()
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    notebook = json.loads((ROOT / "notebooks" / "quick_start.ipynb").read_text())
    # keep the dashboard running so the test can open it
    notebook["cells"] = [c for c in notebook["cells"] if "--stop" not in "".join(c["source"])]
    (root / "quick_start.ipynb").write_text(json.dumps(notebook))
    home = tmp_path_factory.mktemp("neural-home")
    token = secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "NEURAL_JUPYTER_HOME": str(home),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
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
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/status?token={token}", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.3)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start: " + server.stderr.read().decode()[-2000:])
    yield base, token
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


def test_quick_start_in_jupyterlab(lab, chromium_path):
    from playwright.sync_api import sync_playwright

    base, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/quick_start.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        with contextlib.suppress(Exception):  # JupyterLab may ask which kernel to start
            page.click(".jp-Dialog .jp-mod-accept", timeout=8_000)
        page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=90_000)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)
        try:
            monitor = page.wait_for_selector(".neural-job-monitor", timeout=180_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        page.wait_for_function(
            "() => [...document.querySelectorAll('.neural-job-monitor .neural-summary')]"
            ".some(e => e.textContent.includes('finished'))",
            timeout=240_000,
        )
        bars = page.eval_on_selector_all(
            ".neural-job-monitor .widget-hprogress .progress-bar",
            "els => els.map(e => e.style.width)",
        )
        points = page.eval_on_selector_all(
            ".neural-job-monitor svg.neural-chart circle.point", "els => els.length"
        )
        monitor.scroll_into_view_if_needed()
        monitor.screenshot(path=str(ARTIFACTS / "job_monitor.png"))
        page.wait_for_selector("iframe[src*='token=']", timeout=120_000)
        dashboard_url = page.get_attribute("iframe[src*='token=']", "src")
        page.screenshot(path=str(ARTIFACTS / "quick_start.png"), full_page=True)

        assert bars and all(width == "100%" for width in bars), bars
        assert points >= 10  # ten epochs of loss/accuracy, train and validation

        dashboard = browser.new_page(viewport={"width": 1300, "height": 1100})
        dashboard.goto(dashboard_url)
        dashboard.wait_for_function(
            "() => document.querySelectorAll('#curves .scatterlayer .trace').length > 0",
            timeout=60_000,
        )
        dashboard.wait_for_function(
            "() => document.querySelectorAll('#gradients .bars .point').length > 0",
            timeout=60_000,
        )
        dashboard.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        # a browser without the token (and without the cookie the first visit set) gets 403
        stranger = browser.new_context().new_page()
        without = dashboard_url.split("?")[0]
        assert stranger.goto(without).status == 403
        assert stranger.goto(without + "?token=" + secrets.token_urlsafe(32)).status == 403
        assert stranger.goto(without + "api/jobs").status == 403
        stranger.screenshot(path=str(ARTIFACTS / "dashboard_without_token.png"))
        browser.close()
