"""Deploying to Azure ML managed online endpoints through the real ``azure-ai-ml``
``MLClient`` against the local ARM fake (``fakes.azureml_endpoints_api``): the model
registered from the MLflow model directory (uploaded to the workspace's blob datastore),
endpoint and deployment as long-running operations, Creating → Succeeded or Failed, faults,
and scoring served for real with ``mlflow.pyfunc.load_model``, so ``predict`` through the
SDK is compared with ``run.predict``."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("azure.ai.ml")
pytest.importorskip("mlflow")

from fakes.azureml_api import StandInCredential
from fakes.azureml_endpoints_api import FAILED, FakeAzureMLEndpoints

import neural_jupyter
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.errors import PlatformAuthError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointStatus, EndpointStore


@pytest.fixture
def azure(monkeypatch, neural_home):
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    monkeypatch.setenv("NEURAL_JUPYTER_DEPLOY_POLL_SECONDS", "0.01")
    with FakeAzureMLEndpoints() as fake:
        for name, value in fake.environment().items():
            monkeypatch.setenv(name, value)
        backend = get_backend("azureml")
        monkeypatch.setattr(backend, "credential", StandInCredential(fake.token))
        monkeypatch.setattr(backend, "client_options", fake.client_options())
        monkeypatch.setattr(backend, "_clients", {})
        fake.settings = {
            "subscription_id": fake.sub,
            "resource_group": fake.rg,
            "workspace": fake.ws,
        }
        yield fake


def test_register_deploy_score_and_delete(azure, trained, sample):
    endpoint = neural_jupyter.deploy(
        trained, platform="azureml", instance="Standard_NC4as_T4_v3", name="digits-az",
        extra=azure.settings, yes=True,
    )  # fmt: skip
    assert endpoint.status == "IN_SERVICE"
    assert endpoint.hourly_price == pytest.approx(0.526)
    (deployment,) = azure.deployments.values()
    assert deployment["body"]["properties"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert azure.endpoints["digits-az"]["traffic"] == {"blue": 100}
    (model,) = azure.models.values()
    assert model["properties"]["modelType"] == "mlflow_model"
    np.testing.assert_allclose(endpoint.predict(sample), trained.predict(sample), atol=1e-6)
    assert azure.served == [len(sample)]
    assert any("scored" in line for line in endpoint.logs())
    endpoint.delete()
    assert azure.endpoints == {} and azure.deployments == {}
    assert EndpointStore().get("digits-az").status is EndpointStatus.DELETED


def test_a_failed_deployment_surfaces_the_reason_and_cleans_up(azure, trained):
    azure.deployment_script = FAILED
    with pytest.raises(PlatformError, match="model loading failed"):
        neural_jupyter.deploy(
            trained, platform="azureml", name="digits-azbad", extra=azure.settings, yes=True
        )
    assert azure.endpoints == {}
    assert EndpointStore().get("digits-azbad").status is EndpointStatus.DELETED


def test_a_refused_token_is_an_auth_error(azure, trained, monkeypatch):
    backend = get_backend("azureml")
    monkeypatch.setattr(backend, "credential", StandInCredential("not-the-token"))
    with pytest.raises(PlatformAuthError):
        neural_jupyter.deploy(
            trained, platform="azureml", name="digits-azauth", extra=azure.settings, yes=True
        )
    assert azure.endpoints == {}


def test_a_retried_create_makes_no_second_deployment(azure, trained, sample):
    azure.fail(
        "PUT",
        r"/onlineEndpoints/digits-azonce$",
        503,
        "busy",
        code="ServiceUnavailable",
        after=True,
    )
    endpoint = neural_jupyter.deploy(
        trained, platform="azureml", name="digits-azonce", extra=azure.settings, yes=True
    )
    assert list(azure.endpoints) == ["digits-azonce"] and len(azure.deployments) == 1
    again = neural_jupyter.deploy(
        trained, platform="azureml", name="digits-azonce", extra=azure.settings, yes=True
    )
    assert again.id == endpoint.id
    assert len(azure.calls("PUT", r"/deployments/blue$")) == 1
    np.testing.assert_allclose(again.predict(sample[:2]), trained.predict(sample[:2]), atol=1e-6)
    endpoint.delete()
