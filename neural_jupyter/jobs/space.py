"""Search spaces: the model's ``HPO(...)`` nodes plus ``--grid key=v1,v2`` overrides, and the
strategies that pick configurations from them (grid, random; Optuna lives in ``optuna.py``)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neural_jupyter.dsl.ir import HPO
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError

# run settings a grid may vary besides the model's HPO(...) values
SETTING_KEYS = ("epochs", "batch_size")


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # choice | range | log_range
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    integer: bool = False
    # a choice among search spaces (Neural DSL nests them: choice(HPO(range(...)), 512));
    # the literal options stay in ``values``
    parts: tuple[Dimension, ...] = ()

    @property
    def options(self) -> int:
        return len(self.values) + len(self.parts)

    def grid(self) -> tuple[Any, ...]:
        if self.kind == "choice":
            values = list(self.values)
            for part in self.parts:
                values += [v for v in part.grid() if v not in values]
            return tuple(values)
        if self.step is None:
            raise ConfigurationError(
                f"grid search needs discrete values for '{self.name}' ({self.kind} has no step)",
                hint=f"give range(..., step=...) or --grid {self.name}=v1,v2,...",
            )
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(count)]
        return tuple(round(v) if self.integer else round(v, 12) for v in values)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            pick = rng.randrange(self.options)  # every option, nested or not, equally likely
            if pick < len(self.values):
                return self.values[pick]
            return self.parts[pick - len(self.values)].sample(rng)
        if self.kind == "log_range":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        elif self.step is not None:
            value = self.low + self.step * rng.randint(0, int((self.high - self.low) / self.step))
        else:
            value = rng.uniform(self.low, self.high)
        return round(value) if self.integer else value


def _dimension(name: str, node: HPO) -> Dimension:
    integer = node.kind != "choice" and all(
        isinstance(v, int) for v in (node.low, node.high, node.step) if v is not None
    )
    values = tuple(v for v in node.options if not isinstance(v, HPO))
    parts = tuple(
        _dimension(f"{name}:{index}", v)
        for index, v in enumerate(node.options)
        if isinstance(v, HPO)
    )
    return Dimension(name, node.kind, values, node.low, node.high, node.step, integer, parts)


def parse_grid(items: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``["units=64,128", "epochs=3"]`` → ``{"units": (64, 128), "epochs": (3,)}``."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigurationError(f"--grid takes KEY=V1,V2,..., got {item!r}")
        grid[key.strip()] = tuple(_literal(v.strip()) for v in values.split(","))
    return grid


def _literal(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text.strip("'\"")


class SearchSpace:
    """Named dimensions: the model's HPO nodes, overridden or extended by a grid."""

    def __init__(self, hpo: Mapping[str, HPO], grid: Mapping[str, Sequence[Any]] | None = None):
        self.dimensions: dict[str, Dimension] = {
            name: _dimension(name, node) for name, node in hpo.items()
        }
        for name, values in (grid or {}).items():
            if name not in self.dimensions and name not in SETTING_KEYS:
                known = [*self.dimensions, *SETTING_KEYS]
                raise ConfigurationError(
                    f"--grid names '{name}', which is neither a hyper-parameter of the model "
                    "nor a run setting",
                    hint=did_you_mean(name, known) or "known: " + ", ".join(known),
                )
            self.dimensions[name] = Dimension(name, "choice", tuple(values))

    def __len__(self) -> int:
        return len(self.dimensions)

    def grid(self) -> Iterator[dict[str, Any]]:
        names = list(self.dimensions)
        for values in itertools.product(*(self.dimensions[n].grid() for n in names)):
            yield dict(zip(names, values, strict=True))

    def grid_size(self) -> int:
        return math.prod(len(d.grid()) for d in self.dimensions.values()) if self else 1

    def random(self, count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        """``count`` random configurations, reproducible for a seed (duplicates skipped)."""
        rng = random.Random(seed)
        seen: set[str] = set()
        attempts = 0
        while len(seen) < count and attempts < count * 50:
            attempts += 1
            config = {name: dim.sample(rng) for name, dim in self.dimensions.items()}
            key = repr(sorted(config.items()))
            if key not in seen:
                seen.add(key)
                yield config
