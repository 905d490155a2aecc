"""NetworkSpec → a self-contained Keras 3 ``train.py`` (model + compile hooks + ``fit`` loop).

The generic part is ``templates/keras_train.py`` (a real, formatted Python file): its PRELUDE
(imports, choice of the Keras backend, TensorFlow memory growth, all before Keras is
imported) opens the script and its BODY (event callback, checkpoints, ``main``) closes it;
this module writes the model and the network-specific hooks between them. The script imports
only the standard library, numpy and keras at top level, runs on TensorFlow, JAX or PyTorch,
and speaks the same JSON-lines event protocol and ``job.json`` settings as the PyTorch one.
"""

from __future__ import annotations

import functools
from importlib import resources

from neural_jupyter.codegen import keras
from neural_jupyter.codegen.shipped import check_script_names, import_block, top_level_names
from neural_jupyter.codegen.source import CodeWriter, literal
from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.gc_pause import paused_gc

_PRELUDE_MARKER = "# ----- PRELUDE -----\n"
_BODY_MARKER = "# ----- BODY -----\n"

_CROSS_ENTROPY = {
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "binary_crossentropy": "BinaryCrossentropy",
}
_ACCURACY = {
    "sparse": "SparseCategoricalAccuracy",
    "onehot": "CategoricalAccuracy",
    "binary": "BinaryAccuracy",
}


@functools.cache
def _template_parts() -> tuple[str, str]:
    """(prelude, body) of the template."""
    text = (
        resources.files("neural_jupyter.codegen")
        .joinpath("templates/keras_train.py")
        .read_text("utf-8")
    )
    prelude, body = text.split(_PRELUDE_MARKER, 1)[1].split(_BODY_MARKER, 1)
    return prelude.rstrip("\n") + "\n", body


@functools.cache
def _template_names() -> tuple[frozenset[str], frozenset[str]]:
    """(names the template defines, its import lines)."""
    prelude, body = _template_parts()
    lines = frozenset(line.split("  #")[0] for line in prelude.splitlines() if "import " in line)
    return frozenset(top_level_names(prelude + body)), lines


def from_logits(spec: NetworkSpec) -> bool:
    """True when a cross-entropy loss gets raw scores: the output has no activation."""
    if spec.loss.kind == "regression" or not spec.layers:
        return False
    return spec.output_layer.values.get("activation") in (None, "linear")


def _loss(spec: NetworkSpec) -> str:
    name = spec.loss.name
    if spec.loss.labels == "auto":  # sparse or one-hot: LABELS is decided from the data
        onehot = f"keras.losses.CategoricalCrossentropy(from_logits={from_logits(spec)})"
        sparse = f"keras.losses.SparseCategoricalCrossentropy(from_logits={from_logits(spec)})"
        return f'{onehot} if LABELS == "onehot" else {sparse}'
    if name in _CROSS_ENTROPY:
        return f"keras.losses.{_CROSS_ENTROPY[name]}(from_logits={from_logits(spec)})"
    if name == "huber":
        return f"keras.losses.Huber(delta={literal(dict(spec.loss.params)['delta'])})"
    return {"mse": "keras.losses.MeanSquaredError()", "mae": "keras.losses.MeanAbsoluteError()"}[
        name
    ]


def _optimizer_args(spec: NetworkSpec, rate: str) -> tuple[str, list[str]]:
    opt = spec.optimizer
    p = opt.values
    args = [f"learning_rate={rate}"]
    if opt.name == "SGD":
        args += [f"momentum={literal(p['momentum'])}", f"nesterov={literal(p['nesterov'])}"]
        if p["weight_decay"]:
            args.append(f"weight_decay={literal(p['weight_decay'])}")
    elif opt.name == "RMSprop":
        args += [
            f"rho={literal(p['rho'])}",
            f"momentum={literal(p['momentum'])}",
            f"epsilon={literal(p['epsilon'])}",
        ]
    else:
        args += [
            f"beta_1={literal(p['beta_1'])}",
            f"beta_2={literal(p['beta_2'])}",
            f"epsilon={literal(p['epsilon'])}",
        ]
        if opt.name == "AdamW":
            args.append(f"weight_decay={literal(p['weight_decay'])}")
    return f"keras.optimizers.{opt.name}", args


def _metrics(spec: NetworkSpec) -> list[str]:
    labels = spec.loss.labels
    out = []
    for metric in spec.metrics:
        if metric == "accuracy":
            args = ['name="accuracy"']
            if labels == "binary":
                args.append(f"threshold={0.0 if from_logits(spec) else 0.5}")
            if labels == "auto":
                out.append(
                    '(keras.metrics.CategoricalAccuracy(name="accuracy") if LABELS == '
                    '"onehot" else keras.metrics.SparseCategoricalAccuracy(name="accuracy"))'
                )
                continue
            out.append(f"keras.metrics.{_ACCURACY[labels]}({', '.join(args)})")
        elif metric == "mae":
            out.append('keras.metrics.MeanAbsoluteError(name="mae")')
        elif metric == "mse":
            out.append('keras.metrics.MeanSquaredError(name="mse")')
    return out


def _hooks(spec: NetworkSpec) -> str:
    w = CodeWriter()
    w.line(f"MODEL_NAME = {literal(spec.name)}")
    w.line(f"TASK = {literal(spec.loss.kind)}")
    w.line(f"LABELS = {literal(spec.loss.labels)}")
    w.line(f"FROM_LOGITS = {literal(from_logits(spec))}")
    w.line(f"METRICS = {literal(tuple(spec.metrics))}")
    w.line(f"INPUT_DTYPE = {literal(spec.input_dtype)}")
    w.line(f"OUTPUT_SHAPE = {literal(tuple(spec.output_shape))}")
    w.blank(2)
    w.line("def make_loss() -> keras.losses.Loss:")
    with w.indent():
        w.expression("return ", _loss(spec))
    w.blank(2)
    schedule = spec.optimizer.schedule
    w.line("def make_optimizer() -> keras.optimizers.Optimizer:")
    with w.indent():
        rate = literal(spec.optimizer.values["learning_rate"])
        if schedule is not None and schedule.name == "ExponentialDecay":
            p = dict(schedule.params)
            w.line("# decays every optimizer step (batch)")
            w.statement(
                "schedule = ",
                "keras.optimizers.schedules.ExponentialDecay",
                [
                    f"initial_learning_rate={literal(p['initial_learning_rate'])}",
                    f"decay_steps={literal(p['decay_steps'])}",
                    f"decay_rate={literal(p['decay_rate'])}",
                    f"staircase={literal(p['staircase'])}",
                ],
            )
            rate = "schedule"
        func, args = _optimizer_args(spec, rate)
        w.statement("return ", func, args)
    w.blank(2)
    w.line("def make_metrics() -> list:")
    with w.indent():
        metrics = _metrics(spec)
        w.expression("return ", f"[{', '.join(metrics)}]")
    w.blank(2)
    w.line("def make_callbacks() -> list:")
    with w.indent():
        w.line('"""Callbacks that set the learning rate per epoch (StepDecay)."""')
        if schedule is not None and schedule.name == "StepDecay":
            p = dict(schedule.params)
            w.blank()
            w.line("def step_decay(epoch: int, lr: float) -> float:")
            with w.indent():
                w.expression(
                    "return ",
                    f"{literal(p['initial_learning_rate'])} * {literal(p['gamma'])} ** "
                    f"(epoch // {literal(p['step_size'])})",
                )
            w.blank()
            w.line("return [keras.callbacks.LearningRateScheduler(step_decay)]")
        else:
            w.line("return []")
    return w.text()


@paused_gc
def generate_training_script(spec: NetworkSpec) -> str:
    """The complete Keras ``train.py`` for ``spec``."""
    imports, body, shipment = keras.generate_parts(spec)
    hooks = _hooks(spec)
    if shipment.shipped:
        names, lines = _template_names()
        check_script_names(shipment, names | top_level_names(hooks), lines)
    shipped_imports = "\n".join(import_block(imports)) + "\n\n\n" if imports else ""
    model_body = (shipped_imports + body).strip("\n")
    prelude, body = _template_parts()
    doc = (
        f'"""Train {spec.name} (Keras 3); generated by neural-jupyter.\n\n'
        "Run: python train.py --job job.json [--resume]\n"
        "Reads data.npz and job.json next to it, writes output/, and prints JSON-lines "
        "events.\n"
        "The Keras backend is KERAS_BACKEND, else keras.json's, else the first installed "
        "of\n"
        "tensorflow, jax and torch.\n"
        '"""\n'
    )
    return doc + "\n" + prelude + "\n\n" + model_body + "\n\n\n" + hooks + "\n\n" + body
