"""NetworkSpec → a self-contained PyTorch ``train.py`` (model + loss/optimizer hooks + loop).

The loop itself is ``templates/pytorch_train.py`` (a real, formatted Python file); this module
writes the network-specific part in front of it. The script imports only the standard library,
numpy and torch and speaks the JSON-lines event protocol on stdout.
"""

from __future__ import annotations

import functools
from importlib import resources

from neural_jupyter.codegen import pytorch
from neural_jupyter.codegen.shipped import check_script_names, import_block, top_level_names
from neural_jupyter.codegen.source import CodeWriter, literal
from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.gc_pause import paused_gc

_BODY_MARKER = "# ----- BODY -----\n"

_IMPORTS = (
    "import argparse",
    "import contextlib",
    "import json",
    "import math",
    "import os",
    "import random",
    "import signal",
    "import sys",
    "import time",
    "import traceback",
    "from pathlib import Path",
    "import numpy as np",
)


@functools.cache
def _template_body() -> str:
    text = (
        resources.files("neural_jupyter.codegen")
        .joinpath("templates/pytorch_train.py")
        .read_text("utf-8")
    )
    return text.split(_BODY_MARKER, 1)[1]


@functools.cache
def _template_names() -> frozenset[str]:
    return frozenset(top_level_names(_template_body() + "\n".join(_IMPORTS)))


def _loss(spec: NetworkSpec) -> str:
    name = spec.loss.name
    if spec.loss.kind == "multiclass":
        return "nn.CrossEntropyLoss()"
    if spec.loss.kind == "binary":
        return "nn.BCEWithLogitsLoss()"
    if name == "huber":
        return f"nn.HuberLoss(delta={literal(dict(spec.loss.params)['delta'])})"
    return {"mse": "nn.MSELoss()", "mae": "nn.L1Loss()"}[name]


def _optimizer_args(spec: NetworkSpec) -> tuple[str, list[str]]:
    opt = spec.optimizer
    p = opt.values
    args = ["parameters", f"lr={literal(p['learning_rate'])}"]
    if opt.name == "SGD":
        args += [
            f"momentum={literal(p['momentum'])}",
            f"nesterov={literal(p['nesterov'])}",
            f"weight_decay={literal(p['weight_decay'])}",
        ]
        return "torch.optim.SGD", args
    if opt.name == "RMSprop":
        args += [
            f"alpha={literal(p['rho'])}",
            f"momentum={literal(p['momentum'])}",
            f"eps={literal(p['epsilon'])}",
        ]
        return "torch.optim.RMSprop", args
    args += [f"betas={literal((p['beta_1'], p['beta_2']))}", f"eps={literal(p['epsilon'])}"]
    if opt.name == "AdamW":
        args.append(f"weight_decay={literal(p['weight_decay'])}")
    return f"torch.optim.{opt.name}", args


def _hooks(spec: NetworkSpec) -> str:
    w = CodeWriter()
    fused = spec.fused_output_activation
    w.line(f"MODEL_NAME = {literal(spec.name)}")
    w.line(f"TASK = {literal(spec.loss.kind)}")
    w.line(f"LABELS = {literal(spec.loss.labels)}")
    w.line(f"CLASSES = {literal(spec.output_shape[-1])}")
    w.line(f"OUTPUT_ACTIVATION = {literal(fused)}")
    w.line(f"METRICS = {literal(tuple(spec.metrics))}")
    w.line(f"INPUT_DTYPE = {literal(spec.input_dtype)}")
    activations = {
        layer.name: layer.values.get("activation")
        for layer in spec.all_layers()
        if isinstance(layer.values.get("activation"), str)
    }
    w.statement(
        "LAYER_ACTIVATIONS = ", "dict", [f"{k}={literal(v)}" for k, v in activations.items()]
    )
    w.blank(2)
    w.line("def make_loss() -> nn.Module:")
    with w.indent():
        w.line(f"return {_loss(spec)}")
    w.blank(2)
    w.line("def make_optimizer(parameters) -> torch.optim.Optimizer:")
    with w.indent():
        func, args = _optimizer_args(spec)
        w.statement("return ", func, args)
    w.blank(2)
    w.line("def make_scheduler(optimizer):")
    with w.indent():
        w.line('"""(scheduler, "batch" or "epoch") or None."""')
        schedule = spec.optimizer.schedule
        if schedule is None:
            w.line("return None")
        elif schedule.name == "StepDecay":
            p = dict(schedule.params)
            w.statement(
                "scheduler = ",
                "torch.optim.lr_scheduler.StepLR",
                [
                    "optimizer",
                    f"step_size={literal(p['step_size'])}",
                    f"gamma={literal(p['gamma'])}",
                ],
            )
            w.line('return scheduler, "epoch"')
        else:
            p = dict(schedule.params)
            exponent = (
                f"(step // {literal(p['decay_steps'])})"
                if p["staircase"]
                else f"(step / {literal(p['decay_steps'])})"
            )
            w.blank()
            w.line("def factor(step: int) -> float:")
            with w.indent():
                w.line(f"return {literal(p['decay_rate'])} ** {exponent}")
            w.blank()
            w.line("scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)")
            w.line('return scheduler, "batch"')
    return w.text()


@paused_gc
def generate_training_script(spec: NetworkSpec) -> str:
    """The complete ``train.py`` for ``spec``."""
    parts = pytorch.generate_parts(spec)
    hooks = _hooks(spec)
    if parts.shipment.shipped:
        check_script_names(parts.shipment, _template_names() | top_level_names(hooks), _IMPORTS)
    doc = (
        f'"""Train {spec.name} (PyTorch); generated by neural-jupyter.\n\n'
        "Run: python train.py --job job.json [--resume]\n"
        "Reads data.npz and job.json next to it, writes output/, and prints JSON-lines "
        "events.\n"
        '"""\n'
    )
    imports = "\n".join(import_block([*_IMPORTS, *parts.imports]))
    return (
        doc
        + "\n"
        + imports
        + "\n\n\n"
        + parts.body.rstrip("\n")
        + "\n\n\n"
        + hooks
        + "\n\n"
        + _template_body()
    )
