"""The submission contract: resources, prices, retries, idempotency, plug-in backends, the
panel, and secrets never leaking anywhere."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap

import pytest

from neural_jupyter import api
from neural_jupyter.backends import available, get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import ResourceSpec
from neural_jupyter.errors import ConfigurationError, PlatformConnectionError, PlatformError
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.pricing import compare_platforms, estimate_cost

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 128 }
}
"""

PLUGIN = '''
from neural_jupyter.backends.base import CostEstimate
from neural_jupyter.backends.local import LocalBackend


class FakeCloud(LocalBackend):
    """A third-party backend: runs locally, but charges like a cloud."""

    name = "fakecloud"
    label = "Fake cloud"
    submits = []

    def submit(self, bundle, job, resources):
        FakeCloud.submits.append(job.idempotency_key)
        return super().submit(bundle, job, resources)

    def estimate_cost(self, resources):
        hours = resources.max_runtime_hours or 1.0
        return CostEstimate("fakecloud", resources.instance_type or "big", 4.0, hours)

    def plan(self, job, resources):
        return {"CreateJob": {"name": job.idempotency_key, "resources": resources.public()}}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A tiny installed third-party package registering a backend by entry point."""
    site = tmp_path / "site"
    (site / "fakecloud_pkg").mkdir(parents=True)
    (site / "fakecloud_pkg" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "fakecloud_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakecloud-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[neural_jupyter.backends]\nfakecloud = fakecloud_pkg:FakeCloud\n"
    )
    monkeypatch.syspath_prepend(str(site))
    from neural_jupyter import backends

    backends._instances.pop("fakecloud", None)
    yield sys.modules.get("fakecloud_pkg") or __import__("fakecloud_pkg")
    backends._instances.pop("fakecloud", None)


def test_resource_spec_errors_name_the_argument():
    with pytest.raises(ConfigurationError, match="--gpus must be a whole number from 0 to 64"):
        ResourceSpec(gpus=-1).validated()
    with pytest.raises(ConfigurationError, match="--max-hours must be a finite number"):
        ResourceSpec(max_runtime_hours="two").validated()
    with pytest.raises(ConfigurationError, match="--instance must be a name"):
        ResourceSpec(instance_type="ml g5").validated()
    with pytest.raises(ConfigurationError, match="28 days"):
        ResourceSpec(max_runtime_hours=10_000).validated()
    spec = ResourceSpec(max_runtime_hours=2, timeout_seconds=600).validated()
    assert spec.max_seconds == 600


def test_prices_and_platform_comparison():
    cost = estimate_cost("sagemaker", "ml.g5.xlarge", hours=3)
    assert cost.total_usd == pytest.approx(3 * cost.hourly_usd)
    assert cost.date and cost.source.startswith("https://")
    with pytest.raises(ConfigurationError, match=r"did you mean 'ml\.g5\.xlarge'"):
        estimate_cost("sagemaker", "ml.g5.xlarg")
    table = compare_platforms(gpus=1, hours=2)
    totals = [row["total_usd"] for row in table]
    assert totals == sorted(totals) and len(totals) > 5
    assert all(row["gpus"] == 1 for row in table)
    assert "sagemaker" in str(table) and "<table" in table._repr_html_()


def test_retries_only_transient_faults(monkeypatch):
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise PlatformConnectionError("connection reset", platform="x")
        return "ok"

    def transient(exc):
        return isinstance(exc, PlatformConnectionError)

    assert retry_module.call_with_retries(flaky, transient) == "ok" and len(calls) == 3
    calls.clear()

    def always_down():
        calls.append(1)
        raise PlatformConnectionError("down", platform="x")

    with pytest.raises(PlatformConnectionError):
        retry_module.call_with_retries(always_down, transient)
    assert len(calls) == 3  # at most three tries
    calls.clear()

    def refused():
        calls.append(1)
        raise PlatformError("bad request", platform="x")

    with pytest.raises(PlatformError, match="bad request"):
        retry_module.call_with_retries(refused, transient)
    assert len(calls) == 1  # permanent: raised at once


def test_third_party_backend_registers_by_entry_point(plugin):
    assert available()["fakecloud"] == "fakecloud_pkg:FakeCloud"
    backend = get_backend("fakecloud")
    assert backend.label == "Fake cloud"
    with pytest.raises(ConfigurationError, match="did you mean 'fakecloud'"):
        get_backend("fakeclod")


def test_dry_run_sends_nothing_and_shows_request_and_cost(plugin, neural_home):
    plan = api.submit(
        SMALL, "digits", platform="fakecloud", instance="big", max_hours=2, dry_run=True
    )
    assert plugin.FakeCloud.submits == []
    assert JobStore().list() == []
    assert plan.cost.total_usd == pytest.approx(8.0)
    assert plan.request["CreateJob"]["name"] == plan.idempotency_key
    assert "Dry run" in str(plan) and "$8.00" in str(plan)


def test_cost_threshold_needs_yes_and_resubmit_is_idempotent(plugin, neural_home, capsys):
    with pytest.raises(ConfigurationError, match=r"may cost up to \$8.00"):
        api.submit(SMALL, "digits", platform="fakecloud", max_hours=2, monitor="none")
    assert plugin.FakeCloud.submits == [] and JobStore().list() == []
    first = api.submit(SMALL, "digits", platform="fakecloud", max_hours=2, yes=True, monitor="none")
    assert first.status == "SUCCEEDED"
    again = api.submit(SMALL, "digits", platform="fakecloud", max_hours=2, yes=True, monitor="none")
    assert again.job_id == first.job_id
    assert "already submitted" in capsys.readouterr().out
    assert len(plugin.FakeCloud.submits) == 1
    other = api.submit(
        SMALL, "digits", platform="fakecloud", max_hours=2, yes=True, new=True, monitor="none"
    )
    assert other.job_id != first.job_id and len(plugin.FakeCloud.submits) == 2


def test_submit_magic_dry_run_and_text_panel(ip, plugin, neural_home, capsys):
    ip.run(f"%%neural_compile --show none\n{SMALL}")
    plan = ip.run(
        "%neural_submit Small --platform fakecloud --data digits --max-hours 1 "
        "--set region=eu --dry-run"
    )
    assert plan.request["CreateJob"]["resources"]["extra.region"] == "eu"
    ip.run("%neural_submit Small --data digits")
    out = capsys.readouterr().out
    assert "--platform" in out and "sagemaker" in out
    assert isinstance(ip.run_error("%neural_submit Nope --platform fakecloud"), Exception)


def test_submit_panel_widget(plugin, neural_home):
    from neural_jupyter.ui.submit_panel import SubmitPanel

    calls = []

    def submit(**choices):
        calls.append(choices)
        if choices["platform"] == "ssh" and not choices["extra"].get("host"):
            raise ConfigurationError("ssh needs a host")
        return "job"

    panel = SubmitPanel("Small", submit, lambda job: None)
    values = [value for _, value in panel.platform.options]
    assert "sagemaker" in values and values[0] == "local" == panel.platform.value
    panel.platform.value = "sagemaker"
    panel.instance.value = "ml.g5.xlarge"
    panel.max_hours.value = 2
    assert "$2.82" in panel.cost.value
    panel.spot.value = True
    assert "spot" in panel.cost.value or "$" in panel.cost.value
    panel.on_submit()
    assert calls[-1]["instance"] == "ml.g5.xlarge" and calls[-1]["max_hours"] == 2
    assert panel.job == "job"
    panel2 = SubmitPanel("Small", submit, lambda job: None)
    if "ssh" in [value for _, value in panel2.platform.options]:
        panel2.platform.value = "ssh"
        panel2.on_submit()
        assert "ssh needs a host" in panel2.message.value
        assert panel2.submit_button.disabled is False


SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "NGROK_AUTHTOKEN": "2abcdefghijklmnopqrstuvwxyz_ngroktoken",
    "DATABRICKS_TOKEN": "dapi0123456789abcdef0123456789abcdef",
}


def test_secrets_never_leak(plugin, neural_home, monkeypatch, capsys):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    password = "hunter2-very-secret-password"
    texts = []
    plan = api.submit(
        SMALL,
        "digits",
        platform="fakecloud",
        max_hours=1,
        dry_run=True,
        extra={"password": password, "region": "eu"},
    )
    texts.append(str(plan))
    run = api.submit(
        SMALL,
        "digits",
        platform="fakecloud",
        max_hours=1,
        yes=True,
        extra={"password": password},
        monitor="text",
    )
    with pytest.raises(ConfigurationError) as caught:
        api.submit(
            SMALL,
            "digits",
            platform="fakecloud",
            max_hours=100,
            monitor="none",
            extra={"password": password},
        )
    texts.append(str(caught.value))
    texts.append("".join(caught.value._render_traceback_()))
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    with sqlite3.connect(JobStore().path) as conn:
        for table in ("jobs", "instances"):
            texts.extend(json.dumps(row) for row in conn.execute(f"SELECT * FROM {table}"))
    for path in (neural_home / "jobs").rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    assert run.status == "SUCCEEDED" and len(texts) > 8
    blob = "\n".join(texts)
    for secret in [*SECRETS.values(), password]:
        assert secret not in blob


def test_platform_facts_decide_which_submits_need_a_known_price(neural_home):
    from neural_jupyter import backends

    assert backends.is_paid("sagemaker") and not backends.is_paid("local")
    assert not backends.is_paid("kaggle") and not backends.is_paid("kubernetes")
    assert not backends.is_paid("ssh", ResourceSpec(extra={"host": "me@box"}))
    rented = ResourceSpec(instance_type="gpu_9x_unknown", extra={"provider": "lambda"})
    assert backends.is_paid("ssh", rented)  # a rented instance bills by the hour
    assert not backends.is_paid("databricks", ResourceSpec(extra={"cluster_id": "c-1"}))
    assert backends.backend_class("kaggle").max_parallel == 1
    assert backends.backend_class("vertex").extra == "vertex"
    # a rented instance with no known price is not launched without --yes
    with pytest.raises(ConfigurationError, match="no list price"):
        api.submit(
            SMALL,
            "digits",
            platform="ssh",
            instance="gpu_9x_unknown",
            extra={"provider": "lambda"},
            monitor="none",
        )
    assert JobStore().list() == []
