"""Cost estimates from a data file of list prices (``prices.json``: platform, instance type,
GPUs, hourly price on demand and spot, region, the date and source of each price).

Prices change; every figure shows its date and source, and estimates are upper bounds for a
job's budget (``--max-hours``), not bills.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError


@dataclass(frozen=True)
class CostEstimate:
    """What a job may cost at most (its budget) and per hour; prices from ``prices.json``."""

    platform: str
    instance_type: str
    hourly_usd: float
    hours: float
    spot: bool = False
    currency: str = "USD"
    source: str = ""
    date: str = ""
    note: str = ""

    @property
    def total_usd(self) -> float:
        return self.hourly_usd * self.hours

    def times(self, count: int, unit: str = "machines") -> CostEstimate:
        """The cost of ``count`` of these machines at once (one job's nodes)."""
        if count <= 1:
            return self
        note = f"{count} {unit}; {self.note}".rstrip("; ")
        return replace(self, hourly_usd=self.hourly_usd * count, note=note)

    def __str__(self) -> str:
        kind = " (spot)" if self.spot else ""
        return (
            f"{self.instance_type}{kind} on {self.platform}: ${self.hourly_usd:.3f}/h × "
            f"{self.hours:g} h ≤ ${self.total_usd:.2f}"
            + (f" (prices of {self.date})" if self.date else "")
        )


@dataclass(frozen=True)
class Offer:
    platform: str
    instance_type: str
    gpus: int
    gpu_type: str | None
    hourly_usd: float
    spot_hourly_usd: float | None
    region: str
    date: str
    source: str
    note: str = ""

    def price(self, spot: bool) -> float:
        return self.spot_hourly_usd if spot and self.spot_hourly_usd else self.hourly_usd


@functools.cache
def offers() -> tuple[Offer, ...]:
    text = resources.files("neural_jupyter.pricing").joinpath("prices.json").read_text("utf-8")
    data = json.loads(text)
    return tuple(Offer(**entry) for entry in data["offers"])


def lookup(platform: str, instance_type: str) -> Offer | None:
    """The offer for ``instance_type`` on ``platform``, or None when no price is known."""
    return next(
        (o for o in offers() if o.platform == platform and o.instance_type == instance_type), None
    )


def find(platform: str, instance_type: str) -> Offer:
    matches = [o for o in offers() if o.platform == platform]
    for offer in matches:
        if offer.instance_type == instance_type:
            return offer
    raise ConfigurationError(
        f"no price known for instance '{instance_type}' on {platform}",
        hint=did_you_mean(instance_type, [o.instance_type for o in matches])
        or "known: " + ", ".join(o.instance_type for o in matches),
    )


def instance_types(platform: str) -> list[Offer]:
    return sorted((o for o in offers() if o.platform == platform), key=lambda o: o.hourly_usd)


def estimate(platform: str, instance_type: str, hours: float, spot: bool = False) -> CostEstimate:
    """The most ``hours`` on ``instance_type`` may cost (list price)."""
    offer = find(platform, instance_type)
    if spot and not offer.spot_hourly_usd:
        note = "no spot price known; on-demand price shown"
    else:
        note = offer.note
    return CostEstimate(
        platform,
        instance_type,
        offer.price(spot),
        hours,
        spot=spot,
        source=offer.source,
        date=offer.date,
        note=note,
    )


def estimate_cost(
    platform: str, instance_type: str, hours: float = 1.0, spot: bool = False
) -> CostEstimate:
    """Public API: ``neural_jupyter.estimate_cost("sagemaker", "ml.g5.xlarge", hours=2)``."""
    return estimate(platform, instance_type, hours, spot)


class PlatformComparison:
    """Offers across platforms for a GPU count, cheapest first; displays as a table."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __str__(self) -> str:
        width = max([len("instance"), *(len(r["instance_type"]) for r in self.rows)]) + 2
        lines = [
            f"{'platform':<12}{'instance':<{width}}{'gpus':>5}  {'gpu':<8}{'$/h':>9}{'total':>10}"
        ]
        for r in self.rows:
            lines.append(
                f"{r['platform']:<12}{r['instance_type']:<{width}}{r['gpus']:>5}  "
                f"{(r['gpu_type'] or '-'):<8}{r['hourly_usd']:>9.3f}{r['total_usd']:>10.2f}"
            )
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        import html

        head = "".join(
            f"<th>{h}</th>"
            for h in ("platform", "instance", "GPUs", "GPU", "$/h", "total", "prices of")
        )
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    r["platform"],
                    r["instance_type"],
                    r["gpus"],
                    r["gpu_type"] or "-",
                    f"{r['hourly_usd']:.3f}",
                    f"{r['total_usd']:.2f}",
                    r["date"],
                )
            )
            + "</tr>"
            for r in self.rows
        )
        return f"<table class='neural-prices'><tr>{head}</tr>{body}</table>"


def compare_platforms(
    gpus: int = 1, hours: float = 1.0, spot: bool = False, gpu_type: str | None = None
) -> PlatformComparison:
    """Every known offer with ``gpus`` GPUs (of ``gpu_type``), cheapest total first."""
    rows = []
    for offer in offers():
        if offer.gpus != gpus or (gpu_type and (offer.gpu_type or "").lower() != gpu_type.lower()):
            continue
        price = offer.price(spot)
        rows.append(
            {
                "platform": offer.platform,
                "instance_type": offer.instance_type,
                "gpus": offer.gpus,
                "gpu_type": offer.gpu_type,
                "hourly_usd": price,
                "total_usd": price * hours,
                "date": offer.date,
                "source": offer.source,
            }
        )
    rows.sort(key=lambda r: (r["total_usd"], r["platform"]))
    return PlatformComparison(rows)
