"""Serving trained models: ``neural_jupyter.deploy(run)`` → an ``Endpoint`` (docs/deploy.md).

One module per platform holds only its wire format (``local``, ``sagemaker``, ``vertex``,
``azureml``, ``databricks``); ``lifecycle`` is the shared part (idempotency, the job-store
record, the cost guard, waiting, ``max_hours``); ``package`` builds what each platform serves.

The module is callable: ``neural_jupyter.deploy(run, platform="local")`` is
``neural_jupyter.deploy.deploy(...)``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from neural_jupyter.deploy.endpoint import Endpoint
from neural_jupyter.deploy.lifecycle import (
    COST_CONFIRM_THRESHOLD,
    DeployPlan,
    MaxHoursWarning,
    deploy,
    endpoints,
    get,
    housekeeping,
    undeploy,
)

__all__ = [
    "COST_CONFIRM_THRESHOLD",
    "DeployPlan",
    "Endpoint",
    "MaxHoursWarning",
    "deploy",
    "endpoints",
    "get",
    "housekeeping",
    "undeploy",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return deploy(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
