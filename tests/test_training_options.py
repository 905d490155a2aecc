"""The GPU-minded options of the generated PyTorch loop: ``compile`` (torch.compile),
``channels_last`` and ``data_on_device``. Each one, switched on, trains the digits data with
real torch (CPU) to a real accuracy; each reaches job.json and the generated train.py from the
API and the magics; a Keras model and bad values are refused before anything starts, naming
the option."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from neural_jupyter import api
from neural_jupyter.codegen import pytorch_training
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import ConfigurationError, InvalidArgumentError
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.runtime.bundle import RunSettings
from neural_jupyter.runtime.jobdir import JobDir

DIGITS = """
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=16, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(64, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.003)
  metrics: ["accuracy"]
  train { epochs: 1 batch_size: 16 validation_split: 0.2 seed: 1 }
}
"""

DENSE = """
network DenseNet {
  input: (8, 8, 1)
  layers: Flatten() Dense(32, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  metrics: ["accuracy"]
  train { epochs: 1 batch_size: 16 }
}
"""


def job_settings(run) -> dict:
    return json.loads((run.directory / "job.json").read_text())


def job_log(run) -> str:
    return JobDir(run.directory.parent).stderr.read_text()


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The digits model trained with every option off (the behaviour of before them)."""
    home = tmp_path_factory.mktemp("plain-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURAL_JUPYTER_HOME", str(home))
        return api.run(DIGITS, "digits", monitor="none")


# --- settings ----------------------------------------------------------------------------------
def test_options_are_off_by_default_and_reach_the_settings():
    spec = compile_model(DIGITS).spec
    plain = RunSettings.from_spec(spec)
    assert (plain.compile, plain.channels_last, plain.data_on_device) == (False, False, "auto")
    chosen = RunSettings.from_spec(spec, compile=True, channels_last=True, data_on_device=True)
    assert (chosen.compile, chosen.channels_last, chosen.data_on_device) == (True, True, "on")
    assert RunSettings.from_spec(spec, data_on_device=False).data_on_device == "off"
    assert chosen.for_model(spec, "pytorch") is chosen


def test_options_at_their_default_leave_the_submit_key_as_before_them(neural_home):
    """A cell submitted before these options existed still finds its job: at their default
    they are not part of the idempotency key; set, they make another job."""
    import dataclasses

    from neural_jupyter.backends.base import ResourceSpec
    from neural_jupyter.runtime import data as data_module

    model = compile_model(DIGITS)
    dataset = data_module.resolve(model.spec, "digits")
    resources = ResourceSpec()
    plain = RunSettings.from_spec(model.spec)
    payload_settings = api._key_settings(plain)
    names = {f.name for f in dataclasses.fields(RunSettings)}
    assert names - payload_settings.keys() == {"compile", "channels_last", "data_on_device"}
    key = api.idempotency_key("local", model, dataset, plain, resources)
    for option, value in (("compile", True), ("channels_last", True), ("data_on_device", "on")):
        changed = dataclasses.replace(plain, **{option: value})
        assert api.idempotency_key("local", model, dataset, changed, resources) != key


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"compile": "yes"}, "--compile"),
        ({"compile": 1}, "--compile"),
        ({"channels_last": "true"}, "--channels-last"),
        ({"data_on_device": "always"}, "--data-on-device"),
        ({"data_on_device": 1}, "--data-on-device"),
    ],
)
def test_bad_values_are_refused_naming_the_option(neural_home, options, argument):
    with pytest.raises(InvalidArgumentError) as caught:
        api.run(DIGITS, "digits", monitor="none", **options)
    assert caught.value.argument == argument
    assert argument in str(caught.value)
    assert JobStore().list() == []  # refused before anything started


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"compile": True}, "--compile"),
        ({"channels_last": True}, "--channels-last"),
        ({"data_on_device": "on"}, "--data-on-device"),
        ({"data_on_device": "off"}, "--data-on-device"),
    ],
)
def test_a_keras_model_refuses_the_pytorch_loop_options(neural_home, options, argument):
    keras_model = compile_model(DIGITS, "keras")
    with pytest.raises(ConfigurationError) as caught:
        api.run(keras_model, "digits", monitor="none", **options)
    message = str(caught.value)
    assert argument in message and "keras" in message and "PyTorch" in message
    with pytest.raises(ConfigurationError, match=argument):
        api.submit(keras_model, "digits", platform="local", dry_run=True, **options)
    assert JobStore().list() == []
    # the default placement is no option at all: a Keras model takes it
    spec = keras_model.spec
    assert RunSettings.from_spec(spec, data_on_device="auto").for_model(spec, "keras")


def test_channels_last_needs_a_2d_convolution(neural_home):
    with pytest.raises(ConfigurationError, match="--channels-last") as caught:
        api.run(DENSE, "digits", monitor="none", channels_last=True)
    assert "no Conv2D layer" in str(caught.value)
    assert JobStore().list() == []


def test_compile_and_debug_are_refused_together(neural_home):
    with pytest.raises(ConfigurationError, match="--compile and --debug"):
        api.run(DIGITS, "digits", monitor="none", compile=True, debug=True)


def test_magic_flags_reach_the_api_checks(ip):
    ip.run(f"%%neural_compile --framework keras --show none --as KerasDigits\n{DIGITS}")
    for flag, name in (
        ("--compile", "--compile"),
        ("--channels-last", "--channels-last"),
        ("--data-on-device off", "--data-on-device"),
    ):
        error = ip.run_error(f"%%neural_run --data digits --monitor none {flag}\nKerasDigits")
        assert isinstance(error, ConfigurationError) and name in str(error)
        error = ip.run_error(
            f"%neural_submit KerasDigits --platform local --data digits --dry-run {flag}"
        )
        assert isinstance(error, ConfigurationError) and name in str(error)
    error = ip.run_error(f"%%neural_run --data digits --data-on-device maybe\n{DIGITS}")
    assert "--data-on-device" in str(error) and "auto" in str(error)


# --- the generated loop ------------------------------------------------------------------------
def load_script(tmp_path, source: str = DIGITS):
    """The generated train.py, imported as a module (its main() does not run)."""
    path = tmp_path / "train.py"
    path.write_text(pytorch_training.generate_training_script(compile_model(source).spec))
    spec = importlib.util.spec_from_file_location(f"train_{tmp_path.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_placement_on_a_device(tmp_path, capsys):
    """The placement rules on a device other than the CPU (``meta`` stands in for a GPU)."""
    script = load_script(tmp_path)
    script.LABELS = "sparse"
    device = torch.device("meta")
    pairs = [(torch.zeros(100, 8, 8, 1), torch.zeros(100, dtype=torch.long))] * 2

    def where(mode: str) -> list[str]:
        return [x.device.type for x, _ in script.place_data(mode, device, pairs)]

    assert where("auto") == ["meta", "meta"]  # small sets: on the device, as always
    assert capsys.readouterr().err == ""  # the default says nothing
    assert where("off") == ["cpu", "cpu"]
    assert "each batch is copied" in capsys.readouterr().err
    assert where("on") == ["meta", "meta"]
    assert "copied once" in capsys.readouterr().err
    script.free_device_memory = lambda device: 1000  # far less than the data
    assert where("on") == ["cpu", "cpu"]
    assert "does not fit in half the device's free memory" in capsys.readouterr().err
    # on the CPU every mode leaves the data where it is, silently
    cpu = torch.device("cpu")
    for mode in ("auto", "on", "off"):
        assert [x.device.type for x, _ in script.place_data(mode, cpu, pairs)] == ["cpu"] * 2
    assert capsys.readouterr().err == ""


def test_channels_last_converts_the_convolution_weights(tmp_path):
    script = load_script(tmp_path, DIGITS.replace("(8, 8, 1)", "(8, 8, 3)"))
    model = script.build_model()
    script.use_channels_last(model)
    weight = model.conv2d_1.weight  # (16, 3, 3, 3): the two formats differ
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    (tmp_path / "dense").mkdir()
    dense = load_script(tmp_path / "dense", DENSE)
    model = dense.build_model()
    dense.use_channels_last(model)  # nothing 4-D: a note in the log, nothing changed
    assert all(p.is_contiguous() for p in model.parameters())


# --- training with each option on (real torch on the CPU) --------------------------------------
@pytest.mark.slow
def test_plain_run_is_the_baseline(plain_run):
    assert plain_run.status == "SUCCEEDED"
    assert plain_run.metrics["val_accuracy"] >= 0.8, plain_run.metrics
    settings = job_settings(plain_run)
    assert (settings["compile"], settings["channels_last"]) == (False, False)
    assert settings["data_on_device"] == "auto"
    log = job_log(plain_run)
    assert "torch.compile" not in log and "channels-last" not in log
    assert "data on the device" not in log


@pytest.mark.slow
def test_compile_trains_digits(neural_home, plain_run):
    """torch.compile on the CPU (inductor needs a C compiler); one epoch."""
    run = api.run(DIGITS, "digits", monitor="none", compile=True)
    assert run.status == "SUCCEEDED"
    assert run.metrics["val_accuracy"] >= 0.8, run.metrics
    assert job_settings(run)["compile"] is True
    assert "torch.compile: on" in job_log(run)
    assert "model = torch.compile(model)" in (run.directory / "train.py").read_text()
    # the same training: same seed, same data order, compiled kernels
    assert run.metrics["val_accuracy"] == pytest.approx(plain_run.metrics["val_accuracy"], abs=0.03)
    # the weights saved are the model's own (no torch.compile wrapper in their names)
    assert all(not key.startswith("_orig_mod") for key in torch.load(run.artifacts["weights"]))
    assert run.model()(torch.zeros(2, 8, 8, 1)).shape == (2, 10)


@pytest.mark.slow
def test_channels_last_trains_digits_from_the_magic(ip, plain_run):
    run = ip.run(
        "%%neural_run --data digits --monitor none --channels-last --data-on-device on\n" + DIGITS
    )
    assert run.status == "SUCCEEDED"
    assert run.metrics["val_accuracy"] >= 0.8, run.metrics
    settings = job_settings(run)
    assert settings["channels_last"] is True and settings["data_on_device"] == "on"
    assert "channels-last memory format: on" in job_log(run)
    assert run.metrics["val_accuracy"] == pytest.approx(plain_run.metrics["val_accuracy"], abs=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["on", "off"])
def test_data_placement_is_a_no_op_on_the_cpu(neural_home, plain_run, placement):
    """On the CPU the data is on the device whatever the option: the very same run."""
    run = api.run(DIGITS, "digits", monitor="none", data_on_device=placement)
    assert run.status == "SUCCEEDED"
    assert job_settings(run)["data_on_device"] == placement
    assert run.history == plain_run.history


@pytest.mark.slow
def test_submit_magic_passes_the_options(ip):
    ip.run(f"%%neural_compile --show none\n{DIGITS}")
    run = ip.run(
        "%neural_submit DigitNet --platform local --data digits --monitor none "
        "--channels-last --data-on-device off"
    )
    assert run.status == "SUCCEEDED"
    assert run.metrics["val_accuracy"] >= 0.8, run.metrics
    settings = job_settings(run)
    assert settings["channels_last"] is True and settings["data_on_device"] == "off"
    assert settings["compile"] is False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
