"""One word per idea: ``framework`` (pytorch, keras) and ``platform`` (local, ssh, ...).

Each old spelling ("backend" for either) still works, warns with a ``FutureWarning`` naming the
new word, and giving the old and the new spelling together is refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from neural_jupyter import api, jobs
from neural_jupyter.compiler import CompiledModel, compile_all, compile_file, compile_model
from neural_jupyter.deprecation import NeuralDeprecationWarning
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.launch import start_bundle
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.jobs.sweeps import Stage, Sweep
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle

SOURCE = (
    'network Tiny { input: (4,) layers: Dense(3, "relu") Output(2, "softmax") '
    'loss: "categorical_crossentropy" train { epochs: 1 batch_size: 16 } }'
)
SWEEPABLE = SOURCE.replace("Dense(3,", "Dense(HPO(choice(2, 3)),")


def renamed(new: str):
    """``pytest.warns`` for an old spelling whose message names ``new``."""
    return pytest.warns(FutureWarning, match=f"deprecated; use {new}")


@pytest.fixture
def store(neural_home):
    return JobStore()


# --- framework --------------------------------------------------------------------------------
def test_compile_functions_take_framework_and_the_old_backend_keyword(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new word warns about nothing
        model = compile_model(SOURCE, framework="pytorch")
    assert model.framework == "pytorch"
    with renamed("framework="):
        assert compile_model(SOURCE, backend="torch").framework == "pytorch"
    with renamed("framework="):
        assert compile_all(SOURCE, backend="pytorch")[0].framework == "pytorch"
    path = tmp_path / "tiny.neural"
    path.write_text(SOURCE)
    with renamed("framework="):
        assert compile_file(path, backend="pytorch").framework == "pytorch"
    with pytest.raises(ConfigurationError, match="both framework= and its old name backend="):
        compile_model(SOURCE, framework="pytorch", backend="pytorch")


def test_compiled_model_backend_attribute_and_for_backend_are_aliases():
    model = compile_model(SOURCE)
    with renamed(".framework"):
        assert model.backend == "pytorch"
    with renamed(r".for_framework\(\)"):
        assert model.for_backend("pytorch").framework == "pytorch"
    with renamed("framework="):
        assert CompiledModel(model.spec, backend="pytorch").framework == "pytorch"
    with pytest.raises(ConfigurationError, match="unknown framework 'jax'"):
        model.for_framework("jax")


def test_build_bundle_takes_framework_and_the_old_backend_keyword(tmp_path):
    model = compile_model(SOURCE)
    dataset = data_module.resolve(model.spec, "synthetic")
    settings = RunSettings.from_spec(model.spec)
    with renamed("framework="):
        bundle = build_bundle(
            model.spec, dataset, tmp_path / "b", settings, job_id="j", backend="pytorch"
        )
    assert bundle.job["framework"] == "pytorch"


# --- platform ---------------------------------------------------------------------------------
def test_job_store_and_records_say_platform(store):
    with renamed("platform="):
        record = store.create(name="old", backend="ssh")
    assert record.platform == "ssh"
    with renamed(".platform"):
        assert record.backend == "ssh"
    fresh = store.create(name="new", platform="local")
    with renamed("platform="):
        assert [r.name for r in store.list(backend="ssh")] == ["old"]
    assert [r.name for r in store.list(platform="local")] == ["new"]
    with renamed("platform="):
        again, created = store.create_or_get(idempotency_key="k", name="k", backend="local")
    assert created and again.platform == "local"
    with renamed("platform="):
        assert store.update(fresh.id, backend="kaggle").platform == "kaggle"
    with pytest.raises(ConfigurationError, match="both platform= and its old name backend="):
        store.create(name="x", platform="local", backend="local")


def test_jobs_list_takes_platform_and_the_old_backend_keyword(store):
    store.create(name="remote", platform="ssh")
    assert [j.name for j in jobs.list(platform="ssh", store=store)] == ["remote"]
    with renamed("platform="):
        assert [j.name for j in jobs.list(backend="ssh", store=store)] == ["remote"]


def test_api_run_and_launch_take_platform_and_the_old_backend_keyword(neural_home):
    """The old keyword reaches the platform lookup (an unknown one is named in the error)."""
    from neural_jupyter.errors import NeuralError

    model = compile_model(SOURCE)
    with renamed("platform="), pytest.raises(NeuralError, match="nowhere"):
        api.run(model, "synthetic", backend="nowhere")
    with pytest.raises(ConfigurationError, match="both platform= and its old name backend="):
        api.run(model, "synthetic", platform="local", backend="local")
    with renamed("platform="), pytest.raises(NeuralError, match="nowhere"):
        start_bundle(
            lambda d, j: None,
            backend="nowhere",
            resources=None,
            name="n",
            model_name="n",
            config={},
        )


def test_sweep_and_stage_take_platform_and_the_old_backend_keyword(neural_home):
    model = compile_model(SWEEPABLE)
    with renamed("platform="):
        sweep = Sweep(model, "synthetic", backend="local")
    assert sweep.platform == "local"
    with renamed(".platform"):
        assert sweep.backend == "local"
    with renamed("platform="):
        stage = Stage("s", [model], ["synthetic"], backend="local")
    assert stage.platform == "local"
    with pytest.raises(ConfigurationError, match="both platform= and its old name backend="):
        Sweep(model, "synthetic", platform="local", backend="local")


# --- magics -------------------------------------------------------------------------------------
def test_compile_magic_takes_framework_and_the_old_backend_flag(ip):
    ip.run(f"%%neural_compile --framework pytorch --show none --as new\n{SOURCE}")
    assert ip.ns["new"].framework == "pytorch"
    for flag in ("--backend", "-b"):
        with renamed("--framework"):
            ip.run(f"%%neural_compile {flag} pytorch --show none --as old\n{SOURCE}")
        assert ip.ns["old"].framework == "pytorch"
    error = ip.run_error(f"%%neural_compile --framework pytorch --backend keras\n{SOURCE}")
    assert isinstance(error, UsageError) and "not both" in str(error)


def test_default_backend_option_is_an_alias_of_default_framework(ip):
    magics = next(c for c in ip.shell.configurables if type(c).__name__ == "NeuralMagics")
    with renamed("NeuralMagics.default_framework"):
        ip.run('%config NeuralMagics.default_backend = "pytorch"')
    assert magics.default_framework == "pytorch"


def test_jobs_magic_takes_platform_and_the_old_backend_flag(ip, capsys):
    JobStore().create(name="OnSsh", platform="ssh")
    JobStore().create(name="Here", platform="local")
    ip.run("%neural_jobs --platform ssh")
    shown = capsys.readouterr().out
    assert "OnSsh" in shown and "Here" not in shown and "platform" in shown
    with renamed("--platform"):
        ip.run("%neural_jobs --backend ssh")
    assert "OnSsh" in capsys.readouterr().out
    error = ip.run_error("%neural_jobs --platform ssh --backend ssh")
    assert isinstance(error, UsageError)


@pytest.mark.slow
def test_run_magic_takes_platform_and_the_old_backend_flag(ip):
    """A real (tiny) training run through the old flag."""
    ip.run(f"%%neural_compile --show none\n{SOURCE}")
    with renamed("--platform"):
        run = ip.run("%%neural_run --backend local --data synthetic --monitor none\nTiny")
    assert run.status == "SUCCEEDED"
    assert jobs.get(run.job_id).record.platform == "local"
    error = ip.run_error("%%neural_run --platform local --backend local --data synthetic\nTiny")
    assert isinstance(error, UsageError) and "not both" in str(error)


def test_the_warning_class_is_a_future_warning():
    """Shown in notebooks by default (a DeprecationWarning from library code is not)."""
    assert issubclass(NeuralDeprecationWarning, FutureWarning)


# --- --gpus is a count everywhere; --gpu-ids chooses devices here --------------------------------
@pytest.mark.parametrize(
    ("gpus", "gpu_ids", "platform", "expected"),
    [
        (None, None, "local", (None, None)),
        (2, None, "local", (2, "0,1")),
        (0, None, "local", (0, "none")),
        (None, "1,3", "local", (None, "1,3")),
        (4, None, "ray", (4, None)),  # a count for another platform stays a count
    ],
)
def test_gpu_request_reads_a_count_or_ids(monkeypatch, gpus, gpu_ids, platform, expected):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api.gpu_request(gpus, gpu_ids, platform) == expected


def test_gpu_request_reads_the_old_id_string_as_gpu_ids():
    with pytest.warns(FutureWarning, match="use gpu_ids='0,1'.*gpus=1 means one GPU, not GPU 1"):
        assert api.gpu_request("0,1", None, "local") == (None, "0,1")
    with pytest.raises(ConfigurationError, match="not both"):
        api.gpu_request("0,1", "0", "local")


def test_submit_magic_takes_a_count_and_refuses_an_id_list(ip):
    ip.run(f"%%neural_compile --show none\n{SOURCE}")
    plan = ip.run(
        "%neural_submit Tiny --platform ssh --host gpu-box --gpus 2 --data synthetic --dry-run"
    )
    assert plan.request["resources"]["gpus"] == 2
    error = ip.run_error(
        "%neural_submit Tiny --platform ssh --host gpu-box --gpus 0,1 --data synthetic --dry-run"
    )
    assert isinstance(error, UsageError) and "number of GPUs" in str(error)


@pytest.mark.slow
def test_run_magic_gpus_is_a_count_and_the_old_id_list_still_works(ip, monkeypatch):
    """Real (tiny) runs; the GPUs chosen are in the job's recorded resources."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ip.run(f"%%neural_compile --show none\n{SOURCE}")
    run = ip.run("%%neural_run --gpus 2 --data synthetic --monitor none\nTiny")
    resources = jobs.get(run.job_id).record.config["resources"]
    assert (resources["gpus"], resources["gpu_ids"]) == (2, "0,1")
    with pytest.warns(FutureWarning, match="use --gpu-ids 1,0 .*--gpus 1 means one GPU"):
        run = ip.run("%%neural_run --gpus 1,0 --data synthetic --monitor none\nTiny")
    assert jobs.get(run.job_id).record.config["resources"]["gpu_ids"] == "1,0"
    error = ip.run_error("%%neural_run --gpus 1 --gpu-ids 0 --data synthetic\nTiny")
    assert "not both" in str(error)


# --- drawing lives in ui/: CompiledModel and TrainingRun are data -------------------------------
def _run_with_history() -> TrainingRun:
    history = [{"epoch": e, "loss": 1.0 / e, "val_loss": 1.2 / e} for e in (1, 2, 3)]
    return TrainingRun("nj-1", "Tiny", "SUCCEEDED", history, {}, {}, Path("."))


def test_summary_and_plot_are_functions_of_the_package():
    import neural_jupyter

    model = compile_model(SOURCE)
    table = neural_jupyter.summary(model)
    assert "dense_1" in str(table) and "<table" in table._repr_html_()
    assert "<svg" in neural_jupyter.plot(model)._repr_html_()
    assert "val_loss" in neural_jupyter.plot(_run_with_history())._repr_html_()
    with pytest.raises(TypeError, match="CompiledModel or a TrainingRun"):
        neural_jupyter.plot("Tiny")


def test_a_notebook_shows_a_compiled_model_as_its_summary(ip):
    ip.run(f"%%neural_compile --show none\n{SOURCE}")
    shown, _ = ip.shell.display_formatter.format(ip.ns["Tiny"])
    assert "<table" in shown["text/html"] and "dense_1" in shown["text/plain"]


def test_the_old_drawing_methods_still_work_with_a_warning(ip):
    """The extension puts them back, deprecated (``ui/views.install_legacy_methods``)."""
    model = compile_model(SOURCE)
    with renamed(r"neural_jupyter\.summary\(model\)"):
        assert "dense_1" in str(model.summary())
    with renamed(r"neural_jupyter\.plot\(model\)"):
        assert "<svg" in model.plot()._repr_html_()
    with renamed(r"neural_jupyter\.plot\(run\)"):
        assert "val_loss" in _run_with_history().plot()._repr_html_()


def test_without_the_extension_the_old_methods_say_where_they_went():
    """Plain Python, no extension and no ``api``: the data classes draw nothing and load no ui/."""
    script = textwrap.dedent(
        f"""
        import sys
        from neural_jupyter.compiler import compile_model
        import neural_jupyter.jobs
        model = compile_model({SOURCE!r})
        assert not [m for m in sys.modules if m.startswith("neural_jupyter.ui")], "ui loaded"
        try:
            model.summary()
        except AttributeError as error:
            print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "CompiledModel.summary() is now neural_jupyter.summary(model)" in done.stdout


# --- the magics package: one module per concern, validated options ------------------------------
def test_load_ext_registers_every_magic_of_every_class(ip):
    from neural_jupyter.magics import MAGIC_CLASSES

    registered = ip.shell.magics_manager.magics
    for cls in MAGIC_CLASSES:
        for kind, names in cls.magics.items():
            for name in names:
                assert name in registered[kind], f"%{name} ({cls.__name__}) is not registered"
    expected = {
        "neural_compile", "neural_builder", "neural_run", "neural_submit", "neural_jobs",
        "neural_attach", "neural_cancel", "neural_rm", "neural_logs", "neural_sweep",
        "neural_env", "neural_dashboard", "neural_remote", "neural_script", "neural_deploy",
        "neural_endpoints", "neural_undeploy", "neural_warm",
    }  # fmt: skip
    assert expected <= set(registered["line"]) | set(registered["cell"])


def test_unload_ext_removes_them(ip):
    ip.run("%unload_ext neural_jupyter")
    names = set(ip.shell.magics_manager.magics["line"]) | set(
        ip.shell.magics_manager.magics["cell"]
    )
    assert not [n for n in names if n.startswith("neural_")]
    assert not [c for c in ip.shell.configurables if type(c).__module__.startswith("neural_")]
    ip.run("%load_ext neural_jupyter")
    assert "neural_run" in ip.shell.magics_manager.magics["cell"]


@pytest.mark.parametrize(
    "option",
    [
        "NeuralMagics.confirm_cost_above",
        "DeployMagics.confirm_cost_above",
        "DeployMagics.idle_hours",
        "DeployMagics.max_age_hours",
        "WarmMagics.idle_timeout",
    ],
)
def test_options_refuse_negative_and_infinite_numbers(ip, option, caplog):
    from traitlets import TraitError

    owner, name = option.split(".")
    configurable = next(c for c in ip.shell.configurables if type(c).__name__ == owner)
    before = getattr(configurable, name)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(TraitError, match=f"{owner}.{name} must be a number of at least 0"):
            setattr(configurable, name, bad)
    assert getattr(configurable, name) == before
    ip.run(f"%config {option} = -5")  # IPython reports the refusal and goes on
    assert getattr(configurable, name) == before
    assert "must be a number of at least 0, got -5.0" in caplog.text
    ip.run(f"%config {option} = 0")
    assert getattr(configurable, name) == 0
    setattr(configurable, name, before)  # (WarmMagics passes it on to the warm worker's state)


def test_the_shared_options_reach_every_concern(ip):
    """One NeuralMagics instance: %config NeuralMagics.monitor is what each class reads."""
    from neural_jupyter.magics import MAGIC_CLASSES
    from neural_jupyter.magics.base import NeuralMagicsBase

    ip.run('%config NeuralMagics.monitor = "text"')
    instances = [
        fn.__self__
        for table in ip.shell.magics_manager.magics.values()
        for fn in table.values()
        if isinstance(getattr(fn, "__self__", None), NeuralMagicsBase)
    ]
    assert {type(i) for i in instances} == {
        c for c in MAGIC_CLASSES if issubclass(c, NeuralMagicsBase)
    }
    assert {i.options.monitor for i in instances} == {"text"}


def test_argument_groups_are_declared_once():
    """--data/--val/--target, --monitor/--as and --gpus read the same wherever they appear."""
    from neural_jupyter.magics.run import RunMagics
    from neural_jupyter.magics.submit import SubmitMagics
    from neural_jupyter.magics.sweep import SweepMagics

    def helps(magic):
        return {a.dest: a.help for a in magic.parser._actions}

    run, submit, sweep = (
        helps(RunMagics.neural_run), helps(SubmitMagics.neural_submit),
        helps(SweepMagics.neural_sweep),
    )  # fmt: skip
    for dest in ("val", "target", "monitor", "as_name"):
        assert run[dest] == submit[dest] == sweep[dest]
    assert "gpu_ids" in run and "gpu_ids" not in submit
