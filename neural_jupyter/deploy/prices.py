"""Hourly list prices of serving instances (``pricing/serving.json``): what an endpoint bills
per instance while it exists, whatever its traffic."""

from __future__ import annotations

import functools
import json
from importlib import resources

from neural_jupyter.pricing import CostEstimate, Offer


@functools.cache
def serving_offers() -> tuple[Offer, ...]:
    text = resources.files("neural_jupyter.pricing").joinpath("serving.json").read_text("utf-8")
    return tuple(Offer(**entry) for entry in json.loads(text)["offers"])


def hourly(platform: str, instance: str | None, replicas: int) -> CostEstimate | None:
    """The price per hour of ``replicas`` x ``instance`` (None when no price is known)."""
    offer = next(
        (o for o in serving_offers() if o.platform == platform and o.instance_type == instance),
        None,
    )
    if offer is None:
        return None
    return CostEstimate(
        platform,
        f"{replicas} x {instance}",
        offer.hourly_usd * replicas,
        1.0,
        source=offer.source,
        date=offer.date,
        note=offer.note,
    )
