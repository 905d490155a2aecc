"""Frozen dataclasses with a hand-written ``__init__`` (made once per layer, so built faster
than the generated one: see "Fast ``__init__``" in ``dsl/ir.py``) behave as the generated
``__init__`` would: the same parameters and defaults, every field set, still frozen."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from neural_jupyter.dsl import ir, spec
from neural_jupyter.dsl.layers import LAYERS


def hand_written() -> list[type]:
    found = []
    for module in (ir, spec):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
                and value.__init__.__code__.co_filename != "<string>"  # not generated
            ):
                found.append(value)
    return found


def test_the_hand_written_ones_are_found():
    assert {ir.Call, ir.LayerNode, spec.LayerSpec} <= set(hand_written())


@pytest.mark.parametrize("cls", hand_written(), ids=lambda cls: cls.__name__)
def test_init_takes_the_fields_with_their_defaults(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        expected = (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )
        assert parameter.default == expected, field.name
        assert field.default_factory is dataclasses.MISSING, field.name


@pytest.mark.parametrize("cls", hand_written(), ids=lambda cls: cls.__name__)
def test_every_field_is_set_and_the_instance_is_frozen(cls):
    fields = dataclasses.fields(cls)
    values = {f.name: ("value", f.name) for f in fields if f.init}
    values["kind" if "kind" in values else "name"] = "Dense"
    made = cls(**values)
    assert set(vars(made)) == {f.name for f in fields}
    for field in fields:
        if field.init:
            assert getattr(made, field.name) == values[field.name]
    if cls is spec.LayerSpec:  # its only init=False field: the definition compiled with
        assert made.layer_type is LAYERS["Dense"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, "other")
    copy = dataclasses.replace(made)
    assert copy == made and hash(copy) == hash(made) and repr(copy) == repr(made)
    changed = dataclasses.replace(made, **{fields[1].name: "changed"})
    assert getattr(changed, fields[1].name) == "changed" and changed != made


def test_defaults_apply_when_left_out():
    span = ir.Span(1, 1, 1, 5)
    node = ir.LayerNode("Dense", (), span)
    assert (node.body, node.repeat, node.macro, node.form, node.device) == (
        None,
        1,
        None,
        "call",
        None,
    )
    layer = spec.LayerSpec("Flatten", "flatten_1", (), (2, 3), (6,), (), 0, span)
    assert (layer.children, layer.notes, layer.macro) == ((), (), None)
    assert layer.type is LAYERS["Flatten"]
