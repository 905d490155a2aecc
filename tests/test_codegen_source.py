"""Splitting long generated statements stays linear in their length and renders exactly as
before: ``format_expression`` against a reference that finds each node's text with
``ast.get_source_segment`` (the old, quadratic way), on everything the generators format."""

from __future__ import annotations

import ast

import pytest
from test_generated_code_style import ALL_CASES

from neural_jupyter.codegen import keras, keras_training, pytorch, pytorch_training, source
from neural_jupyter.codegen.source import LINE_LENGTH, format_call, format_expression
from neural_jupyter.compiler import compile_model


def reference(expression: str, indent: str = "", prefix: str = "", suffix: str = "") -> list[str]:
    """The splitting rules, with node text from ``ast.get_source_segment``."""
    flat = f"{indent}{prefix}{expression}{suffix}"
    if len(flat) <= LINE_LENGTH:
        return [flat]
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return [flat]

    def text(n: ast.AST) -> str:
        return ast.get_source_segment(expression, n)

    inner = indent + "    "
    if isinstance(node, ast.Call) and not isinstance(node.func, ast.Call):
        items = [(None, text(a)) for a in node.args] + [
            (f"{k.arg}=", text(k.value)) for k in node.keywords
        ]
        head = f"{indent}{prefix}{text(node.func)}("
        tail = f"{indent}){suffix}"
        if not items:
            return [flat]
        hugged = inner + ", ".join((label or "") + t for label, t in items)
        if len(hugged) <= LINE_LENGTH:
            return [head, hugged, tail]
        if len(items) == 1:
            label, t = items[0]
            return [head, *reference(t, inner, label or ""), tail]
    elif isinstance(node, (ast.Tuple, ast.List)) and node.elts and expression[0] in "([":
        items = [(None, text(e)) for e in node.elts]
        head = f"{indent}{prefix}{expression[0]}"
        tail = f"{indent}{expression[-1]}{suffix}"
    else:
        return [flat]
    lines = [head]
    for label, t in items:
        lines += reference(t, inner, label or "", ",")
    return [*lines, tail]


def many_layers(count: int) -> str:
    body = "\n".join(f'    Dense(8, "{"relu" if i % 2 else "gelu"}")' for i in range(count - 1))
    return f'network Wide {{\n  input: (8,)\n  layers:\n{body}\n    Output(1)\n  loss: "mse"\n}}'


@pytest.fixture
def recorded(monkeypatch):
    """Every (expression, indent, prefix, suffix) the generators format, top-level calls
    (a ``format_call(func, args, ...)`` is recorded as the expression it stands for)."""
    calls: list[tuple[str, str, str, str]] = []
    depth = [0]

    def recording(function, expression_of):
        def wrapper(*args, **kwargs):
            if depth[0] == 0:
                calls.append(expression_of(*args, **kwargs))
            depth[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1

        return wrapper

    def as_call(func, args, indent="", prefix="", suffix="", arguments=None):
        return (f"{func}({', '.join(args)})", indent, prefix, suffix)

    def as_expression(expression, indent="", prefix="", suffix=""):
        return (expression, indent, prefix, suffix)

    monkeypatch.setattr(source, "format_call", recording(format_call, as_call))
    monkeypatch.setattr(source, "format_expression", recording(format_expression, as_expression))
    return calls


def test_every_generated_statement_renders_as_the_reference_does(recorded):
    specs = [compile_model(case.source).spec for case in ALL_CASES]
    specs.append(compile_model(many_layers(600)).spec)
    for spec in specs:
        pytorch.generate(spec)
        keras.generate(spec)
        pytorch_training.generate_training_script(spec)
        keras_training.generate_training_script(spec)
    split = [call for call in recorded if len("".join(call[1:3]) + call[0]) > LINE_LENGTH]
    assert len(split) > 50  # the long cases and the 600-entry LAYER_ACTIVATIONS do split
    assert any(len(call[0]) > 10_000 for call in split)
    for expression, indent, prefix, suffix in list(recorded):
        expected = reference(expression, indent, prefix, suffix)
        assert format_expression(expression, indent, prefix, suffix) == expected


@pytest.mark.parametrize(
    "expression",
    [
        'f("ünïcödé_ärgument_" * 3, ß="straße_straße_straße_straße", ω=("α", "β", "γ", "δ_δ_δ_δ"))',
        "g(" + ", ".join(f"名前_{i}={i}" for i in range(12)) + ")",
        "(" + ", ".join(f'"😀{i}"' for i in range(20)) + ")",
    ],
)
def test_non_ascii_expressions_split_at_the_right_characters(expression):
    assert format_expression(expression, "    ", "x = ") == reference(expression, "    ", "x = ")


@pytest.mark.parametrize(
    "args",
    [
        ["(a)", "b" * 90],  # parentheses the parser drops
        ["k=(a)", "c" * 90],
        ["(1, 2)", "d" * 80, "k=(3, 4)"],
        ["(1, 2)", "k=(3, 4)", "d" * 80],  # not Python: left whole
        ["*rest", "e" * 90],
        ["a == b", "名前=1", "f" * 85],
        ["x[..., :3]", 'name="a=b"', "g" * 80],
        ['"' + "h" * 95 + '"'],
    ],
)
def test_format_call_matches_formatting_the_whole_call(args):
    expression = f"nn.Module({', '.join(args)})"
    assert format_call("nn.Module", args, "    ", "y = ") == reference(expression, "    ", "y = ")
    assert format_call("f()", args) == reference(f"f()({', '.join(args)})")


def test_one_line_statements_never_rescan_the_whole_expression(monkeypatch):
    """train.py for 2,000 layers, each with an activation (one LAYER_ACTIVATIONS entry per
    layer), splits its long statements without the quadratic helper and without parsing a
    whole statement again."""

    def refuse(*args, **kwargs):
        raise AssertionError("ast.get_source_segment rescans the expression per node")

    spec = compile_model(many_layers(2000)).spec
    parse = ast.parse

    def parse_small(text, *args, **kwargs):
        assert len(text) < 20_000, "a whole long statement is parsed again"
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(ast, "get_source_segment", refuse)
    monkeypatch.setattr(ast, "parse", parse_small)
    script = pytorch_training.generate_training_script(spec)
    assert script.count('="relu",\n') + script.count('="gelu",\n') == 1999
