"""The live job monitors: text lines, the widget's parts, redaction, buttons and throttling.

The monitors read ``job.progress`` (a real ``Progress``, applied before each ``feed`` exactly as
``Job.follow()`` + ``watch()`` do) and are fed ``Event``/``LogLine`` items from ``parse_line``.
The widgets are real ipywidgets objects; no front-end is needed to build and read them.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
from types import SimpleNamespace

import pytest

from neural_jupyter.jobs.tracker import Progress
from neural_jupyter.runtime.events import Event, LogLine, parse_line
from neural_jupyter.ui.monitor import (
    LOG_LINES,
    LOG_SHOWN,
    TextMonitor,
    WidgetMonitor,
    make_monitor,
    widget_frontend,
)

SECRET = "AKIAABCDEFGHIJKLMNOP"
RENDERS_PER_SECOND = 10  # the most redraws a second the monitor may make (issue requirement)


def make_job(name: str = "DigitNet") -> SimpleNamespace:
    return SimpleNamespace(
        id="nj-0123abcd", name=name, record=SimpleNamespace(platform="local"), progress=Progress()
    )


def line(event: str, **fields) -> str:
    return json.dumps({"event": event, "time": 1.7e9, **fields})


START = line(
    "start",
    job_id="nj-0123abcd",
    model="DigitNet",
    device="cpu",
    device_name="cpu",
    epochs=3,
    batch_size=64,
    steps_per_epoch=10,
    train_samples=1437,
    val_samples=360,
    params=12345,
    resumed_from=None,
)


def epoch_line(epoch: int, loss: float, accuracy: float) -> str:
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "val_loss": loss * 1.1,
        "val_accuracy": accuracy - 0.02,
        "lr": 0.001,
    }
    return line("epoch", epoch=epoch, epochs=3, metrics=metrics, duration=1.25)


def batch_line(epoch: int, batch: int, loss: float = 0.5) -> str:
    return line("batch", epoch=epoch, batch=batch, batches=10, loss=loss)


DONE = line(
    "done",
    metrics={"loss": 0.2, "accuracy": 0.95, "val_loss": 0.25, "val_accuracy": 0.93, "lr": 0.001},
    best_epoch=2,
    epochs_run=3,
    stopped_early=False,
    wall_time=65.0,
)


def feed(view, text: str, stream: str = "stdout"):
    """What watch() does with one stream line: the job's tracker first, then the monitor."""
    item = parse_line(text, stream)
    if isinstance(item, Event):
        view.job.progress.apply(item)
    view.feed(item)
    return item


def feed_epochs(view, epochs: int = 2) -> None:
    feed(view, START)
    for epoch in range(1, epochs + 1):
        for batch in range(1, 11):
            feed(view, batch_line(epoch, batch, loss=1.0 / (epoch + batch)))
        feed(view, epoch_line(epoch, loss=1.0 / epoch, accuracy=0.5 + 0.2 * epoch))


def widget_strings(view: WidgetMonitor) -> list[str]:
    """Every string a front-end would receive from the monitor's widget tree."""
    out: list[str] = []
    pending = [view.widget]
    while pending:
        widget = pending.pop()
        pending.extend(getattr(widget, "children", ()))
        for name in ("value", "description", "tooltip", "placeholder"):
            value = getattr(widget, name, None)
            if isinstance(value, str):
                out.append(value)
    return out


# --- text monitor -------------------------------------------------------------------------------
def test_text_monitor_prints_start_epoch_and_finish_lines_with_metrics_and_eta():
    out = io.StringIO()
    view = TextMonitor(make_job(), out)
    feed_epochs(view, epochs=2)
    feed(view, DONE)
    view.finish("SUCCEEDED")
    lines = out.getvalue().splitlines()

    assert lines[0] == (
        "[nj-0123abcd] DigitNet on local (cpu): 1437 training / 360 validation samples, "
        "12,345 params"
    )
    epoch_lines = [text for text in lines if text.startswith("epoch ")]
    assert len(epoch_lines) == 2
    first = epoch_lines[0]
    assert first.startswith("epoch 1/3  loss 1.0000  accuracy 0.7000  val_loss 1.1000")
    assert "val_accuracy 0.6800" in first
    assert "lr" not in first.split("(")[0]  # the learning rate is not a metric line item
    assert re.search(r"\(1\.25 s, ETA \d+:\d\d\)$", first), first
    assert epoch_lines[1].startswith("epoch 2/3  loss 0.5000")
    assert lines[-1].startswith("[nj-0123abcd] finished in 1:05, best epoch 2: loss 0.2000")
    assert "val_accuracy 0.9300" in lines[-1]


def test_text_monitor_shows_stderr_redacted_and_reports_failures():
    out = io.StringIO()
    view = TextMonitor(make_job(), out)
    feed(view, START)
    feed(view, f"warning: key {SECRET} in the environment", "stderr")
    feed(view, "a stdout print stays out of the text output", "stdout")
    feed(view, line("error", type="ValueError", message=f"bad key {SECRET}", traceback="..."))
    view.finish("FAILED", "ValueError: bad key ****")
    text = out.getvalue()
    assert "  | warning: key **** in the environment" in text
    assert "a stdout print" not in text
    assert "error: ValueError: bad key ****" in text
    assert text.rstrip().endswith("[nj-0123abcd] failed: ValueError: bad key ****")
    assert SECRET not in text


def test_text_monitor_stays_quiet_under_a_flood_of_batch_events():
    out = io.StringIO()
    view = TextMonitor(make_job(), out)
    feed(view, START)
    for batch in range(3_000):
        feed(view, batch_line(1, batch % 10 + 1))
    # batch progress lines appear at most every few seconds, and not in the first 2 s
    assert out.getvalue().count("batch") == 0
    view._started -= 10  # as if the job had run for a while: one progress line, not thousands
    for batch in range(500):
        feed(view, batch_line(1, batch % 10 + 1))
    progress_lines = [text for text in out.getvalue().splitlines() if " batch " in text]
    assert len(progress_lines) == 1
    assert re.fullmatch(r"  epoch 1/3 batch \d+/10 loss 0\.5000", progress_lines[0])


# --- widget monitor -----------------------------------------------------------------------------
def test_widget_shows_state_badge_progress_values_and_eta():
    view = WidgetMonitor(make_job())
    assert "RUNNING" in view.header.value
    assert "waiting for the first epoch" in view.chart.value
    feed(view, START)
    for batch in range(1, 5):
        feed(view, batch_line(1, batch))
    view.maybe_render(force=True)

    header = view.header.value
    assert "RUNNING</span>" in header
    assert "#1f77b4" in header  # the running badge colour
    assert "<b>DigitNet</b>" in header and "<code>nj-0123abcd</code>" in header
    assert "on local" in header and "cpu" in header
    assert (view.epoch_bar.max, view.epoch_bar.value) == (3, 0)
    assert (view.batch_bar.max, view.batch_bar.value) == (10, 4)
    assert "epoch 0/3 · batch 4/10 · batch loss 0.5000" in view.progress_text.value
    assert re.search(r"ETA \d+:\d\d", view.eta_text.value), view.eta_text.value


def test_widget_chart_gets_points_after_epoch_events():
    view = WidgetMonitor(make_job())
    feed_epochs(view, epochs=2)
    view.maybe_render(force=True)
    chart = view.chart.value
    assert chart.startswith("<svg") and chart.endswith("</svg>")
    assert "waiting for the first epoch" not in chart
    series = dict(re.findall(r"data-name='([^']+)' points='([^']+)'", chart))
    assert set(series) == {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert all(len(points.split()) == 2 for points in series.values())  # one point per epoch
    assert chart.count("<circle class='point'") == 8
    assert (view.epoch_bar.value, view.batch_bar.value) == (2, 0)

    feed(view, epoch_line(3, loss=0.3, accuracy=0.95))
    view.maybe_render(force=True)
    series = dict(re.findall(r"data-name='([^']+)' points='([^']+)'", view.chart.value))
    assert len(series["loss"].split()) == 3


def test_widget_finish_shows_the_summary_and_removes_the_buttons():
    view = WidgetMonitor(make_job())
    feed_epochs(view, epochs=3)
    feed(view, line("artifact", name="weights", path="output/model.pt", bytes=10))
    feed(view, DONE)
    view.finish("SUCCEEDED")
    assert "SUCCEEDED</span>" in view.header.value and "#2ca02c" in view.header.value
    assert "finished</b> in 1:05; best epoch 2" in view.summary.value
    assert "<td>val_accuracy</td><td>0.9300</td>" in view.summary.value
    assert "artifacts: weights" in view.summary.value
    assert view.cancel_button.disabled and view.detach_button.disabled
    assert view.controls.layout.display == "none"  # no dead buttons left on screen


def test_finished_header_line_agrees_with_the_summary_table():
    """Issue 13: 'epoch 10/10 · batch 0/23 · loss 0.2252' above a table saying 0.1498."""
    view = WidgetMonitor(make_job())
    feed_epochs(view, epochs=3)
    feed(view, batch_line(3, 7, loss=0.9876))  # a last batch loss that is not the result
    feed(view, DONE)
    view.finish("SUCCEEDED")
    text = view.progress_text.value
    assert text.startswith("epoch 3/3 · loss 0.2000 · accuracy 0.9500")
    assert "batch" not in text and "0.9876" not in text
    for name, value in re.findall(r"<td>(\w+)</td><td>([\d.]+)</td>", view.summary.value):
        assert f"{name} {value}" in text
    assert view.eta_text.value == "took 1:05"


def test_eta_is_smoothed_across_an_epoch_boundary_pause():
    """Issue 13: the ETA jumped from 0:04 to 0:08 within seconds. A validation pass that
    pauses the batches moves the ETA only part of the way to the new estimate."""
    now = [0.0]
    view = WidgetMonitor(make_job(), clock=lambda: now[0])
    feed(view, START)
    etas = []
    for epoch in range(1, 4):
        for batch in range(1, 11):
            now[0] += 0.1
            feed(view, batch_line(epoch, batch))
            etas.append(view.eta())
        now[0] += 2.0  # validation: twice as long as the batches
        feed(view, line("epoch", epoch=epoch, epochs=3, metrics={"loss": 0.5}, duration=3.0))
        etas.append(view.eta())
    steps = [abs(b - a) for a, b in itertools.pairwise(etas[10:])]
    assert max(steps) < 2.5, steps  # no jump of the size of the pause
    assert etas[-1] < 0.5  # and it reaches zero at the end
    last_epoch = etas[22:32]
    assert last_epoch == sorted(last_epoch, reverse=True)  # it counts down once the pace is known


def test_widget_log_panel_is_collapsible_and_has_the_epoch_lines():
    view = WidgetMonitor(make_job())
    assert view.log_box.selected_index is None  # collapsed until opened
    feed_epochs(view, epochs=2)
    view.maybe_render(force=True)
    assert "start: DigitNet on cpu" in view.log_view.value
    assert "epoch 2/3  loss 0.5000" in view.log_view.value
    assert view.log_box.get_title(0) == "log (3 lines)"


def test_buttons_say_so_where_clicks_cannot_arrive():
    view = WidgetMonitor(make_job())
    view.set_buttons_live(False)
    assert view.cancel_button.layout.display == "none"
    assert view.detach_button.layout.display == "none"
    assert "interrupt the kernel" in view.busy_note.value
    assert "%neural_cancel nj-0123abcd" in view.busy_note.value
    view.set_buttons_live(True)
    assert view.cancel_button.layout.display == "" and view.busy_note.layout.display == "none"


def test_widget_log_tail_is_escaped_redacted_and_bounded():
    view = WidgetMonitor(make_job())
    feed(view, START)
    feed(view, f"export AWS_ACCESS_KEY_ID={SECRET} <script>alert(1)</script> & done", "stderr")
    feed(view, f"plain print: {SECRET}", "stdout")
    view.maybe_render(force=True)
    log = view.log_view.value
    assert log.startswith("<pre class='neural-log'")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in log
    assert "<script>" not in log
    assert "plain print: ****" in log
    assert log in widget_strings(view) and view.header.value in widget_strings(view)
    for value in widget_strings(view):
        assert SECRET not in value
    assert all(SECRET not in text for text in view.log)

    for n in range(LOG_LINES * 5):
        feed(view, f"log line {n}")
    assert len(view.log) == LOG_LINES
    assert view.log[-1] == f"log line {LOG_LINES * 5 - 1}"
    assert view.log[0] == f"log line {LOG_LINES * 4}"
    view.maybe_render(force=True)
    shown = re.findall(r"log line (\d+)", view.log_view.value)
    assert shown == [str(n) for n in range(LOG_LINES * 5 - LOG_SHOWN, LOG_LINES * 5)]
    assert view.log_box.get_title(0) == f"log ({LOG_LINES} lines, last {LOG_SHOWN} shown)"
    for value in widget_strings(view):
        assert SECRET not in value


def test_cancel_button_requests_cancel_and_calls_the_callback():
    calls = []
    view = WidgetMonitor(make_job(), on_cancel=lambda: calls.append("cancel"))
    assert not view.cancel_requested
    view.cancel_button.click()
    assert view.cancel_requested
    assert calls == ["cancel"]
    assert view.cancel_button.disabled
    assert view.cancel_button.description == "Cancelling…"
    assert not view.detach_requested


def test_cancel_without_callback_still_requests_and_detach_requests_detach():
    view = WidgetMonitor(make_job())
    view.detach_button.click()
    assert view.detach_requested and not view.cancel_requested
    view.cancel_button.click()
    assert view.cancel_requested


def test_widget_renders_are_coalesced_under_a_flood_of_events():
    view = WidgetMonitor(make_job())
    values: list[int] = []
    view.batch_bar.observe(lambda change: values.append(change["new"]), names="value")
    feed(view, START)
    started = time.monotonic()
    for n in range(10_000):
        feed(view, batch_line(1, n % 10 + 1))
    elapsed = time.monotonic() - started
    assert 1 <= view.renders <= elapsed * RENDERS_PER_SECOND + 2, (view.renders, elapsed)
    assert len(values) <= view.renders  # no trait is set outside a render
    view.finish("SUCCEEDED")  # the final state is always drawn
    assert view.batch_bar.value == 10


def test_log_lines_are_coalesced_too_and_the_buffer_stays_bounded():
    view = WidgetMonitor(make_job())
    started = time.monotonic()
    for n in range(1_000):
        view.feed(LogLine(f"line {n}", "stderr" if n % 2 else "stdout"))
    elapsed = time.monotonic() - started
    assert view.renders <= elapsed * RENDERS_PER_SECOND + 2
    assert len(view.log) == LOG_LINES == view.log.maxlen
    assert view.log[-1] == "line 999"


def test_heartbeats_do_not_render():
    view = WidgetMonitor(make_job())
    for _ in range(100):
        view.feed(None)
    assert view.renders == 0


# --- choosing a monitor -------------------------------------------------------------------------
def test_widget_frontend_honours_the_environment_variable(monkeypatch):
    monkeypatch.setenv("NEURAL_JUPYTER_MONITOR", "widget")
    assert widget_frontend() is True
    assert isinstance(make_monitor(make_job()), WidgetMonitor)
    monkeypatch.setenv("NEURAL_JUPYTER_MONITOR", "TEXT")
    assert widget_frontend() is False
    assert isinstance(make_monitor(make_job(), stream=io.StringIO()), TextMonitor)
    monkeypatch.delenv("NEURAL_JUPYTER_MONITOR")
    assert widget_frontend() is False  # no kernel here: plain text


def test_widget_frontend_needs_a_kernel(monkeypatch):
    monkeypatch.delenv("NEURAL_JUPYTER_MONITOR", raising=False)
    shell = SimpleNamespace(kernel=object())
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    assert widget_frontend() is True
    monkeypatch.setattr("IPython.get_ipython", lambda: SimpleNamespace())  # terminal IPython
    assert widget_frontend() is False
    monkeypatch.setenv("NEURAL_JUPYTER_MONITOR", "text")
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    assert widget_frontend() is False


def test_widget_frontend_is_false_in_a_plain_interactive_shell(ip, monkeypatch):
    monkeypatch.delenv("NEURAL_JUPYTER_MONITOR", raising=False)
    assert widget_frontend() is False


@pytest.mark.parametrize("mode", ["text", "widget"])
def test_make_monitor_explicit_modes(mode, monkeypatch):
    monkeypatch.setenv("NEURAL_JUPYTER_MONITOR", "widget" if mode == "text" else "text")
    view = make_monitor(make_job(), mode, stream=io.StringIO())
    assert isinstance(view, TextMonitor if mode == "text" else WidgetMonitor)


def test_a_background_monitor_cancels_through_the_job():
    """``--no-wait``: nothing waits on the monitor, so its Cancel button calls ``Job.cancel``
    (which updates the store), given to the monitor through its public ``on_cancel``."""
    from neural_jupyter import api

    release = threading.Event()
    calls = []
    job = make_job()
    job.record = SimpleNamespace(platform="local", status=SimpleNamespace(value="CANCELLED"))
    job.record.error = None

    def follow():
        release.wait(10)
        yield None

    job.follow = follow
    job.cancel = lambda: (calls.append("Job.cancel"), release.set())
    view = api.watch_in_background(job, "widget", show=False)
    view.cancel_button.click()
    assert calls == ["Job.cancel"]
    assert release.is_set()
