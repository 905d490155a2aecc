"""The readable surfaces of issue 13, checked on the markup they send to the front-end:
chart axes (nice ticks, gridlines, titles, labels that fit), the sweep views (trials table
once, best-so-far counted in trials, scatter ticks), the submit panel's defaults and the
dashboard frame that turns into a note when the dashboard stops. The browser test
(``test_browser.py``) takes screenshots of the same surfaces."""

from __future__ import annotations

import itertools
import re
from types import SimpleNamespace

import pytest

from neural_jupyter.ui.chart import history_svg, nice_ticks, tick_labels
from neural_jupyter.ui.sweep_monitor import (
    SweepResultView,
    best_so_far,
    best_so_far_svg,
    scatter_svg,
    trials_html,
)

HISTORY = [
    {"epoch": e, "loss": 2.3 / e, "val_loss": 2.4 / e, "accuracy": 0.5 + e / 25, "lr": 1e-3}
    for e in range(1, 11)
]


# --- charts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("low", "high"),
    [(0.1498, 2.3), (0.9, 0.97), (1.2e-5, 9.2e-5), (0.0, 1.0), (1234.0, 98000.0), (1, 1500)],
)
def test_nice_ticks_enclose_the_data_with_a_few_round_steps(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high
    assert 3 <= len(ticks) <= 7
    steps = {round(b - a, 12) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    mantissa = f"{steps.pop():.1e}".split("e")[0]
    assert mantissa in ("1.0", "2.0", "2.5", "5.0")
    labels = tick_labels(ticks)
    assert len(set(labels)) == len(labels)  # each tick readable as itself
    assert all(len(label) <= 7 for label in labels), labels  # fits the 58 px margin


def test_tiny_values_get_short_exponent_labels_not_clipped_digits():
    """Issue 13: y labels read '.92e-05' (clipped)."""
    labels = tick_labels(nice_ticks(1.2e-5, 9.2e-5))
    assert labels == ["0", "2e-5", "4e-5", "6e-5", "8e-5", "1e-4"]


def test_history_chart_has_axis_titles_ticks_gridlines_and_fills_the_width():
    svg = history_svg(HISTORY)
    assert "width='100%'" in svg and "viewBox='0 0 760 " in svg  # two panels, scaled to fit
    assert svg.count("class='xtitle'") == 2 and ">epoch</text>" in svg
    titles = re.findall(r"class='ytitle'[^>]*>([^<]+)<", svg)
    assert titles == ["loss", "accuracy"]
    assert len(re.findall(r"class='ytick'", svg)) >= 8  # several ticks per panel, not min/max
    assert len(re.findall(r"class='grid'", svg)) >= 12
    loss_ticks = re.findall(r"class='ytick'[^>]*>([^<]+)<", svg)[:6]
    assert loss_ticks[0] == "0.0" and "2.5" in loss_ticks


def test_labels_stay_inside_the_panel():
    svg = history_svg([{"epoch": e, "loss": 1e-5 * e} for e in range(1, 4)])
    for x in re.findall(r"class='ytick' x='([\d.]+)'", svg):
        assert float(x) > 30  # right-aligned at the plot edge with room for 7 characters


# --- sweeps -------------------------------------------------------------------------------------
def trial(index, lr, units, metric, status="SUCCEEDED"):
    return SimpleNamespace(
        index=index,
        params={"lr": lr, "units": units},
        seed=0,
        status=status,
        reused=False,
        metric=metric,
        duration=1.0,
        job_id=f"nj-{index:08x}",
    )


TRIALS = [trial(1, 0.01, 16, 0.4), trial(2, 0.001, 32, 0.3), trial(3, 0.1, 64, 0.5)]


def test_best_so_far_is_counted_in_trials():
    rows = best_so_far(TRIALS, "min", "val_loss")
    assert rows == [
        {"trial": 1, "best val_loss": 0.4},
        {"trial": 2, "best val_loss": 0.3},
        {"trial": 3, "best val_loss": 0.3},
    ]
    svg = best_so_far_svg(TRIALS, "min", "val_loss")
    assert re.findall(r"class='xtitle'[^>]*>([^<]+)<", svg) == ["trial"]
    assert "epoch" not in svg


def test_scatter_has_tick_values_and_axis_titles():
    svg = scatter_svg(TRIALS, "val_loss")
    assert re.findall(r"class='xtitle'[^>]*>([^<]+)<", svg) == ["lr", "units"]
    assert re.findall(r"class='ytitle'[^>]*>([^<]+)<", svg) == ["val_loss", "val_loss"]
    assert len(re.findall(r"class='xtick'", svg)) >= 6
    assert len(re.findall(r"class='ytick'", svg)) >= 6
    assert svg.count("class='point'") == 6


def test_trials_table_counts_from_one_like_the_chart_and_says_what_time_is():
    trials = [trial(0, 0.01, 16, 0.4), trial(1, 0.001, 32, 0.3)]  # the sweep's own indices
    table = trials_html(trials, "val_loss")
    headers = re.findall(r"<th>(.*?)</th>", table)
    assert headers == ["trial", "lr", "units", "seed", "status", "val_loss", "time", "job"]
    first_cells = re.findall(r"<tr><td>(.*?)</td>", table)
    assert first_cells == ["1", "2"]
    assert "<td>1.0 s</td>" in table


def test_sweep_result_shows_the_trials_table_once_under_a_live_monitor():
    result = SimpleNamespace(
        id="sw-1",
        metric="val_loss",
        best=TRIALS[1],
        trials=TRIALS,
        summary=lambda: [{"lr": 0.001, "units": 32, "val_loss mean": 0.3}],
    )
    assert SweepResultView(result)._repr_html_().count("class='neural-trials'") == 1
    below_monitor = SweepResultView(result, include_trials=False)._repr_html_()
    assert "neural-trials" not in below_monitor and "best val_loss" in below_monitor


# --- submit panel -------------------------------------------------------------------------------
def test_submit_panel_starts_on_this_machine_and_preselects_instances():
    from neural_jupyter.ui.submit_panel import SubmitPanel

    calls = []
    panel = SubmitPanel("Small", lambda **kw: calls.append(kw) or "job", lambda job: None)
    assert panel.platform.value == "local"
    assert panel.platform.options[0] == ("local (this machine)", "local")
    assert "no platform charge" in panel.cost.value
    assert panel.instance.layout.display == "none"  # nothing to choose on this machine
    panel.on_submit()
    assert calls == [{"platform": "local"}]
    for name in ("azureml", "sagemaker", "vertex"):
        panel.platform.value = name
        assert panel.instance.value == panel.instance.options[0][1], name  # never empty
        assert "estimated at most <b>$" in panel.cost.value, name
    panel.platform.value = "kubernetes"
    assert panel.instance.layout.display == "none"
    assert "no instance types listed" in panel.cost.value


def test_submit_panel_gpus_follow_the_chosen_instance():
    from neural_jupyter.pricing import instance_types
    from neural_jupyter.ui.submit_panel import SubmitPanel

    panel = SubmitPanel("Small", lambda **kw: None, lambda job: None)
    panel.platform.value = "sagemaker"
    offers = {o.instance_type: o for o in instance_types("sagemaker")}
    cpu = next(name for name, o in offers.items() if not o.gpus)
    gpu = next(name for name, o in offers.items() if o.gpus)
    labels = dict((value, label) for label, value in panel.instance.options)
    assert f"{cpu} — CPU — $" in labels[cpu] and "0×" not in labels[cpu]
    assert f"{offers[gpu].gpus}×{offers[gpu].gpu_type}" in labels[gpu]
    panel.instance.value = cpu
    assert panel.gpus.value == 0
    panel.instance.value = gpu
    assert panel.gpus.value == offers[gpu].gpus
    panel.gpus.value = 0  # the user may still ask for fewer
    panel.max_hours.value = 2
    assert panel.gpus.value == 0 and panel.arguments()["gpus"] == 0


def test_submit_panel_labels_have_room():
    from neural_jupyter.ui.submit_panel import SubmitPanel

    panel = SubmitPanel("Small", lambda **kw: None, lambda job: None)
    for control in (panel.platform, panel.instance, panel.host, panel.gpus, panel.max_hours):
        assert control.style.description_width == "90px"
    layouts = {id(c.layout) for c in (panel.platform, panel.instance, panel.gpus)}
    assert len(layouts) == 3  # each control hides and shows on its own
    assert panel.check_button.layout.width == "auto"  # "Check credentials" in full


def test_builder_labels_have_room():
    from neural_jupyter.ui.builder import ModelBuilder

    builder = ModelBuilder()
    for control in (builder.learning_rate, builder.batch_size, builder.input_shape):
        assert control.style.description_width == "initial"


# --- dashboard ----------------------------------------------------------------------------------
@pytest.fixture
def shown(monkeypatch):
    """What the magics publish: ``display``/``update_display`` calls as (kind, bundle, id)."""
    pytest.importorskip("tornado")
    pytest.importorskip("plotly")
    import IPython.display

    calls = []

    def display(*objects, raw=False, display_id=None, **kwargs):
        for obj in objects:
            if hasattr(obj, "_ipython_display_"):
                obj._ipython_display_()
            else:
                calls.append(("display", obj, display_id))

    def update_display(obj, *, display_id, raw=False, **kwargs):
        calls.append(("update", obj, display_id))

    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython.display, "update_display", update_display)
    return calls


def test_stopping_the_dashboard_replaces_its_frame_with_a_note(ip, neural_home, shown):
    ip.run("%neural_dashboard --tunnel none")
    ip.run("%neural_dashboard --stop")
    kind, bundle, display_id = shown[0]
    assert kind == "display" and display_id and "<iframe" in bundle["text/html"]
    updates = [c for c in shown if c[0] == "update" and c[2] == display_id]
    assert len(updates) == 1, shown
    note = updates[0][1]["text/html"]
    assert "dashboard stopped" in note and "<iframe" not in note
    assert "%neural_dashboard" in note
    assert "token" not in updates[0][1]["text/plain"]


def test_a_new_dashboard_retires_the_old_frame(ip, neural_home, shown):
    from neural_jupyter.ui.dashboard import control

    try:
        ip.run("%neural_dashboard --tunnel none")
        ip.run("%neural_dashboard --tunnel none")
        first_id = shown[0][2]
        updates = [c for c in shown if c[0] == "update"]
        assert [c[2] for c in updates] == [first_id]
        assert "a new one was started" in updates[0][1]["text/html"]
    finally:
        control.stop()
