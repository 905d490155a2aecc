"""A missing optional dependency is reported first, as ``MissingDependencyError`` naming the
extra (issue 13, point 8): at compile (Keras), at submit and at dry run, before any other
check, any bundle or any job record.

Missing packages are simulated, not uninstalled: ``blocked`` makes ``import`` and
``importlib.util.find_spec`` fail for a module and everything under it, the way they fail
when the package is not installed, and puts everything back afterwards."""

from __future__ import annotations

import importlib.abc
import sys

import pytest

from neural_jupyter.backends import PLATFORM_REQUIREMENTS, require_platform
from neural_jupyter.errors import MissingDependencyError
from neural_jupyter.jobs.store import JobStore

MODEL = (
    "%%neural_compile --show none\n"
    'network Small { input: (4,) layers: Dense(8, "relu") Output(1) loss: "mse" '
    "train { epochs: 1 } }"
)


class Blocker(importlib.abc.MetaPathFinder):
    """Finds nothing for the blocked names: imports raise ModuleNotFoundError."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


@pytest.fixture
def blocked(monkeypatch):
    def block(*names: str) -> None:
        for loaded in list(sys.modules):
            if any(loaded == n or loaded.startswith(n + ".") for n in names):
                monkeypatch.delitem(sys.modules, loaded)
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setattr(sys, "meta_path", [Blocker(names), *sys.meta_path])

    return block


def job_count() -> int:
    return len(JobStore().list(limit=1000))


@pytest.mark.parametrize("platform", sorted(PLATFORM_REQUIREMENTS))
def test_require_platform_names_the_extra_for_each_missing_module(platform, blocked):
    extra, modules = PLATFORM_REQUIREMENTS[platform]
    require_platform(platform)  # everything is installed in the test environment
    for module, package in modules:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(MissingDependencyError) as caught:
                require_platform(platform)
        assert caught.value.extra == extra and caught.value.package == package
        assert f"neural-jupyter[{extra}]" in caught.value.hint
        assert "git+https://github.com/neural-jupyter/neural-jupyter" in caught.value.hint
    require_platform("local")  # needs nothing
    require_platform("some-plugin")  # unknown to the table: its module reports for itself


@pytest.mark.parametrize(
    ("platform", "line"),
    [
        ("kaggle", "--instance gpu-t4x2 --max-hours 1"),
        ("vertex", "--gpus 1 --gpu-type T4 --max-hours 1"),  # no project, no bucket given
        ("ssh", "--host gpu-box"),
        ("sagemaker", "--instance ml.g5.xlarge --max-hours 1"),  # no region, no role
        ("azureml", "--set compute=gpu-cluster"),
        ("databricks", "--instance g4dn.xlarge"),
        ("kubernetes", "--gpus 1 --set namespace=ml"),
        ("modal", "--gpu-type T4 --max-hours 1"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_submit_and_dry_run_report_the_missing_sdk_first(ip, platform, line, dry_run, blocked):
    """Issue 13: kaggle gave an 83-line ModuleNotFoundError, Vertex complained about the
    bucket and project first, an SSH dry run listed "bytes": null for every file."""
    ip.run(MODEL)
    extra, modules = PLATFORM_REQUIREMENTS[platform]
    blocked(modules[0][0])
    before = job_count()
    flag = " --dry-run" if dry_run else " --yes"
    error = ip.run_error(
        f"%neural_submit Small --platform {platform} --data synthetic {line}{flag}"
    )
    assert isinstance(error, MissingDependencyError), repr(error)
    assert error.extra == extra
    rendered = error._render_traceback_()
    assert rendered[0].startswith(f"MissingDependencyError: The {platform} platform needs")
    assert len(rendered) == 2 and "pip install" in rendered[1]
    assert job_count() == before  # nothing recorded, nothing started


def test_python_api_dry_run_reports_it_too(blocked, neural_home):
    import neural_jupyter

    model = neural_jupyter.compile_model('network T { input: (4,) layers: Output(1) loss: "mse" }')
    blocked("kagglesdk")
    with pytest.raises(MissingDependencyError, match="kaggle"):
        neural_jupyter.submit(model, "synthetic", platform="kaggle", dry_run=True)


def test_compiling_for_keras_without_keras_names_the_extra(ip, blocked):
    blocked("keras")
    error = ip.run_error(
        "%%neural_compile --framework keras\n"
        'network K { input: (4,) layers: Output(1) loss: "mse" }'
    )
    assert isinstance(error, MissingDependencyError)
    assert error.extra == "keras" and "neural-jupyter[keras]" in error.hint
    assert "K" not in ip.ns


def test_a_local_run_without_the_framework_names_the_extra_before_starting(ip, blocked):
    blocked("torch")
    ip.run(MODEL)  # a PyTorch model compiles (and summarises) without torch
    before = job_count()
    error = ip.run_error("%%neural_run --data synthetic --monitor none\nSmall")
    assert isinstance(error, MissingDependencyError)
    assert error.extra == "torch"
    assert job_count() == before
