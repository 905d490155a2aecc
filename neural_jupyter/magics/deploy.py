"""Magics for serving trained models: ``%neural_deploy``, ``%neural_endpoints``,
``%neural_undeploy``. Thin: parse, call ``neural_jupyter.deploy``, display.

    %config DeployMagics.confirm_cost_above = 10    # dollars per day before --yes is needed
    %config DeployMagics.idle_hours = 12            # flag endpoints unused this long
    %config DeployMagics.max_age_hours = 48         # flag endpoints older than this
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Float, validate

from neural_jupyter.magics.arguments import (
    as_argument,
    key_value,
    parse_arguments,
    settings_argument,
)
from neural_jupyter.magics.base import ConfigurableMagics, non_negative


@magics_class
class DeployMagics(ConfigurableMagics):
    """``%neural_deploy``, ``%neural_endpoints``, ``%neural_undeploy``."""

    confirm_cost_above = Float(
        5.0,
        config=True,
        help="%neural_deploy asks for --yes when an endpoint's price per day (or per "
        "--max-hours, if shorter) is above this many US dollars, or unknown.",
    )
    idle_hours = Float(
        24.0,
        config=True,
        help="%neural_endpoints flags a live endpoint that answered no prediction from this "
        "machine for this many hours.",
    )
    max_age_hours = Float(
        72.0,
        config=True,
        help="%neural_endpoints flags a live endpoint older than this many hours.",
    )

    @validate("confirm_cost_above", "idle_hours", "max_age_hours")
    def _non_negative(self, proposal: Any) -> float:
        return non_negative("DeployMagics", proposal)

    @magic_arguments()
    @argument("run", help="What to serve: a TrainingRun variable, a job id or a model file.")
    @argument("--platform", default="local", help="Where (default: local, this kernel).")
    @argument("--instance", help="Instance type, e.g. ml.m5.large.")
    @argument("--replicas", type=int, default=1, help="Instances behind the endpoint.")
    @argument("--name", help="Endpoint name (default: the model's name and digest).")
    @argument("--max-hours", type=float, help="Delete the endpoint after this many hours.")
    @settings_argument("e.g. --set role=arn:aws:iam::1:role/SM.")
    @argument("--dry-run", action="store_true", help="Show the requests and price; send nothing.")
    @argument("--yes", action="store_true", help="Confirm an endpoint above the cost threshold.")
    @argument("--no-wait", action="store_true", help="Return before it is in service.")
    @as_argument("Store the Endpoint in this variable.")
    @line_magic
    def neural_deploy(self, line: str) -> Any:
        """Serve a trained model as an endpoint; returns the ``Endpoint`` (``.predict(x)``)."""
        from neural_jupyter.deploy import deploy

        args = parse_arguments(self.neural_deploy, line)
        result = deploy(
            self._source(args.run),
            platform=args.platform,
            instance=args.instance,
            replicas=args.replicas,
            name=args.name,
            max_hours=args.max_hours,
            extra=dict(key_value(item) for item in args.settings),
            dry_run=args.dry_run,
            yes=args.yes,
            wait=not args.no_wait,
            confirm_above=self.confirm_cost_above,
        )
        if args.as_name:
            if not args.as_name.isidentifier():
                raise UsageError(f"--as needs a Python identifier, got {args.as_name!r}")
            self.shell.user_ns[args.as_name] = result
        return result

    @magic_arguments()
    @argument("--all", action="store_true", help="Include deleted endpoints.")
    @argument("--refresh", action="store_true", help="Ask each platform for its state now.")
    @line_magic
    def neural_endpoints(self, line: str) -> Any:
        """Every endpoint this machine deployed, on every platform: state, age, price, cost
        so far; idle or old ones are flagged."""
        from neural_jupyter.deploy import endpoints

        args = parse_arguments(self.neural_endpoints, line)
        return EndpointTable(
            [e.row() for e in endpoints(include_deleted=args.all, refresh=args.refresh)],
            idle_hours=self.idle_hours,
            max_age_hours=self.max_age_hours,
        )

    @magic_arguments()
    @argument("name", help="The endpoint's name or id (%%neural_endpoints lists them).")
    @line_magic
    def neural_undeploy(self, line: str) -> None:
        """Delete an endpoint on its platform (and everything made for it)."""
        from neural_jupyter.deploy import undeploy

        args = parse_arguments(self.neural_undeploy, line)
        endpoint = undeploy(args.name)
        print(f"endpoint {endpoint.name} on {endpoint.record.platform} deleted")

    def _source(self, text: str) -> Any:
        value = self.shell.user_ns.get(text) if text.isidentifier() else None
        return value if value is not None else text


class EndpointTable:
    """The rows of ``%neural_endpoints`` with their flags; text and HTML."""

    COLUMNS = ("name", "platform", "status", "model", "instance", "age", "$/h", "cost", "flags")

    def __init__(self, rows: list[dict[str, Any]], idle_hours: float, max_age_hours: float):
        self.rows = rows
        for row in rows:
            row["flags"] = flags(row, idle_hours, max_age_hours)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def cells(self) -> list[list[str]]:
        return [
            [
                row["name"],
                row["platform"],
                row["status"],
                row["model"] or "-",
                row["instance"],
                _hours(row["age_hours"]),
                "-" if row["hourly_usd"] is None else f"{row['hourly_usd']:.3f}",
                "-" if row["cost_usd"] is None else f"{row['cost_usd']:.2f}",
                ", ".join(row["flags"]),
            ]
            for row in self.rows
        ]

    def __str__(self) -> str:
        if not self.rows:
            return "no endpoints (neural_jupyter.deploy(run) serves a trained model)"
        cells = [list(self.COLUMNS), *self.cells()]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                 for line in cells]  # fmt: skip
        total = sum(row["hourly_usd"] or 0 for row in self.rows if row["age_hours"] is not None)
        lines.append(f"live endpoints bill ${total:.3f}/h together (known prices)")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in line) + "</tr>"
            for line in self.cells()
        )
        return f"<table class='neural-endpoints'><tr>{head}</tr>{body}</table>"


def flags(row: dict[str, Any], idle_hours: float, max_age_hours: float) -> list[str]:
    """Why a live endpoint deserves a look: idle, old, failed, of unknown price."""
    if row["age_hours"] is None:
        return []
    found = []
    if row["idle_hours"] >= idle_hours:
        found.append(f"idle {_hours(row['idle_hours'])}")
    if row["age_hours"] >= max_age_hours:
        found.append(f"older than {max_age_hours:g} h")
    if row["status"] in ("FAILED", "UNKNOWN"):
        found.append(row["status"].lower())
    if row["hourly_usd"] is None and row["platform"] != "local":
        found.append("price unknown")
    return found


def _hours(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 60:.0f} min"
    if value < 48:
        return f"{value:.1f} h"
    return f"{value / 24:.1f} d"


def now() -> datetime:
    return datetime.now(timezone.utc)
