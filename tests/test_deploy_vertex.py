"""Deploying to Vertex AI through the real ``google-cloud-aiplatform`` (REST), google-auth and
google-cloud-storage, against a local fake of Vertex AI and Cloud Storage
(``fakes.vertex_endpoints_api``): model upload, endpoint, a deploy operation that runs for a
few reads or fails, faults, and predictions served for real by the ``model.mar`` handler
through TorchServe's JSON envelope, so ``predict`` through the SDK is compared with
``run.predict``."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("google.cloud.aiplatform_v1")
pytest.importorskip("cryptography")

import google.auth.credentials
from fakes.vertex_endpoints_api import DEPLOY_ERROR, FakeVertexEndpoints

import neural_jupyter
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.errors import PlatformAuthError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointStatus, EndpointStore

BUCKET = "serve-bucket"


@pytest.fixture(scope="module")
def key_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def gcp(tmp_path, monkeypatch, key_pem, neural_home):
    fake = FakeVertexEndpoints(tmp_path / "fake").start()
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj",
                "private_key_id": "key1",
                "private_key": key_pem,
                "client_email": "deployer@proj.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{fake.url}/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("CLOUD_ML_REGION", "us-central1")
    monkeypatch.setenv("NEURAL_JUPYTER_VERTEX_BUCKET", f"gs://{BUCKET}")
    monkeypatch.setenv("NEURAL_JUPYTER_VERTEX_ENDPOINT", fake.url)
    monkeypatch.setenv("NEURAL_JUPYTER_GCS_ENDPOINT", fake.url)
    monkeypatch.setenv("NEURAL_JUPYTER_DEPLOY_POLL_SECONDS", "0.01")
    monkeypatch.setattr(
        google.auth.credentials.CredentialsWithRegionalAccessBoundary,
        "_maybe_start_regional_access_boundary_refresh",
        lambda self, request, url: None,
    )
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    yield fake
    fake.stop()


def test_upload_deploy_predict_and_delete(gcp, trained, sample):
    endpoint = neural_jupyter.deploy(
        trained, platform="vertex", name="digits-vx", extra={"hourly_usd": 0.1}
    )
    assert endpoint.status == "IN_SERVICE"
    (model,) = gcp.models.values()
    assert model["containerSpec"]["imageUri"] == (
        "us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu.2-4:latest"
    )
    (upload,) = gcp.calls("POST", r"/models:upload$")
    assert upload.json["model"]["labels"]["neural_jupyter_key"]
    mar = gcp.object_data(BUCKET, model["artifactUri"][len(f"gs://{BUCKET}/") :] + "/model.mar")
    with zipfile.ZipFile(io.BytesIO(mar)) as archive:
        assert {"MAR-INF/MANIFEST.json", "model.pt", "handler.py"} <= set(archive.namelist())
    (deploy,) = gcp.calls("POST", r":deployModel$")
    resources = deploy.json["deployedModel"]["dedicatedResources"]
    assert resources["machineSpec"] == {"machineType": "n1-standard-2"}
    assert resources["minReplicaCount"] == resources["maxReplicaCount"] == 1
    assert len(gcp.calls("GET", r"/endpoints/\d+$")) >= 2  # the deploy ran a while
    np.testing.assert_allclose(endpoint.predict(sample), trained.predict(sample), atol=1e-6)
    assert gcp.served == [len(sample)]
    assert endpoint.hourly_price == pytest.approx(0.1)
    endpoint.delete()
    assert gcp.endpoints == {} and gcp.models == {}
    assert not [name for (bucket, name) in gcp.objects if name.endswith("model.mar")]
    assert EndpointStore().get("digits-vx").status is EndpointStatus.DELETED


def test_a_failed_deploy_surfaces_the_reason_and_cleans_up(gcp, trained):
    gcp.deploy_error = DEPLOY_ERROR
    with pytest.raises(PlatformError, match="never became ready"):
        neural_jupyter.deploy(trained, platform="vertex", name="digits-vbad", yes=True)
    assert gcp.endpoints == {} and gcp.models == {}
    assert EndpointStore().get("digits-vbad").status is EndpointStatus.DELETED


def test_permission_denied_is_an_auth_error(gcp, trained):
    gcp.fail("POST", r"/models:upload$", 403, "Permission 'aiplatform.models.upload' denied")
    with pytest.raises(PlatformAuthError, match=r"aiplatform\.models\.upload"):
        neural_jupyter.deploy(trained, platform="vertex", name="digits-vdenied", yes=True)
    assert EndpointStore().list() == [] and gcp.models == {}


def test_a_retried_deploy_deploys_once(gcp, trained, sample):
    gcp.fail("POST", r":deployModel$", 503, "The service is currently unavailable.", after=True)
    endpoint = neural_jupyter.deploy(trained, platform="vertex", name="digits-vonce", yes=True)
    assert len(gcp.calls("POST", r":deployModel$")) == 2  # the retry was refused as a duplicate
    (only,) = gcp.endpoints.values()
    assert len(only["deployedModels"]) == 1
    again = neural_jupyter.deploy(trained, platform="vertex", name="digits-vonce", yes=True)
    assert again.id == endpoint.id and len(gcp.calls("POST", r"/models:upload$")) == 1
    np.testing.assert_allclose(again.predict(sample[:2]), trained.predict(sample[:2]), atol=1e-6)
    endpoint.delete()
