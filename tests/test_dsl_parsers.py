"""The hand-written fast parser reads exactly the language of the lark grammar: for any source,
``parse`` (fast parser, lark only for mistakes) gives the same IR, or the same error at the
same place, as the grammar alone; and correct programs never need lark at all."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neural_jupyter.dsl import fastparse
from neural_jupyter.dsl.parser import parse, parse_reference
from neural_jupyter.errors import DSLError
from tests.test_dsl_fuzz import SEEDS, mutated_program
from tests.test_neural_dsl_dialect import PROGRAMS


def outcome(read, source: str):
    try:
        return read(source, "<x>")
    except DSLError as err:
        return (type(err).__name__, err.line, err.column, err.message, err.hint)


def assert_same(source: str) -> None:
    fast = fastparse.parse(source, "<x>")
    reference = outcome(parse_reference, source)
    if fast is not None:
        assert fast == reference, source
    assert outcome(parse, source) == reference, source


CORRECT = [*SEEDS, *(p.source for p in PROGRAMS)]


@pytest.mark.parametrize("source", CORRECT)
def test_correct_programs_take_the_fast_path_and_match_the_grammar(source):
    program = fastparse.parse(source, "<x>")
    assert program is not None
    assert program == parse_reference(source, "<x>")


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_program())
def test_mutated_programs_read_the_same_by_both_parsers(source):
    assert_same(source)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("()[]{},;:=*@#/\"' \n-.1eNa_")), max_size=60))
def test_punctuation_soup_reads_the_same(source):
    assert_same("network N { input: (2,) layers: " + source)
    assert_same(source)


EDGE_CASES = [
    "network N { input: (2,) layers: Dense(2) * 3e5 }",  # lark lexes INT 3 then NAME e5
    "network N { input: (2,) layers: Dense(2) * 03 loss: 'mse' }",
    "network N { input: (2,) layers: Dense(2) * +3 }",
    "network N { input: (2,) layers: Dense(2), , Dense(3) }",
    "network N { input: (2,) layers: Dense(2,) Dense(units=2,) loss: 'mse' }",
    "network N { input: ((2)) layers: Dense((((2)))) loss: 'mse' }",
    "network N { input: (2,) layers: Dense(2) loss: 'mse' train { epochs: 1, } }",
    "network N { input: (2,) layers: Dense(2) loss: 'mse' execution { } }",
    "network N { input: (2,) layers: Dense(2) loss: 'mse' execute { batch_size: 3 } }",
    "network N { input: (2,) layers: Dense(2) @ 'cpu' @ 'cpu' }",
    "network N { input: (2,) layers: Dense(2) { } * 2 { } }",
    "network N { input: (2,) layers: Block Block() loss: 'mse' } define Block { Dense(2) }",
    "network N { input: (2,) layers: Flatten loss: 'mse' }",
    "network N { input: (2,) layers: Flatten",
    "network N { input: (2,) layers: Dense(2) } network M { input: (1,) layers: }",
    "network N { input: 5. layers: Dense(.5e1) loss: 'mse' }",
    "network N { input: (2,) layers: Dense(2, 'a\\r') }",
    'network N { input: (2,) layers: Dense(2, "\\x00") }',
    "network N { input: (2,) layers: Dense(2) loss: mse batch_size: 4 epochs: 2 }",
    "network N { input: (None, none, NONE, null) layers: Dense(2) }",
    "network N\f{\r input: (2,)\tlayers: Dense(2) loss: 'mse' }",
    "network N { input: (2,) layers: Dense(2) loss: 'mse' "
    "train { batch_size: 4 search_method: 'grid' } }",
    "network N { input: (2,) layers: Dense(input=2) }",
    "network N { input: (2,) layers: Dense(2 3) }",
    "network N { input: (2,) layers: Dense(２) }",  # a full-width digit is not a number
    "define A { } define A { }",
    "",
]


@pytest.mark.parametrize("source", EDGE_CASES)
def test_edge_cases_read_the_same(source):
    assert_same(source)


def test_correct_programs_do_not_import_lark():
    """A kernel that compiles only correct programs never imports lark or builds tables."""
    code = (
        "import sys\n"
        "from neural_jupyter.compiler import compile_model\n"
        f"compile_model({SEEDS[0]!r}).code\n"
        "assert 'lark' not in sys.modules, 'lark was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
