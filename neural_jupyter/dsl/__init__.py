"""The model language: grammar, parse-level IR, layer registry, validation and shapes.

Imports nothing heavier than lark: no torch, IPython or widgets.
"""

from neural_jupyter.dsl.analyzer import analyze
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.dsl.parser import parse
from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec

__all__ = ["LAYERS", "LayerSpec", "NetworkSpec", "analyze", "parse"]
