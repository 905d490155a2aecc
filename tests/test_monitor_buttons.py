"""The monitor's Cancel and Detach act while ``%%neural_run`` blocks its cell (issue 13).

A real kernel (ipykernel 7 from this environment; ipykernel 6 too when
``NEURAL_JUPYTER_IPYKERNEL6`` names a directory holding it, e.g. made with
``pip install --target DIR --no-deps ipykernel==6.29.5 nest_asyncio``) is driven over the
Jupyter protocol exactly as a front-end drives it: the cell is sent and left running, the
buttons are found by their ``comm_open`` messages and clicked with the ``comm_msg`` a browser
sends. The browser version of the same clicks is in ``test_browser.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from neural_jupyter.backends.local import pid_alive
from neural_jupyter.jobs.store import JobStatus, JobStore
from tests.kernel_client import KernelSession

pytestmark = pytest.mark.slow

MODEL = (
    "%%neural_compile --show none\n"
    'network Long { input: (4,) layers: Dense(8, "relu") Output(1) loss: "mse" '
    "train { epochs: 5000 batch_size: 64 } }"
)
KERNELS = ["ipykernel7"] + (["ipykernel6"] if os.environ.get("NEURAL_JUPYTER_IPYKERNEL6") else [])


@pytest.fixture(scope="module", params=KERNELS)
def kernel(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("kernel-home")
    extra = os.environ.get("NEURAL_JUPYTER_IPYKERNEL6") if request.param == "ipykernel6" else None
    session = KernelSession(home, extra)
    session.home = home
    session.store = None
    session.run("%load_ext neural_jupyter")
    session.run(MODEL)
    yield session
    session.close()


def job_record(kernel: KernelSession, job_id: str | None = None):
    """A job as the kernel's job store has it (the newest one without ``job_id``).

    One ``JobStore`` per kernel session: opening a store checks the whole file, which is
    not something to do five times a second next to a kernel writing to it."""
    if getattr(kernel, "store", None) is None:
        path = kernel.home / "jobs.sqlite"
        if not path.exists():
            raise IndexError("no job store yet")
        kernel.store = JobStore(path)
    return kernel.store.get(job_id) if job_id else kernel.store.list(limit=1)[0]


def pid_of(record) -> int:
    return json.loads((Path(record.job_dir) / "process.json").read_text())["pid"]


def wait_until_running(kernel: KernelSession, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kernel.drain(timeout=0.2)
        try:
            record = job_record(kernel)
        except IndexError:  # no job yet
            continue
        if record.status is JobStatus.RUNNING and (Path(record.job_dir) / "process.json").exists():
            return record
    raise TimeoutError("the job did not start")


def test_cancel_click_stops_the_job_while_the_cell_blocks(kernel):
    since = len(kernel.messages)
    run = kernel.execute("%%neural_run --data synthetic\nLong")
    cancel = kernel.wait_for_button("Cancel", since)
    record = wait_until_running(kernel)
    pid = pid_of(record)
    clicked = time.monotonic()
    kernel.click(cancel)

    reply = kernel.reply(run, timeout=30)
    took = time.monotonic() - clicked
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "JobCancelled", kernel.text()[-1000:]
    assert job_record(kernel, record.id).status is JobStatus.CANCELLED
    assert not pid_alive(pid)
    assert took < 10, took
    descriptions = [s.get("description") for s in kernel.widget_states(cancel)]
    assert "Cancelling…" in descriptions  # the click was answered while the cell ran


def test_detach_click_returns_the_cell_and_the_job_keeps_running(kernel):
    since = len(kernel.messages)
    run = kernel.execute("%%neural_run --data synthetic\nLong")
    detach = kernel.wait_for_button("Detach", since)
    record = wait_until_running(kernel)
    kernel.click(detach)

    reply = kernel.reply(run, timeout=60)  # a loaded CI machine is slow to answer
    assert reply["content"]["ename"] == "JobDetached"
    assert f"%neural_attach {record.id}" in kernel.text()
    time.sleep(1.0)
    assert job_record(kernel, record.id).status is JobStatus.RUNNING
    assert pid_alive(pid_of(record))
    kernel.run(f"%neural_cancel {record.id}", timeout=30)
    assert job_record(kernel, record.id).status is JobStatus.CANCELLED
    assert not pid_alive(pid_of(record))


def test_interrupt_while_cancelling_leaves_a_consistent_state(kernel):
    """Cancel, then interrupt the kernel at once: the cancel is carried through, the store
    says CANCELLED, no process is left and the monitor is not stuck at 'Cancelling…'."""
    since = len(kernel.messages)
    run = kernel.execute("%%neural_run --data synthetic\nLong")
    cancel = kernel.wait_for_button("Cancel", since)
    record = wait_until_running(kernel)
    kernel.click(cancel)
    deadline = time.monotonic() + 30
    while "Cancelling…" not in [s.get("description") for s in kernel.widget_states(cancel)]:
        assert time.monotonic() < deadline, "the click was not answered"
        time.sleep(0.05)
    kernel.manager.interrupt_kernel()

    reply = kernel.reply(run, timeout=30)
    assert reply["content"]["ename"] in ("JobCancelled", "KeyboardInterrupt"), kernel.text()
    assert job_record(kernel, record.id).status is JobStatus.CANCELLED
    assert not pid_alive(pid_of(record))
    kernel.run("1 + 1")  # the kernel is usable again
    jobs = kernel.run("%neural_jobs --status cancelled --limit 50")
    assert jobs["content"]["status"] == "ok"


def test_interrupt_detaches_and_the_job_keeps_running(kernel):
    since = len(kernel.messages)
    run = kernel.execute("%%neural_run --data synthetic\nLong")
    kernel.wait_for_button("Cancel", since)
    record = wait_until_running(kernel)
    kernel.manager.interrupt_kernel()
    reply = kernel.reply(run, timeout=60)  # a loaded CI machine is slow to answer
    assert reply["content"]["ename"] == "JobDetached"
    assert job_record(kernel, record.id).status is JobStatus.RUNNING
    kernel.run(f"%neural_cancel {record.id}", timeout=30)
    assert not pid_alive(pid_of(record))


def test_other_messages_wait_for_the_cell_and_keep_their_order(kernel):
    """Only the monitor's own widgets are served during the wait: another widget's message
    and the next cell (Run All) run after the training cell, in the order they were sent."""
    kernel.run(
        "import ipywidgets as w\n"
        "from neural_jupyter import jobs as _jobs\n"
        "order = []\n"
        "slider = w.IntSlider(description='other')\n"
        "slider.observe(lambda c: order.append(('slider', c['new'], "
        "_jobs.list(limit=1)[0].status.value)), names='value')\n"
        "display(slider)"
    )
    kernel.drain(timeout=0.5)
    slider = [
        m["content"]["comm_id"]
        for m in kernel.messages
        if m["msg_type"] == "comm_open"
        and m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
    ][-1]
    run = kernel.execute("%%neural_run --data synthetic --epochs 40\nLong")
    wait_until_running(kernel)
    kernel.send_comm(slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
    after = kernel.execute("order.append(('cell', None, _jobs.list(limit=1)[0].status.value))")
    assert kernel.reply(run, timeout=120)["content"]["status"] == "ok", kernel.text()[-1500:]
    assert kernel.reply(after, timeout=30)["content"]["status"] == "ok"
    kernel.run("print(order)")
    assert "[('slider', 7, 'SUCCEEDED'), ('cell', None, 'SUCCEEDED')]" in kernel.text()
