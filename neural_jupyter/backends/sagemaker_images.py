"""Which of AWS's PyTorch training images (Deep Learning Containers) a SageMaker job gets:
the version from ``image_tables/sagemaker.json`` (the newest AWS still patches), the registry
of the job's region and the GPU or CPU build for its instance family. An image can always be
chosen by hand with the ``image`` extra (``--set image=...``).
"""

from __future__ import annotations

import re

from neural_jupyter.backends.images import Image, table
from neural_jupyter.errors import ConfigurationError

_INSTANCE = re.compile(r"^ml\.([a-z][a-z0-9-]*)\.([a-z0-9]+)$")


def _facts() -> dict:
    return table("sagemaker").extra


def instance_family(instance_type: str) -> str:
    """``ml.g5.xlarge`` -> ``g5``; raises for names that are not SageMaker instance types."""
    match = _INSTANCE.match(instance_type)
    if not match:
        hint = (
            f"did you mean 'ml.{instance_type}'?"
            if _INSTANCE.match(f"ml.{instance_type}")
            else None
        )
        raise ConfigurationError(
            f"'{instance_type}' is not a SageMaker instance type (they look like ml.g5.xlarge)",
            hint=hint or "see docs/platforms/sagemaker.md for the common ones",
        )
    return match.group(1)


def is_gpu_instance(instance_type: str) -> bool:
    return instance_family(instance_type) in _facts()["gpu_families"]


def registry(region: str) -> str:
    """The ECR registry host holding the Deep Learning Containers in ``region``."""
    facts = _facts()
    account = facts["region_accounts"].get(region, facts["default_account"])
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}"


def training_image(region: str, instance_type: str, image: Image | None = None) -> str:
    """The PyTorch training image URI for ``instance_type`` in ``region``."""
    facts = _facts()
    family = instance_family(instance_type)
    image = image or table("sagemaker").default()
    custom = "give your own image with --set image=<ECR URI>"
    if family in facts["unsupported_families"]:
        raise ConfigurationError(
            f"{instance_type} ({facts['unsupported_families'][family]}) needs a Neuron or Arm "
            "image; the prebuilt CUDA/x86 PyTorch images do not run on it",
            hint=f"pick an ml.g*/ml.p* (GPU) or ml.m*/ml.c* (CPU) instance, or {custom}",
        )
    if family in facts["gpu_families"]:
        if family in facts["pre_turing_families"] and image.cuda_key >= (13,):
            raise ConfigurationError(
                f"{instance_type} has V100 GPUs, which CUDA {image.cuda} (PyTorch "
                f"{image.framework_version}'s image) no longer supports",
                hint=f"pick a g4dn/g5/g6/p4d/p5 instance, or {custom}",
            )
        tag = image["gpu"]
    else:
        tag = image["cpu"]
    return f"{registry(region)}/{facts['repository']}:{tag}"
