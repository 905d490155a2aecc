"""``paused_gc``: the collector is off during a compile and as it was afterwards."""

from __future__ import annotations

import gc

import pytest

from neural_jupyter.compiler import compile_model
from neural_jupyter.dsl.parser import clear_cache
from neural_jupyter.errors import DSLSyntaxError
from neural_jupyter.gc_pause import paused_gc

SOURCE = 'network Net {\n  input: (4,)\n  layers:\n    Output(2, "softmax")\n}'


@pytest.fixture(autouse=True)
def collector_restored():
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_inside_on_after_and_nested_calls_leave_it_to_the_outermost():
    seen = []

    @paused_gc
    def inner():
        seen.append(("inner", gc.isenabled()))

    @paused_gc
    def outer():
        seen.append(("outer", gc.isenabled()))
        inner()
        seen.append(("after inner", gc.isenabled()))
        return 42

    gc.enable()
    assert outer() == 42
    assert seen == [("outer", False), ("inner", False), ("after inner", False)]
    assert gc.isenabled()


def test_switched_back_on_when_the_call_raises():
    @paused_gc
    def failing():
        raise ValueError("boom")

    gc.enable()
    with pytest.raises(ValueError, match="boom"):
        failing()
    assert gc.isenabled()


def test_a_collector_the_user_switched_off_stays_off():
    @paused_gc
    def work():
        return gc.isenabled()

    gc.disable()
    assert work() is False
    assert not gc.isenabled()


def test_compiles_run_without_the_collector_and_restore_it(monkeypatch):
    from neural_jupyter.dsl import fastparse

    states = []
    real = fastparse.parse

    def spying(*args, **kwargs):
        states.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(fastparse, "parse", spying)
    gc.enable()
    clear_cache()
    model = compile_model(SOURCE)
    assert "class Net" in model.code
    assert states == [False]
    assert gc.isenabled()
    with pytest.raises(DSLSyntaxError):
        compile_model(SOURCE.replace("Output(2", "Output(2,,"))
    assert gc.isenabled()
