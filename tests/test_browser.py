"""neural-jupyter in a real JupyterLab driven by headless Chromium (Debian's package, through
playwright), as a user clicks it:

- Cancel during a blocking ``%%neural_run``: the job is CANCELLED and its process gone within
  10 s; Detach: the cell returns and the job keeps running;
- Run All of every notebook in ``notebooks/``: no error output, and no broken frame (every
  dashboard frame shows a live dashboard or the "dashboard stopped" note);
- the monitor, dashboard, submit panel, builder and sweep widget, screenshotted into
  ``tests/artifacts/`` (ignored by git; CI keeps them) — look at them;
- the dashboard answers with its token and refuses without (403).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def notebook(*cells: str) -> dict:
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": cell,
            }
            for cell in cells
        ],
        "metadata": {
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


LONG_MODEL = (
    "%%neural_compile --show none\n"
    'network Long { input: (8, 8, 1) layers: Flatten() Dense(32, "relu") '
    'Output(10, "softmax") loss: "sparse_categorical_crossentropy" '
    'metrics: ["accuracy"] train { epochs: 1500  batch_size: 64  validation_split: 0.2 } }'
)
SURFACES = [
    "%load_ext neural_jupyter",
    "%%neural_compile --show none\n"
    "network DigitNet {\n  input: (8, 8, 1)\n  layers:\n"
    '    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")\n'
    '    Flatten()\n    Dense(HPO(choice(16, 32)), "relu")\n'
    '    Output(10, "softmax")\n  loss: "sparse_categorical_crossentropy"\n'
    "  optimizer: Adam(learning_rate=HPO(choice(0.003, 0.01)))\n"
    '  metrics: ["accuracy"]\n  train { epochs: 2  batch_size: 64  validation_split: 0.2 }\n}',
    "%neural_submit DigitNet --data digits",
    "from neural_jupyter.ui.builder import ModelBuilder\n"
    "builder = ModelBuilder(get_ipython(), 'MyNet', '8, 8, 1')\n"
    "for kind in ('Conv2D', 'Flatten', 'Dense', 'Output'):\n    builder.add(kind)\n"
    "builder.rows[-1].controls['units'].value = 10\n"
    "builder",
    "%neural_sweep DigitNet --data digits --strategy grid --seeds 1 --metric val_accuracy "
    "--name browser-sweep --as sweep",
]


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
    for name in NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / name, root / name)
    (root / "buttons.ipynb").write_text(
        json.dumps(
            notebook("%load_ext neural_jupyter", LONG_MODEL, "%%neural_run --data digits\nLong")
        )
    )
    (root / "surfaces.ipynb").write_text(json.dumps(notebook(*SURFACES)))
    home = tmp_path_factory.mktemp("neural-home")
    token = secrets.token_hex(16)
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "NEURAL_JUPYTER_HOME": str(home),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
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
    yield {"base": base, "token": token, "home": home, "root": root}
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(
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
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def store(lab):
    """One job store for the whole module (opening one checks the whole file)."""
    from neural_jupyter.jobs.store import JobStore

    deadline = time.monotonic() + 5
    path = lab["home"] / "jobs.sqlite"
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return lambda: JobStore(path)


# --- driving JupyterLab ---------------------------------------------------------------------------
def open_notebook(browser, lab, name: str, width: int = 1400, height: int = 1000):
    page = browser.new_page(viewport={"width": width, "height": height})
    # a workspace of its own: JupyterLab would otherwise reopen the notebooks of earlier tests
    workspace = re.sub(r"\W", "-", name)
    page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    with contextlib.suppress(Exception):  # JupyterLab may ask which kernel to start
        page.click(".jp-Dialog .jp-mod-accept", timeout=5_000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=120_000)
    return page


def run_all(page) -> None:
    page.click(".lm-MenuBar-itemLabel:text-is('Run')", timeout=30_000)
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')", timeout=30_000)


def error_outputs(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'],"
        ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']",
        "els => els.map(e => e.textContent.slice(0, 600))",
    )


def prompts(page) -> list[str]:
    return page.eval_on_selector_all(
        ".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())"
    )


def wait_for_all_cells(page, timeout: float, name: str) -> None:
    """Every code cell has run (a number in its prompt), failing at the first error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errors = error_outputs(page)
        if errors:
            shot(page, f"error_{name}")
            pytest.fail(f"{name}: a cell failed: {errors[0]}")
        marks = prompts(page)
        if marks and all(re.fullmatch(r"\[\d+\]:", m) for m in marks):
            return
        time.sleep(1.0)
    shot(page, f"timeout_{name}")
    pytest.fail(f"{name}: cells did not all run within {timeout} s: {prompts(page)}")


def shot(target, name: str, **kwargs) -> Path:
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path), **kwargs)
    return path


def shut_down_kernels(lab) -> None:
    """Free the CPU for the next test (each notebook has its own kernel)."""
    params = {"token": lab["token"]}
    for kernel in requests.get(f"{lab['base']}/api/kernels", params=params, timeout=10).json():
        requests.delete(f"{lab['base']}/api/kernels/{kernel['id']}", params=params, timeout=30)


def add_cell_at_the_end(page, source: str) -> None:
    """Type a new last cell and run it (JupyterLab renders only the cells near the view:
    scroll to the bottom first, so the last cell in the page is the notebook's last)."""
    page.eval_on_selector(".jp-WindowedPanel-outer", "e => { e.scrollTop = e.scrollHeight; }")
    page.wait_for_timeout(500)
    page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below, in edit mode after Enter
    page.keyboard.press("Enter")
    page.keyboard.type(source)
    page.keyboard.press("Shift+Enter")


def monitor_job_id(monitor) -> str:
    return re.search(r"nj-[0-9a-f]+", monitor.locator("code").first.text_content()).group(0)


def pid_of(record) -> int:
    return json.loads((Path(record.job_dir) / "process.json").read_text())["pid"]


def wait_for_status(store, job_id: str, wanted: set[str], timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        record = store().get(job_id)
        if record.status.value in wanted or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def wait_for_epochs(monitor, epochs: int, timeout: float = 120) -> None:
    monitor.page.wait_for_function(
        "n => [...document.querySelectorAll('.neural-job-monitor svg.neural-chart "
        "polyline.series')].some(p => p.getAttribute('points').split(' ').length >= n)",
        arg=epochs,
        timeout=timeout * 1000,
    )


# --- the buttons during a blocking cell ---------------------------------------------------------
def test_cancel_and_detach_act_while_the_cell_runs(lab, browser, store):
    from neural_jupyter.backends.local import pid_alive
    from neural_jupyter.jobs.job import Job

    page = open_notebook(browser, lab, "buttons.ipynb")
    try:
        run_all(page)
        monitor = page.locator(".neural-job-monitor").last
        monitor.wait_for(timeout=180_000)
        wait_for_epochs(monitor, 2)
        job_id = monitor_job_id(monitor)
        record = wait_for_status(store, job_id, {"RUNNING"}, 60)
        pid = pid_of(record)
        monitor.scroll_into_view_if_needed()
        shot(monitor, "monitor_running")
        assert monitor.locator(".neural-busy-note").count() == 0  # real buttons, no note

        clicked = time.monotonic()
        monitor.locator("button", has_text="Cancel").click()
        record = wait_for_status(store, job_id, {"CANCELLED"}, 10)
        while pid_alive(pid) and time.monotonic() - clicked < 10:
            time.sleep(0.1)
        took = time.monotonic() - clicked
        assert record.status.value == "CANCELLED", record
        assert not pid_alive(pid) and took <= 10, took
        page.wait_for_function(
            "() => [...document.querySelectorAll('.neural-job-monitor')].at(-1)"
            ".textContent.includes('CANCELLED')",
            timeout=30_000,
        )
        # the buttons are removed, not left at "Cancelling…"
        monitor.locator("button", has_text="Cancel").wait_for(state="hidden", timeout=30_000)
        assert not monitor.locator("button", has_text="Detach").is_visible()
        page.wait_for_function(
            "() => document.querySelectorAll('.jp-CodeCell')[2].textContent"
            ".includes('JobCancelled')",
            timeout=30_000,
        )
        shot(monitor, "monitor_cancelled")

        # Detach: run the training cell again; the cell returns, the job keeps running
        page.locator(".jp-Cell").last.click()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            "old => [...document.querySelectorAll('.neural-job-monitor code')]"
            ".some(c => c.textContent.startsWith('nj-') && c.textContent !== old)",
            arg=job_id,
            timeout=120_000,
        )
        monitor = page.locator(".neural-job-monitor").last
        second = monitor_job_id(monitor)
        wait_for_epochs(monitor, 1)
        monitor.locator("button", has_text="Detach").click()
        page.wait_for_function(  # Shift+Enter added an empty cell: the run cell is the 3rd
            "() => document.querySelectorAll('.jp-CodeCell')[2].textContent"
            ".includes('JobDetached')",
            timeout=30_000,
        )
        page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=30_000)
        time.sleep(1.0)
        assert store().get(second).status.value == "RUNNING"
        assert pid_alive(pid_of(store().get(second)))
        shot(monitor, "monitor_detached")
        Job.load(second, store()).cancel()
        assert not pid_alive(pid_of(store().get(second)))
    finally:
        shot(page, "buttons_page", full_page=True)
        page.close()
        shut_down_kernels(lab)


# --- Run All of every notebook --------------------------------------------------------------------
def check_frames(page, name: str) -> int:
    """Every frame in the notebook shows a live dashboard: not a broken page, not stuck at
    'connecting' (a stopped dashboard's frame is gone, replaced by its note). Returns the
    number of frames checked. (JupyterLab renders only the cells near the view, so each
    frame is scrolled to first.)"""
    frames = page.locator(".jp-OutputArea-output iframe")
    for index in range(frames.count()):
        element = frames.nth(index)
        element.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        frame = element.element_handle().content_frame()
        assert frame is not None, f"{name}: frame {index} has no document"
        assert not frame.url.startswith("chrome-error://"), f"{name}: broken frame {frame.url}"
        frame.wait_for_function(
            "() => document.getElementById('status') && "
            "!['connecting', 'reconnecting', 'stopped'].includes("
            "document.getElementById('status').textContent)",
            timeout=60_000,
        )
        frame.wait_for_function(
            "() => document.querySelectorAll('#curves .scatterlayer .trace').length > 0",
            timeout=60_000,
        )
    return frames.count()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_of_every_notebook(lab, browser, name):
    page = open_notebook(browser, lab, name)
    try:
        run_all(page)
        wait_for_all_cells(page, 600, name)
        frames = check_frames(page, name)
        page.locator(".jp-Cell").last.scroll_into_view_if_needed()
        stopped = page.locator(".neural-dashboard-stopped").count()
        if "%neural_dashboard" in (ROOT / "notebooks" / name).read_text():
            assert frames + stopped >= 1, f"{name}: no dashboard frame nor note"
        shot(page, f"run_all_{name.removesuffix('.ipynb')}", full_page=True)
        if name == "quick_start.ipynb":
            screenshot_quick_start(page, browser)
    finally:
        page.close()
        shut_down_kernels(lab)


def screenshot_quick_start(page, browser) -> None:
    monitor = page.locator(".neural-job-monitor").last
    monitor.scroll_into_view_if_needed()
    summary = monitor.locator(".neural-summary")
    assert "finished" in summary.text_content()
    bars = page.eval_on_selector_all(
        ".neural-job-monitor .widget-hprogress .progress-bar", "els => els.map(e => e.style.width)"
    )
    assert bars and all(width == "100%" for width in bars), bars
    assert not monitor.locator("button", has_text="Cancel").is_visible()  # removed when done
    monitor.locator(".neural-log-box .jupyter-widget-Collapse-header").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.neural-job-monitor pre.neural-log')].at(-1)"
        ".offsetHeight > 0",
        timeout=10_000,
    )
    assert "epoch 10/10" in monitor.locator("pre.neural-log").text_content()
    shot(monitor, "monitor_finished")
    page.set_viewport_size({"width": 1400, "height": 1500})  # the whole 1250 px frame
    frame = page.locator("iframe").last
    frame.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    shot(frame, "dashboard_frame")
    page.set_viewport_size({"width": 1400, "height": 1000})
    url = frame.get_attribute("src")
    dashboard = browser.new_page(viewport={"width": 1300, "height": 1250})
    try:
        dashboard.goto(url)
        dashboard.wait_for_function(
            "() => document.querySelectorAll('#gradients .bars .point').length > 0",
            timeout=60_000,
        )
        dashboard.wait_for_function(
            "() => document.getElementById('graph-img').complete", timeout=30_000
        )
        dashboard.wait_for_timeout(1000)
        shot(dashboard, "dashboard", full_page=True)
        # the height of each bar inside the plot area (paths are clipped to it)
        heights = dashboard.evaluate(
            """() => {
              const plot = document.querySelector('#gradients .nsewdrag').getBoundingClientRect();
              return [...document.querySelectorAll('#gradients .bars .point path')].map(p => {
                const r = p.getBoundingClientRect();
                return Math.min(r.bottom, plot.bottom) - Math.max(r.top, plot.top);
              });
            }"""
        )
        assert heights and min(heights) >= 10, heights  # every bar visible on the log axis
        titles = dashboard.eval_on_selector_all(
            ".g-xtitle, .g-ytitle, .g-y2title", "els => els.map(e => e.textContent)"
        )
        assert {"epoch", "layer", "step", "peak memory (MiB)"} <= set(titles), titles
        stranger = browser.new_context().new_page()
        without = url.split("?")[0]
        assert stranger.goto(without).status == 403
        assert stranger.goto(without + "?token=" + secrets.token_urlsafe(32)).status == 403
        assert stranger.goto(without + "api/jobs").status == 403
        stranger.close()
        # stop it from the notebook: the frame becomes the note, the open page says so
        add_cell_at_the_end(page, "%neural_dashboard --stop")
        try:
            page.wait_for_selector(".neural-dashboard-stopped", timeout=30_000)
        except Exception:
            shot(page, "dashboard_stop_failed")
            raise
        assert page.locator("iframe").count() == 0
        shot(page.locator(".neural-dashboard-stopped").first, "dashboard_stopped_note")
        dashboard.wait_for_selector("#stopped:not([hidden])", timeout=60_000)
        shot(dashboard, "dashboard_stopped_page")
    finally:
        dashboard.close()


# --- the panels -----------------------------------------------------------------------------------
def test_submit_panel_builder_and_sweep_widgets(lab, browser):
    page = open_notebook(browser, lab, "surfaces.ipynb", width=1400, height=1200)
    try:
        run_all(page)
        wait_for_all_cells(page, 600, "surfaces")
        panel = page.locator(".neural-submit-panel").first
        panel.scroll_into_view_if_needed()
        assert (
            "local (this machine)" in panel.locator("select").first.input_value()
            or (panel.locator("select").first.input_value() == "local")
            or "local" in panel.text_content()
        )
        assert "no platform charge" in panel.text_content()
        shot(panel, "submit_panel")
        panel.locator("select").first.select_option(label="sagemaker")
        page.wait_for_function(
            "() => document.querySelector('.neural-submit-panel').textContent"
            ".includes('estimated at most')",
            timeout=10_000,
        )
        assert panel.locator("button", has_text="Check credentials").is_visible()
        shot(panel, "submit_panel_sagemaker")
        truncated = page.eval_on_selector_all(
            ".neural-submit-panel .widget-label, .neural-builder .widget-label, "
            ".neural-submit-panel button, .neural-builder button",
            "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)",
        )
        assert truncated == [], truncated  # no label cut off ("Check credenti…")
        builder = page.locator(".neural-builder").first
        builder.scroll_into_view_if_needed()
        shot(builder, "builder")
        sweep = page.locator(".neural-sweep-monitor").first
        sweep.scroll_into_view_if_needed()
        text = sweep.text_content()
        assert re.search(r"succeeded 4", text), text
        assert page.locator("table.neural-trials").count() == 1  # the trials table once
        xtitles = sweep.locator("svg.neural-chart .xtitle").all_text_contents()
        assert xtitles == ["trial"], xtitles
        assert sweep.locator("svg.neural-scatter .xtick").count() >= 4
        shot(sweep, "sweep")
        shot(page, "surfaces_page", full_page=True)
    finally:
        page.close()
        shut_down_kernels(lab)
