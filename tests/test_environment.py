"""Environment detection: platforms, accelerators, GPU memory settings and the report."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neural_jupyter.errors import ConfigurationError
from neural_jupyter.runtime.accelerators import (
    GPU,
    NVIDIA_SMI,
    detect_accelerators,
    detect_mps,
    detect_tpu,
    parse_nvidia_smi,
)
from neural_jupyter.runtime.env_report import environment_report, framework_versions
from neural_jupyter.runtime.environment import (
    PRIORITY,
    SAGEMAKER_METADATA,
    detect_platform,
    detect_platforms,
)
from neural_jupyter.runtime.gpu_settings import (
    MEMORY_GROWTH_ENV,
    apply_to_kernel,
    ids_for_count,
    job_environment,
)

SECRET = "s3cr3t-VALUE-9f8e7d6c"


def platform(environ=None, paths=(), files=None):
    """detect_platform with a fake environment, file system and file contents."""
    files = files or {}
    paths = set(paths) | set(files)
    return detect_platform(environ or {}, paths.__contains__, read_text=files.get)


def everything(environ=None, paths=(), files=None):
    files = files or {}
    paths = set(paths) | set(files)
    return detect_platforms(environ or {}, paths.__contains__, read_text=files.get)


# --- platforms: positive cases ----------------------------------------------------------

STUDIO_METADATA = json.dumps(
    {"AppType": "JupyterLab", "DomainId": "d-abc123", "UserProfileName": "ana", "SpaceName": "s"}
)
NOTEBOOK_METADATA = json.dumps(
    {
        "ResourceArn": "arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/my-nb",
        "ResourceName": "my-nb",
    }
)


@pytest.mark.parametrize(
    ("environ", "paths", "files", "name", "evidence", "details"),
    [
        (
            {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"},
            (),
            None,
            "kaggle",
            ("env KAGGLE_KERNEL_RUN_TYPE=Interactive",),
            {"run_type": "Interactive"},
        ),
        ({}, ["/kaggle/input"], None, "kaggle", ("path /kaggle/input exists",), {}),
        (
            {"KAGGLE_URL_BASE": "https://www.kaggle.com"},
            (),
            None,
            "kaggle",
            ("env KAGGLE_URL_BASE=https://www.kaggle.com",),
            {},
        ),
        (
            {"COLAB_RELEASE_TAG": "release-colab_20240101-060116_RC00"},
            ["/content"],
            None,
            "colab",
            ("env COLAB_RELEASE_TAG=release-colab_20240101-060116_RC00", "path /content exists"),
            {"release": "release-colab_20240101-060116_RC00"},
        ),
        ({"COLAB_GPU": "1"}, (), None, "colab", ("env COLAB_GPU=1",), {"gpu": "1"}),
        (
            {"SM_CURRENT_HOST": "algo-1", "TRAINING_JOB_NAME": "job-7"},
            (),
            None,
            "sagemaker-training",
            ("env SM_CURRENT_HOST=algo-1", "env TRAINING_JOB_NAME=job-7"),
            {"job_name": "job-7", "host": "algo-1"},
        ),
        (
            {},
            ["/opt/ml/input/config/hyperparameters.json"],
            None,
            "sagemaker-training",
            ("path /opt/ml/input/config/hyperparameters.json exists",),
            {},
        ),
        (
            {"SAGEMAKER_INTERNAL_IMAGE_URI": "sagemaker-distribution-cpu"},
            (),
            None,
            "sagemaker-studio",
            ("env SAGEMAKER_INTERNAL_IMAGE_URI=sagemaker-distribution-cpu",),
            {},
        ),
        (
            {},
            (),
            {SAGEMAKER_METADATA: STUDIO_METADATA},
            "sagemaker-studio",
            (f"file {SAGEMAKER_METADATA} has DomainId, SpaceName, UserProfileName",),
            {"domain": "d-abc123"},
        ),
        (
            {},
            ["/home/ec2-user/SageMaker"],
            None,
            "sagemaker-notebook",
            ("path /home/ec2-user/SageMaker exists",),
            {},
        ),
        (
            {},
            (),
            {SAGEMAKER_METADATA: NOTEBOOK_METADATA},
            "sagemaker-notebook",
            (
                f"file {SAGEMAKER_METADATA} names a notebook-instance ARN",
                f"path {SAGEMAKER_METADATA} exists",
            ),
            {"instance": "my-nb"},
        ),
        (
            {"CI_NAME": "gpu-ci", "CI_WORKSPACE": "ws1"},
            (),
            None,
            "azureml",
            ("env CI_NAME=gpu-ci", "env CI_WORKSPACE=ws1"),
            {"kind": "compute-instance", "compute": "gpu-ci", "workspace": "ws1"},
        ),
        (
            {"AZUREML_RUN_ID": "run_42"},
            (),
            None,
            "azureml",
            ("env AZUREML_RUN_ID=run_42",),
            {"kind": "job"},
        ),
        (
            {},
            ["/mnt/batch/tasks/shared/LS_root"],
            None,
            "azureml",
            ("path /mnt/batch/tasks/shared/LS_root exists",),
            {"kind": "compute-instance"},
        ),
        (
            {"DATABRICKS_RUNTIME_VERSION": "14.3"},
            (),
            None,
            "databricks",
            ("env DATABRICKS_RUNTIME_VERSION=14.3",),
            {"runtime": "14.3"},
        ),
        (
            {"PAPERSPACE_NOTEBOOK_REPO_ID": "rabc123"},
            (),
            None,
            "paperspace",
            ("env PAPERSPACE_NOTEBOOK_REPO_ID=rabc123",),
            {"repo_id": "rabc123"},
        ),
        (
            {"PS_API_KEY": SECRET},
            ["/notebooks", "/storage"],
            None,
            "paperspace",
            ("env PS_API_KEY is set", "path /notebooks exists", "path /storage exists"),
            {},
        ),
        (
            {"BINDER_SERVICE_HOST": "10.0.0.7"},
            (),
            None,
            "binder",
            ("env BINDER_SERVICE_HOST=10.0.0.7",),
            {},
        ),
        (
            {"BINDER_REPO_URL": "https://github.com/org/repo"},
            (),
            None,
            "binder",
            ("env BINDER_REPO_URL=https://github.com/org/repo",),
            {"repo": "https://github.com/org/repo"},
        ),
        (
            {"JUPYTERHUB_API_URL": "http://binderhub-hub:8081/hub/api", "JUPYTERHUB_USER": "u"},
            (),
            None,
            "binder",
            ("env JUPYTERHUB_API_URL=http://binderhub-hub:8081/hub/api (mentions binder)",),
            {},
        ),
        (
            {},
            ["/etc/apt/sources.list.d/lambda-repository.list"],
            None,
            "lambda",
            ("path /etc/apt/sources.list.d/lambda-repository.list exists",),
            {"stack": "lambda-stack"},
        ),
    ],
)
def test_each_platform_is_detected_with_exact_evidence(
    environ, paths, files, name, evidence, details
):
    found = platform(environ, paths, files)
    assert found.name == name
    assert found.evidence == evidence
    assert dict(found.details) == details
    assert found.label and not found.is_local


# --- platforms: negative cases ----------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "paths"),
    [
        ({}, ()),
        ({"HOME": "/home/me", "PATH": "/usr/bin"}, ["/tmp", "/home"]),
        ({"KAGGLE_USERNAME": "me", "KAGGLE_KEY": SECRET}, ()),  # kaggle CLI on a laptop
        ({}, ["/content"]),  # any docker image may have /content
        ({"TRAINING_JOB_NAME": "nightly"}, ()),  # generic name alone is not SageMaker
        ({"CI_NAME": "build"}, ()),  # CI_NAME without an Azure workspace
        ({"DATABRICKS_HOST": "https://x.cloud.databricks.com", "DATABRICKS_TOKEN": SECRET}, ()),
        ({"PAPERSPACE_API_KEY": SECRET, "PAPERSPACE_NOTEBOOK_ID": "n1"}, ()),  # CLI creds
        ({}, ["/notebooks"]),  # /notebooks alone
        ({"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime"}, ()),  # AWS
        ({"LAMBDA_API_KEY": SECRET}, ()),
        ({"JUPYTERHUB_USER": "ana", "JUPYTERHUB_API_URL": "http://hub:8081/hub/api"}, ()),
        ({}, [SAGEMAKER_METADATA]),  # metadata file without Studio or notebook markers
    ],
)
def test_no_platform_markers_means_local(environ, paths):
    found = platform(environ, paths)
    assert found.name == "local"
    assert found.is_local
    assert found.evidence == ()
    assert everything(environ, paths) == ()


def test_unreadable_sagemaker_metadata_is_ignored():
    found = platform({}, (), {SAGEMAKER_METADATA: "{not json"})
    assert found.name == "local"


# --- platforms: priority ------------------------------------------------------------------


def test_sagemaker_training_wins_over_notebook_instance():
    environ = {"SM_TRAINING_ENV": json.dumps({"hosts": ["algo-1"]})}
    paths = ["/home/ec2-user/SageMaker"]
    assert platform(environ, paths).name == "sagemaker-training"
    assert [p.name for p in everything(environ, paths)] == [
        "sagemaker-training",
        "sagemaker-notebook",
    ]


def test_kaggle_wins_over_colab_markers_in_its_image():
    environ = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "COLAB_RELEASE_TAG": "release-x"}
    assert platform(environ).name == "kaggle"
    assert [p.name for p in everything(environ)] == ["kaggle", "colab"]


def test_studio_wins_over_notebook_instance_and_lambda_comes_last():
    environ = {"SAGEMAKER_SPACE_NAME": "my-space", "COLAB_GPU": "0"}
    paths = ["/home/ec2-user/SageMaker", "/etc/apt/sources.list.d/lambda-repository.list"]
    names = [p.name for p in everything(environ, paths)]
    assert names == ["colab", "sagemaker-studio", "sagemaker-notebook", "lambda"]
    assert names == sorted(names, key=PRIORITY.index)


def test_all_platforms_at_once_come_out_in_the_documented_order():
    environ = {
        "KAGGLE_KERNEL_RUN_TYPE": "Interactive",
        "COLAB_GPU": "1",
        "SM_CURRENT_HOST": "algo-1",
        "SAGEMAKER_SPACE_NAME": "s",
        "AZUREML_RUN_ID": "r",
        "DATABRICKS_RUNTIME_VERSION": "14.3",
        "PAPERSPACE_NOTEBOOK_REPO_ID": "r",
        "BINDER_SERVICE_HOST": "h",
    }
    paths = ["/home/ec2-user/SageMaker", "/etc/apt/sources.list.d/lambda-repository.list"]
    expected = [
        "sagemaker-training",
        "kaggle",
        "colab",
        "databricks",
        "sagemaker-studio",
        "sagemaker-notebook",
        "azureml",
        "paperspace",
        "binder",
        "lambda",
    ]
    assert [p.name for p in everything(environ, paths)] == expected
    assert list(PRIORITY) == expected
    assert platform(environ, paths).name == "sagemaker-training"


# --- platforms: secrets -----------------------------------------------------------------


def test_secret_values_never_appear_in_evidence():
    environ = {
        "KAGGLE_KERNEL_RUN_TYPE": "Interactive",
        "KAGGLE_DATA_PROXY_TOKEN": SECRET,
        "AZUREML_RUN_ID": "run_1",
        "AZUREML_RUN_TOKEN": SECRET,
        "BINDER_REPO_URL": f"https://user:{SECRET}@github.com/org/private",
        "PAPERSPACE_API_KEY": SECRET,
    }
    found = everything(environ, ["/notebooks"])
    assert [p.name for p in found] == ["kaggle", "azureml", "paperspace", "binder"]
    for p in found:
        assert SECRET not in repr(p)
        assert SECRET not in " ".join(p.evidence) + " ".join(p.details.values())
    binder = found[-1]
    assert binder.evidence == ("env BINDER_REPO_URL is set",)
    assert "repo" not in binder.details
    assert "env PAPERSPACE_API_KEY is set" in found[2].evidence


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.sampled_from(["AZUREML_", "PAPERSPACE_", "PS_", "JUPYTERHUB_", "KAGGLE_"]),
    suffix=st.sampled_from(["TOKEN", "API_KEY", "SECRET", "PASSWORD", "AUTH_HEADER"]),
    value=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=6, max_size=40),
)
def test_no_secret_named_value_leaks_into_any_platform(prefix, suffix, value):
    environ = {
        f"{prefix}{suffix}": value + "binder",
        "AZUREML_RUN_ID": "r",
        "KAGGLE_KERNEL_RUN_TYPE": "Interactive",
        "BINDER_SERVICE_HOST": "h",
    }
    for p in everything(environ, ["/notebooks"]):
        shown = " ".join(p.evidence) + " " + " ".join(p.details.values())
        assert value not in shown


def test_platform_is_frozen_and_hashable():
    found = platform({"DATABRICKS_RUNTIME_VERSION": "15.4"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        found.details["runtime"] = "x"  # type: ignore[index]
    assert hash(found) == hash(platform({"DATABRICKS_RUNTIME_VERSION": "15.4"}))


def test_detect_platform_reads_the_real_environment_by_default(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "13.3")
    assert detect_platform().name in ("databricks", *PRIORITY[:3])


# --- accelerators -------------------------------------------------------------------------

SMI_OUTPUT = textwrap.dedent(
    """\
    0, NVIDIA A100-SXM4-40GB, 40960, 1234, 535.104.05
    1, NVIDIA A100-SXM4-40GB, 40960, 0, 535.104.05
    2, Tesla T4, 15360, [N/A], 535.104.05
    """
)


def test_parse_nvidia_smi_reads_every_field():
    gpus = parse_nvidia_smi(SMI_OUTPUT)
    assert gpus == (
        GPU(0, "NVIDIA A100-SXM4-40GB", 40960, 1234, "535.104.05"),
        GPU(1, "NVIDIA A100-SXM4-40GB", 40960, 0, "535.104.05"),
        GPU(2, "Tesla T4", 15360, None, "535.104.05"),
    )


def test_parse_nvidia_smi_skips_noise_and_keeps_commas_in_names():
    text = "\nNo devices were found\n3, Odd, Name GPU, 8192, 10, 550.54\n\n"
    assert parse_nvidia_smi(text) == (GPU(3, "Odd, Name GPU", 8192, 10, "550.54"),)
    assert parse_nvidia_smi("") == ()


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        (None, [0, 1, 2]),
        ("1", [1]),
        ("2,0", [2, 0]),
        (" 0 , 2 ", [0, 2]),
        ("", []),
        ("-1", []),
        ("0,7,1", [0]),  # CUDA stops at the first invalid index
        ("1,1,2", [1]),  # and at a repeated one
        ("GPU-8f2c1e4a-aaaa-bbbb-cccc-123456789abc", [0, 1, 2]),  # UUIDs: not filtered
    ],
)
def test_cuda_visible_devices_filters_like_cuda(visible, indices):
    assert [g.index for g in parse_nvidia_smi(SMI_OUTPUT, visible)] == indices


class FakeRun:
    def __init__(self, output="", error=None):
        self.output, self.error, self.calls = output, error, []

    def __call__(self, argv, timeout):
        self.calls.append((tuple(argv), timeout))
        if self.error is not None:
            raise self.error
        return self.output


def accelerators(environ=None, run=None, modules=None, paths=(), files=None, machine=None):
    files = files or {}
    return detect_accelerators(
        environ or {},
        set(paths).__contains__,
        run or FakeRun(error=FileNotFoundError("nvidia-smi")),
        modules=modules or {},
        read_text=files.get,
        machine=machine or ("Linux", "x86_64"),
    )


def test_gpus_come_from_nvidia_smi_honouring_cuda_visible_devices():
    run = FakeRun(SMI_OUTPUT)
    found = accelerators({"CUDA_VISIBLE_DEVICES": "2"}, run)
    assert found.source == "nvidia-smi"
    assert found.gpus == (GPU(2, "Tesla T4", 15360, None, "535.104.05"),)
    assert run.calls == [(NVIDIA_SMI, 5.0)]
    assert "--query-gpu=index,name,memory.total,memory.used,driver_version" in NVIDIA_SMI


def test_missing_nvidia_smi_means_no_gpu():
    found = accelerators(run=FakeRun(error=FileNotFoundError(2, "No such file", "nvidia-smi")))
    assert (found.gpus, found.source, found.notes) == ((), "none", ())


@pytest.mark.parametrize(
    ("error", "note"),
    [
        (subprocess.TimeoutExpired("nvidia-smi", 5), "nvidia-smi did not answer within 5 s"),
        (
            subprocess.CalledProcessError(
                9, "nvidia-smi", output="NVIDIA-SMI has failed because it couldn't communicate"
            ),
            "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate",
        ),
        (PermissionError(13, "Permission denied"), "nvidia-smi could not run"),
    ],
)
def test_failing_nvidia_smi_is_a_note_not_an_error(error, note):
    found = accelerators(run=FakeRun(error=error))
    assert found.gpus == ()
    assert found.source == "none"
    assert len(found.notes) == 1 and found.notes[0].startswith(note)


def fake_torch(*, initialized, count=2, mps=False, available=True):
    calls = []

    def properties(i):
        calls.append(i)
        return SimpleNamespace(name=f"Fake GPU {i}", total_memory=8 * 2**30)

    cuda = SimpleNamespace(
        is_available=lambda: available,
        is_initialized=lambda: initialized,
        device_count=lambda: count,
        get_device_properties=properties,
    )
    backends = SimpleNamespace(mps=SimpleNamespace(is_available=lambda: mps))
    return SimpleNamespace(cuda=cuda, backends=backends, property_calls=calls)


def test_initialised_torch_is_asked_instead_of_nvidia_smi():
    run = FakeRun(SMI_OUTPUT)
    found = accelerators(run=run, modules={"torch": fake_torch(initialized=True)})
    assert found.source == "torch.cuda"
    assert found.gpus == (GPU(0, "Fake GPU 0", 8192), GPU(1, "Fake GPU 1", 8192))
    assert run.calls == []


def test_uninitialised_torch_is_never_made_to_initialise_cuda():
    torch = fake_torch(initialized=False)
    found = accelerators(run=FakeRun(SMI_OUTPUT), modules={"torch": torch})
    assert found.source == "nvidia-smi" and len(found.gpus) == 3
    found = accelerators(modules={"torch": torch})  # no nvidia-smi: count only
    assert found.source == "torch.cuda"
    assert [g.name for g in found.gpus] == ["CUDA device", "CUDA device"]
    assert found.gpus[0].memory_total_mb is None
    assert torch.property_calls == []
    assert "not initialised" in found.notes[0]


@pytest.mark.parametrize(
    ("environ", "paths", "expected"),
    [
        ({"TPU_ACCELERATOR_TYPE": "v2-8"}, (), "TPU v2-8"),
        ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, (), "TPU node at 10.0.0.2:8470"),
        ({"TPU_NAME": "local"}, (), "TPU local"),
        ({}, ["/dev/accel0"], "TPU VM (/dev/accel0)"),
        ({"COLAB_RELEASE_TAG": "r"}, ["/dev/vfio/0"], "TPU VM (/dev/vfio)"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, ["/dev/vfio/0"], "TPU VM (/dev/vfio)"),
        ({}, ["/dev/vfio/0"], None),  # VFIO outside Colab/Kaggle: passthrough, not a TPU
        ({"COLAB_GPU": "1"}, ["/dev/nvidia0"], None),
    ],
)
def test_tpu_detection(environ, paths, expected):
    assert detect_tpu(environ, set(paths).__contains__) == expected
    assert accelerators(environ, paths=paths).tpu == expected


@pytest.mark.parametrize(
    ("modules", "machine", "expected"),
    [
        ({}, ("Darwin", "arm64"), True),
        ({}, ("Darwin", "x86_64"), False),
        ({}, ("Linux", "aarch64"), False),
        ({"torch": fake_torch(initialized=False, mps=False)}, ("Darwin", "arm64"), False),
        ({"torch": fake_torch(initialized=False, mps=True)}, ("Darwin", "arm64"), True),
    ],
)
def test_mps_detection(modules, machine, expected):
    assert detect_mps(modules, machine) is expected


def test_cpu_and_ram_respect_container_limits():
    host = accelerators(files={"/proc/meminfo": "MemTotal:       16384000 kB\nMemFree: 1 kB\n"})
    assert host.ram_bytes == 16384000 * 1024
    assert host.cpu_count >= 1
    limited = accelerators(
        files={
            "/proc/meminfo": "MemTotal:       16384000 kB\n",
            "/sys/fs/cgroup/memory.max": "4294967296\n",
            "/sys/fs/cgroup/cpu.max": "100000 100000\n",
        }
    )
    assert limited.ram_bytes == 4 * 2**30
    assert limited.cpu_count == 1
    unlimited = accelerators(
        files={"/sys/fs/cgroup/cpu.max": "max 100000\n", "/sys/fs/cgroup/memory.max": "max\n"}
    )
    assert unlimited.cpu_count == host.cpu_count
    assert unlimited.ram_bytes is None or unlimited.ram_bytes > 0


# --- GPU settings -------------------------------------------------------------------------


def test_memory_growth_environment_values():
    assert dict(MEMORY_GROWTH_ENV) == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    assert job_environment() == dict(MEMORY_GROWTH_ENV)


@pytest.mark.parametrize(
    ("gpus", "visible"),
    [
        ("0", "0"),
        ("0,1", "0,1"),
        (" 2, 3 ", "2,3"),
        ("none", "-1"),
        ("GPU-8f2c1e4a-aaaa-bbbb-cccc-123456789abc", "GPU-8f2c1e4a-aaaa-bbbb-cccc-123456789abc"),
    ],
)
def test_job_environment_selects_gpus(gpus, visible):
    env = job_environment(gpus)
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert {k: env[k] for k in MEMORY_GROWTH_ENV} == dict(MEMORY_GROWTH_ENV)


@pytest.mark.parametrize(
    ("count", "environ", "ids"),
    [
        (0, {}, "none"),
        (1, {}, "0"),
        (3, {}, "0,1,2"),
        (1, {"CUDA_VISIBLE_DEVICES": "2,3"}, "2"),  # the kernel's own choice is honoured
        (2, {"CUDA_VISIBLE_DEVICES": " 2, 3 "}, "2,3"),
    ],
)
def test_a_gpu_count_becomes_the_first_visible_ids(count, environ, ids):
    assert ids_for_count(count, environ) == ids


def test_a_gpu_count_above_what_the_kernel_sees_is_refused():
    with pytest.raises(ConfigurationError, match="--gpus 2: this kernel sees only 1 GPU"):
        ids_for_count(2, {"CUDA_VISIBLE_DEVICES": "3"})
    with pytest.raises(ConfigurationError, match="sees only 0 GPU"):
        ids_for_count(1, {"CUDA_VISIBLE_DEVICES": "-1"})


def test_gpus_all_leaves_devices_alone():
    assert "CUDA_VISIBLE_DEVICES" not in job_environment("all")


@pytest.mark.parametrize("bad", ["", "a", "0,,1", "1,1", "-1", "0;1", "0.5", "gpu0"])
def test_bad_gpus_value_is_a_configuration_error_naming_the_option(bad):
    with pytest.raises(ConfigurationError) as caught:
        job_environment(bad)
    assert "--gpu-ids" in str(caught.value)
    assert repr(bad) in str(caught.value)


def test_job_environment_respects_what_the_user_set():
    base = {
        "TF_FORCE_GPU_ALLOW_GROWTH": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": ".5",
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128",
    }
    frozen = dict(base)
    assert job_environment(base=base) == {
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128,expandable_segments:True"
    }
    assert base == frozen
    assert job_environment(base={"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"}) == {
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }


def fake_tensorflow(devices, error=None):
    calls = []

    def set_memory_growth(device, enable):
        calls.append((device, enable))
        if error is not None:
            raise error

    config = SimpleNamespace(
        list_physical_devices=lambda kind: list(devices) if kind == "GPU" else [],
        experimental=SimpleNamespace(set_memory_growth=set_memory_growth),
    )
    return SimpleNamespace(config=config, growth_calls=calls)


def test_apply_to_kernel_sets_variables_without_frameworks():
    environ = {"HOME": "/home/me"}
    assert apply_to_kernel(environ, {}) == []
    assert environ == {"HOME": "/home/me", **MEMORY_GROWTH_ENV}
    assert apply_to_kernel(environ, {}) == []  # idempotent


def test_apply_to_kernel_enables_growth_on_an_imported_tensorflow():
    tf = fake_tensorflow(["GPU:0", "GPU:1"])
    assert apply_to_kernel({}, {"tensorflow": tf}) == []
    assert tf.growth_calls == [("GPU:0", True), ("GPU:1", True)]


def test_apply_to_kernel_warns_when_tensorflow_gpus_are_initialised():
    error = RuntimeError("Physical devices cannot be modified after being initialized")
    tf = fake_tensorflow(["GPU:0"], error)
    warnings = apply_to_kernel({}, {"tensorflow": tf})
    assert len(warnings) == 1
    assert "TensorFlow" in warnings[0] and "too late to take effect" in warnings[0]
    assert "restart the kernel" in warnings[0]


def test_apply_to_kernel_warns_about_initialised_torch_only():
    warnings = apply_to_kernel({}, {"torch": fake_torch(initialized=True)})
    assert len(warnings) == 1 and "PyTorch" in warnings[0] and "restart the kernel" in warnings[0]
    assert apply_to_kernel({}, {"torch": fake_torch(initialized=False)}) == []
    already = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert apply_to_kernel(already, {"torch": fake_torch(initialized=True)}) == []


def test_apply_to_kernel_warns_about_jax_with_a_backend():
    fresh = {"jax": object(), "jax._src.xla_bridge": SimpleNamespace(_backends={})}
    assert apply_to_kernel({}, fresh) == []
    started = {"jax": object(), "jax._src.xla_bridge": SimpleNamespace(_backends={"cuda": 1})}
    [warning] = apply_to_kernel({}, started)
    assert "JAX" in warning and "restart the kernel" in warning
    assert len(apply_to_kernel({}, {"jax": object()})) == 1  # cannot tell: warn


# --- report -------------------------------------------------------------------------------


def fake_version(installed):
    import importlib.metadata

    def version(distribution):
        if distribution not in installed:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return installed[distribution]

    return version


def test_framework_versions_from_metadata():
    version = fake_version({"torch": "2.13.0", "tensorflow-cpu": "2.16.1"})
    assert framework_versions(version) == {
        "torch": "2.13.0",
        "tensorflow": "2.16.1",
        "keras": "not installed",
        "jax": "not installed",
    }


def make_report(environ, smi=SMI_OUTPUT):
    return environment_report(
        environ,
        {"/kaggle/input"}.__contains__,
        FakeRun(smi),
        modules={},
        read_text={"/proc/meminfo": "MemTotal: 2097152 kB\n"}.get,
        version=fake_version({"torch": "2.13.0", "keras": "3.4.1"}),
    )


def test_report_text_and_pretty_repr():
    report = make_report({"KAGGLE_KERNEL_RUN_TYPE": "Interactive", "CUDA_VISIBLE_DEVICES": "2"})
    text = str(report)
    assert report.platform.name == "kaggle"
    assert "Platform:     Kaggle Notebook" in text
    assert "env KAGGLE_KERNEL_RUN_TYPE=Interactive; path /kaggle/input exists" in text
    assert "2: Tesla T4 (? MiB used of 15360 MiB) [nvidia-smi]" in text
    assert "RAM:          2.0 GiB" in text
    assert "torch 2.13.0, tensorflow not installed, keras 3.4.1, jax not installed" in text
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in text
    printed = []
    report._repr_pretty_(SimpleNamespace(text=printed.append), False)
    assert printed == [text]


def test_report_settings_follow_the_environment():
    report = make_report({"TF_FORCE_GPU_ALLOW_GROWTH": "false"})
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in report.settings
    assert report.settings["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_report_html_is_escaped_and_hides_secrets():
    smi = "0, <b>Evil & Co</b>, 1024, 1, 1.0\n"
    report = make_report({"KAGGLE_KERNEL_RUN_TYPE": "x", "KAGGLE_DATA_PROXY_TOKEN": SECRET}, smi)
    page = report._repr_html_()
    assert page.startswith("<table") and page.endswith("</table>")
    assert "&lt;b&gt;Evil &amp; Co&lt;/b&gt;" in page
    assert "<b>Evil" not in page
    assert SECRET not in page and SECRET not in str(report)


def test_nothing_imports_a_framework():
    code = textwrap.dedent(
        """
        import sys
        import neural_jupyter.runtime.environment
        import neural_jupyter.runtime.accelerators
        import neural_jupyter.runtime.env_report
        from neural_jupyter.runtime.env_report import environment_report
        from neural_jupyter.runtime.gpu_settings import apply_to_kernel
        report = environment_report()
        str(report); report._repr_html_()
        apply_to_kernel({})
        print(sorted(m for m in ("torch", "tensorflow", "keras", "jax") if m in sys.modules))
        print(report.frameworks["torch"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    imported, torch_version = done.stdout.splitlines()
    assert imported == "[]"
    assert torch_version != "not installed"  # torch is installed here, found without import
