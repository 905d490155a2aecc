"""Deploying to Databricks Model Serving through the real ``databricks-sdk`` against a local
workspace fake (``fakes.databricks_serving_api``): DBFS upload, the workspace model registry,
serving endpoints (NOT_READY → READY, or UPDATE_FAILED), faults, and invocations served for
real by loading the uploaded MLflow model with ``mlflow.pyfunc.load_model``, so ``predict``
through the SDK is compared with ``run.predict``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("databricks.sdk")
pytest.importorskip("mlflow")

from fakes.databricks_api import TOKEN
from fakes.databricks_serving_api import FAILED, FakeDatabricksServing

import neural_jupyter
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.errors import ConfigurationError, PlatformAuthError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointStatus, EndpointStore


@pytest.fixture
def workspace(tmp_path, monkeypatch, neural_home):
    fake = FakeDatabricksServing(tmp_path / "workspace").start()
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.delenv("DATABRICKS_CONFIG_PROFILE", raising=False)
    monkeypatch.setenv("NEURAL_JUPYTER_DEPLOY_POLL_SECONDS", "0.01")
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    yield fake
    fake.stop()


def test_create_ready_query_logs_and_delete(workspace, trained, sample):
    with pytest.raises(ConfigurationError, match="no list price is known"):
        neural_jupyter.deploy(trained, platform="databricks", name="digits-db")
    assert workspace.requests == []  # refused before anything was sent
    endpoint = neural_jupyter.deploy(trained, platform="databricks", name="digits-db", yes=True)
    assert endpoint.status == "IN_SERVICE"
    (create,) = workspace.calls("POST", r"^/api/2\.0/serving-endpoints$")
    (entity,) = create.json["config"]["served_entities"]
    assert entity == {
        "entity_name": "digits-db",
        "entity_version": "1",
        "workload_size": "Small",
        "workload_type": "CPU",
        "scale_to_zero_enabled": False,
    }
    source = workspace.versions["digits-db"][0]["source"]
    files = {
        p.relative_to(workspace.file(source)).as_posix() for p in workspace.file(source).rglob("*")
    }
    assert {"MLmodel", "model.pt", "code/neural_jupyter_pyfunc.py", "requirements.txt"} <= files
    np.testing.assert_allclose(endpoint.predict(sample), trained.predict(sample), atol=1e-6)
    assert workspace.served == [len(sample)]
    assert any("predicted" in line for line in endpoint.logs())
    endpoint.delete()
    assert workspace.endpoints == {} and workspace.models == {}
    assert not workspace.file(source).exists()
    assert EndpointStore().get("digits-db").status is EndpointStatus.DELETED


def test_a_failed_deployment_surfaces_the_reason_and_cleans_up(workspace, trained):
    workspace.endpoint_script = FAILED
    with pytest.raises(PlatformError, match="model loading failed"):
        neural_jupyter.deploy(trained, platform="databricks", name="digits-bad", yes=True)
    assert workspace.endpoints == {} and workspace.models == {}
    assert EndpointStore().get("digits-bad").status is EndpointStatus.DELETED


def test_a_bad_token_is_an_auth_error(workspace, trained, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong-0000000000000000000000000000")
    with pytest.raises(PlatformAuthError):
        neural_jupyter.deploy(trained, platform="databricks", name="digits-auth", yes=True)
    assert workspace.endpoints == {} and workspace.models == {}
    # its clean-up was refused too, so the record stays live and FAILED: never forgotten
    (record,) = EndpointStore().list()
    assert record.status is EndpointStatus.FAILED and "cleaning up failed too" in record.error
    assert "dapi-wrong" not in record.error
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    neural_jupyter.undeploy("digits-auth")
    assert EndpointStore().list() == []


def test_a_retried_create_makes_no_second_endpoint(workspace, trained, sample):
    workspace.fail("POST", r"^/api/2\.0/serving-endpoints$", 500, "upstream reset", after=True)
    endpoint = neural_jupyter.deploy(trained, platform="databricks", name="digits-again", yes=True)
    assert len(workspace.calls("POST", r"^/api/2\.0/serving-endpoints$")) == 2
    assert list(workspace.endpoints) == ["digits-again"]
    again = neural_jupyter.deploy(trained, platform="databricks", name="digits-again", yes=True)
    assert again.id == endpoint.id
    assert len(workspace.calls("POST", r"^/api/2\.0/serving-endpoints$")) == 2
    assert len(workspace.versions["digits-again"]) == 1
    np.testing.assert_allclose(again.predict(sample[:2]), trained.predict(sample[:2]), atol=1e-6)
    endpoint.delete()


def test_dry_run_and_sizes(workspace, trained):
    plan = neural_jupyter.deploy(
        trained, platform="databricks", instance="medium", dry_run=True,
        extra={"workload_type": "GPU_SMALL", "scale_to_zero": True},
    )  # fmt: skip
    text = str(plan)
    assert '"workload_size": "Medium"' in text and "GPU_SMALL" in text and "--yes" in text
    with pytest.raises(ConfigurationError, match="Small, Medium, Large"):
        neural_jupyter.deploy(trained, platform="databricks", instance="Huge", dry_run=True)
    with pytest.raises(ConfigurationError, match="unknown Databricks Model Serving deploy setting"):
        neural_jupyter.deploy(trained, platform="databricks", extra={"rol": 1}, dry_run=True)
    assert workspace.requests == []
