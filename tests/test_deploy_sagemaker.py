"""Deploying to SageMaker through real boto3: moto for S3, CloudWatch Logs and STS, and for the
endpoint operations themselves in one end-to-end check (moto answers them, InService at once,
with canned ``InvokeEndpoint`` bodies); ``fakes.sagemaker_endpoints_api`` for the rest (the
JSON 1.1 wire format, Creating → InService / Failed, faults, and ``InvokeEndpoint`` served for
real by loading ``model.pt`` from the uploaded ``model.tar.gz`` as AWS's PyTorch inference
container does), so ``predict`` through the SDK is compared with ``run.predict``."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")

from fakes.sagemaker_api import fault
from fakes.sagemaker_endpoints_api import FAILED, FakeSageMakerEndpoints, moto_results

import neural_jupyter
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.errors import PlatformAuthError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointStatus, EndpointStore

REGION = "us-east-1"
BUCKET = "deploy-bucket"
ROLE = "arn:aws:iam::123456789012:role/SageMakerServing"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYDEPLOYSECRETKEY"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint, monkeypatch, neural_home):
    import boto3

    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    ).close()
    for name in list(os.environ):
        if name.startswith(("AWS_", "NEURAL_JUPYTER_SAGEMAKER", "SAGEMAKER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7DEPLOYX")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/neural-jupyter-tests/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/neural-jupyter-tests/creds")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for service in ("S3", "CLOUDWATCH_LOGS", "STS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto_endpoint)
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ROLE", ROLE)
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_BUCKET", BUCKET)
    monkeypatch.setenv("NEURAL_JUPYTER_DEPLOY_POLL_SECONDS", "0.01")
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.01)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    fake = FakeSageMakerEndpoints(s3).start()
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ENDPOINT", fake.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", fake.url)
    fake.s3_client = s3
    fake.moto = moto_endpoint
    yield fake
    fake.stop()


def bodies(fake, operation: str) -> list[dict]:
    return [r.json for r in fake.calls("POST", f"^/{operation}$")]


def test_create_in_service_invoke_logs_and_delete(aws, trained, sample, neural_home):
    endpoint = neural_jupyter.deploy(trained, platform="sagemaker", name="digits-sm")
    assert endpoint.status == "IN_SERVICE"
    assert [b["EndpointName"] for b in bodies(aws, "DescribeEndpoint")].count("digits-sm") >= 3
    (model,) = bodies(aws, "CreateModel")
    container = model["PrimaryContainer"]
    assert container["Image"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:"
        "2.6.0-cpu-py312-ubuntu22.04-sagemaker"
    )
    assert model["ExecutionRoleArn"] == ROLE
    bucket, _, key = container["ModelDataUrl"].removeprefix("s3://").partition("/")
    archive = aws.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert "model.pt" in tar.getnames()  # what the container's default handler loads
    (config,) = bodies(aws, "CreateEndpointConfig")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert endpoint.hourly_price == pytest.approx(0.115)
    # predict: through boto3's sagemaker-runtime, served by the model the fake loaded from S3
    np.testing.assert_allclose(endpoint.predict(sample), trained.predict(sample), atol=1e-6)
    assert aws.invocations == [len(sample)]
    # logs: the endpoint's CloudWatch group
    import boto3

    logs = boto3.client("logs", endpoint_url=aws.moto, region_name=REGION)
    group = "/aws/sagemaker/Endpoints/digits-sm"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-0abc")
    logs.put_log_events(
        logGroupName=group,
        logStreamName="AllTraffic/i-0abc",
        logEvents=[
            {"timestamp": int(time.time() * 1000), "message": "Model server started."},
            {"timestamp": int(time.time() * 1000) + 1, "message": f"key={SECRET_KEY}"},
        ],
    )
    lines = endpoint.logs()
    assert lines[0] == "Model server started." and SECRET_KEY not in "\n".join(lines)
    endpoint.delete()
    assert aws.endpoints == {} and aws.configs == {} and aws.models == {}
    assert "Contents" not in aws.s3_client.list_objects_v2(Bucket=BUCKET)
    assert EndpointStore().get("digits-sm").status is EndpointStatus.DELETED
    for request in aws.requests:  # the secret key signs requests; it is never sent
        assert SECRET_KEY not in request.body.decode("utf-8", "replace")
    for path in neural_home.rglob("*"):  # nor stored: job store (with its WAL), files
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_dry_run_lists_the_exact_requests_and_sends_nothing(aws, trained):
    plan = neural_jupyter.deploy(
        trained, platform="sagemaker", instance="ml.g4dn.xlarge", dry_run=True
    )
    text = str(plan)
    assert "CreateModel" in text and "CreateEndpointConfig" in text and "CreateEndpoint" in text
    assert "pytorch-inference:2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker" in text
    assert "$0.736/h" in text and "$17.66 per day" in text
    assert aws.requests == [] and EndpointStore().list() == []


def test_a_failed_deployment_surfaces_the_reason_and_cleans_up(aws, trained):
    aws.endpoint_script = FAILED
    with pytest.raises(PlatformError, match="did not pass the ping health check"):
        neural_jupyter.deploy(trained, platform="sagemaker", name="digits-broken")
    assert aws.endpoints == {} and aws.models == {} and aws.configs == {}
    record = EndpointStore().get("digits-broken")
    assert record.status is EndpointStatus.DELETED and "ping health check" in record.error


def test_auth_errors_are_platform_auth_errors_and_leave_nothing_live(aws, trained):
    aws.fail("POST", "^/CreateModel$", **fault("access_denied"))
    with pytest.raises(PlatformAuthError, match="not authorized") as refused:
        neural_jupyter.deploy(trained, platform="sagemaker", name="digits-denied")
    assert "AKIA" not in str(refused.value)
    assert len(aws.calls("POST", "^/CreateModel$")) == 1  # an auth error is not retried
    assert EndpointStore().list() == []
    assert EndpointStore().get("digits-denied").error


def test_a_retried_create_makes_no_second_endpoint(aws, trained, sample):
    # the endpoint is created but the answer is lost (503): the retry finds it
    aws.fail("POST", "^/CreateEndpoint$", after=True, **fault("unavailable"))
    aws.fail("POST", "^/CreateModel$", after=True, **fault("internal"))
    endpoint = neural_jupyter.deploy(trained, platform="sagemaker", name="digits-retried")
    assert len(aws.calls("POST", "^/CreateEndpoint$")) == 2
    assert len(aws.calls("POST", "^/CreateModel$")) == 2
    assert list(aws.endpoints) == ["digits-retried"] and list(aws.models) == ["digits-retried"]
    # and running the cell again finds it: no create at all
    again = neural_jupyter.deploy(trained, platform="sagemaker", name="digits-retried")
    assert again.id == endpoint.id and len(aws.calls("POST", "^/CreateEndpoint$")) == 2
    np.testing.assert_allclose(again.predict(sample[:3]), trained.predict(sample[:3]), atol=1e-6)
    endpoint.delete()


def test_moto_accepts_the_same_requests_end_to_end(aws, trained, sample, monkeypatch):
    """moto's model of the SageMaker API: create → InService → invoke (canned) → delete."""
    import boto3

    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ENDPOINT", aws.moto)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", aws.moto)
    expected = trained.predict(sample[:4])
    moto_results(aws.moto, [json.dumps(expected.tolist())])
    endpoint = neural_jupyter.deploy(trained, platform="sagemaker", name="digits-moto")
    assert endpoint.status == "IN_SERVICE"
    np.testing.assert_allclose(endpoint.predict(sample[:4]), expected, atol=1e-7)
    client = boto3.client("sagemaker", endpoint_url=aws.moto, region_name=REGION)
    described = client.describe_endpoint(EndpointName="digits-moto")
    assert described["EndpointConfigName"] == "digits-moto"
    endpoint.delete()
    assert client.list_endpoints()["Endpoints"] == []
    assert client.list_models()["Models"] == []
    assert aws.requests == []  # the fake saw nothing: moto answered everything
