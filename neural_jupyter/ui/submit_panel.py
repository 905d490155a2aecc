"""The submission panel: pick a platform and instance, see the price, check credentials,
submit — then the panel turns into the live JobMonitor. A text fallback lists the same
choices with the command to run.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neural_jupyter.backends import available, require_platform
from neural_jupyter.errors import MissingDependencyError, NeuralError
from neural_jupyter.pricing import instance_types


@dataclass(frozen=True)
class PlatformChoice:
    name: str
    installed: bool
    install_hint: str | None

    @property
    def label(self) -> str:
        return self.name if self.installed else f"{self.name} (needs: {self.install_hint})"


def platform_choices(include_local: bool = False) -> list[PlatformChoice]:
    """Platforms, available ones first (this machine first of all when ``include_local``);
    missing extras named with their pip command."""
    choices = []
    for name in available():
        if name == "local":
            continue
        try:
            require_platform(name)
        except MissingDependencyError as missing:
            choices.append(PlatformChoice(name, False, missing.hint))
        else:
            choices.append(PlatformChoice(name, True, None))
    ordered = sorted(choices, key=lambda c: (not c.installed, c.name))
    return ([PlatformChoice("local", True, None)] if include_local else []) + ordered


def accelerators(offer: Any) -> str:
    """``1×A10G`` for a GPU instance, ``CPU`` for one without (not ``0×CPU``)."""
    return f"{offer.gpus}×{offer.gpu_type}" if offer.gpus else "CPU"


def text_panel(model_name: str) -> str:
    """What the panel offers, as text (terminals, nbconvert)."""
    lines = [f"Submit {model_name}: choose a platform with --platform NAME", ""]
    for choice in platform_choices():
        lines.append(f"  {choice.label}")
        for offer in instance_types(choice.name)[:6]:
            lines.append(
                f"      {offer.instance_type:<32} {accelerators(offer):<9} "
                f"${offer.hourly_usd:.3f}/h"
            )
    lines += [
        "",
        f"e.g. %neural_submit {model_name} --platform sagemaker --instance "
        "ml.g5.xlarge --max-hours 2 --dry-run",
    ]
    return "\n".join(lines)


def _platform_label(choice: PlatformChoice) -> str:
    return "local (this machine)" if choice.name == "local" else choice.label


class SubmitPanel:
    """The widget. ``submit`` is called with keyword arguments for ``api.submit`` and returns
    the started job; the panel then shows its monitor."""

    def __init__(
        self, model_name: str, submit: Callable[..., Any], show_monitor: Callable[[Any], Any]
    ) -> None:
        import ipywidgets as w

        self.model_name = model_name
        self._submit = submit
        self._show_monitor = show_monitor
        self.job = None
        choices = platform_choices(include_local=True)

        def label() -> dict[str, Any]:
            """Labels in full (a label column as wide as the longest), and a layout of
            each control's own (a shared one would hide them all together)."""
            return {"style": {"description_width": "90px"}, "layout": w.Layout(width="460px")}

        self.platform = w.Dropdown(
            options=[(_platform_label(c), c.name) for c in choices],
            value="local",  # this machine until the user picks a platform
            description="platform",
            **label(),
        )
        self.instance = w.Dropdown(description="instance", **label())
        self.host = w.Text(
            description="host",
            placeholder="ssh alias or user@host:port",
            **label(),
        )
        self.gpus = w.BoundedIntText(value=1, min=0, max=16, description="GPUs", **label())
        self._instance_shown: str | None = None
        self.max_hours = w.BoundedFloatText(
            value=1.0,
            min=0.05,
            max=72,
            step=0.5,
            description="max hours",
            **label(),
        )
        self.spot = w.Checkbox(value=False, description="spot / preemptible capacity", indent=False)
        self.cost = w.HTML()
        self.message = w.HTML()
        self.check_button = w.Button(
            description="Check credentials", icon="key", layout=w.Layout(width="auto")
        )
        self.submit_button = w.Button(
            description="Submit",
            button_style="primary",
            icon="cloud-upload",
            layout=w.Layout(width="auto"),
        )
        self.check_button.on_click(self.check_credentials)
        self.submit_button.on_click(self.on_submit)
        for control in (self.platform, self.instance, self.max_hours, self.spot, self.gpus):
            control.observe(self.refresh, names="value")
        self.form = w.VBox(
            [
                w.HTML(f"<b>Submit {html.escape(model_name)}</b>"),
                self.platform,
                self.instance,
                self.host,
                self.gpus,
                self.max_hours,
                self.spot,
                self.cost,
                w.HBox([self.check_button, self.submit_button]),
                self.message,
            ]
        )
        self.widget = w.VBox([self.form])
        self.widget.add_class("neural-submit-panel")
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def refresh(self, _change: Any = None) -> None:
        platform = self.platform.value
        offers = instance_types(platform) if platform else []
        options = [
            (
                f"{o.instance_type} — {accelerators(o)} — ${o.price(self.spot.value):.3f}/h",
                o.instance_type,
            )
            for o in offers
        ]
        values = [value for _, value in options]
        if values != [value for _, value in self.instance.options]:
            current = self.instance.value
            self.instance.options = options
            # ipywidgets leaves a new option list unselected: pick the first (cheapest)
            self.instance.value = current if current in values else (values[0] if values else None)
        chosen = next((o for o in offers if o.instance_type == self.instance.value), None)
        if chosen is not None and self.instance.value != self._instance_shown:
            # A listed instance has a fixed number of GPUs: show that, 0 for a CPU one.
            self._instance_shown = self.instance.value
            self.gpus.value = chosen.gpus
        self.instance.layout.display = "" if options else "none"
        self.host.layout.display = "" if platform == "ssh" else "none"
        remote = platform not in (None, "local")
        for control in (self.gpus, self.max_hours, self.spot, self.check_button):
            control.layout.display = "" if remote else "none"
        self.cost.value = self._cost_text()

    def _cost_text(self) -> str:
        from neural_jupyter.pricing import estimate

        if self.platform.value == "local":
            return "<i>trains on this machine: no platform charge</i>"
        if not self.instance.value:
            return (
                "<i>no instance types listed for this platform: it runs on the compute you "
                "configure (see its page in docs/platforms), with no list price here</i>"
            )
        try:
            cost = estimate(
                self.platform.value, self.instance.value, self.max_hours.value, spot=self.spot.value
            )
        except NeuralError as exc:
            return html.escape(str(exc))
        note = f" — {html.escape(cost.note)}" if cost.note else ""
        return (
            f"estimated at most <b>${cost.total_usd:.2f}</b> "
            f"(${cost.hourly_usd:.3f}/h × {cost.hours:g} h, prices of {cost.date}){note}"
        )

    def arguments(self) -> dict[str, Any]:
        extra = {"host": self.host.value} if self.platform.value == "ssh" else {}
        if self.platform.value == "local":
            return {"platform": "local"}
        return {
            "platform": self.platform.value,
            "instance": self.instance.value or None,
            "gpus": self.gpus.value,
            "max_hours": self.max_hours.value,
            "spot": self.spot.value,
            "extra": extra,
        }

    def check_credentials(self, _button: Any = None) -> None:
        from neural_jupyter.backends import get_backend

        try:
            get_backend(self.platform.value).check_credentials()
        except NeuralError as exc:
            self.message.value = f"<span style='color:#d62728'>{html.escape(str(exc))}</span>"
        else:
            self.message.value = "<span style='color:#2ca02c'>credentials look usable</span>"

    def on_submit(self, _button: Any = None) -> None:
        self.submit_button.disabled = True
        try:
            self.job = self._submit(**self.arguments())
        except NeuralError as exc:
            self.message.value = f"<span style='color:#d62728'>{html.escape(str(exc))}</span>"
            self.submit_button.disabled = False
            return
        monitor = self._show_monitor(self.job)
        self.widget.children = [monitor.widget] if monitor is not None else []
