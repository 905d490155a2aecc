"""AWS's prebuilt PyTorch training images (Deep Learning Containers) for SageMaker jobs.

One image per region and processor kind. The images live in ECR account ``763104351884`` in
most regions and in a region-local account in a few others; the table below follows AWS's
list of available images (github.com/aws/deep-learning-containers, ``available_images.md``)
and the SageMaker Python SDK's ``image_uri_config/pytorch.json``. An image can always be
chosen by hand with the ``image`` extra (``--extra image=...``).
"""

from __future__ import annotations

import re

from neural_jupyter.errors import ConfigurationError

PYTORCH_VERSION = "2.3.0"
PYTHON_TAG = "py311"
CUDA_TAG = "cu121"
OS_TAG = "ubuntu20.04"
REPOSITORY = "pytorch-training"

DEFAULT_ACCOUNT = "763104351884"
# Regions whose Deep Learning Containers live in another ECR account than the default one.
REGION_ACCOUNTS: dict[str, str] = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}

# Instance families with NVIDIA GPUs (CUDA images); everything else gets the CPU image.
GPU_FAMILIES = frozenset(
    {"p2", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6", "g4dn", "g5", "g6", "g6e"}
)
# AWS Trainium/Inferentia (Neuron SDK) and Graviton GPU families: the CUDA/x86 images do
# not run there.
UNSUPPORTED_FAMILIES = frozenset({"trn1", "trn1n", "trn2", "inf1", "inf2", "g5g"})

_INSTANCE = re.compile(r"^ml\.([a-z][a-z0-9-]*)\.([a-z0-9]+)$")


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
    return instance_family(instance_type) in GPU_FAMILIES


def registry(region: str) -> str:
    """The ECR registry host holding the Deep Learning Containers in ``region``."""
    account = REGION_ACCOUNTS.get(region, DEFAULT_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}"


def training_image(region: str, instance_type: str, version: str = PYTORCH_VERSION) -> str:
    """The PyTorch training image URI for ``instance_type`` in ``region``."""
    family = instance_family(instance_type)
    if family in UNSUPPORTED_FAMILIES:
        raise ConfigurationError(
            f"{instance_type} needs a Neuron or Arm image; the prebuilt CUDA PyTorch images "
            "do not run on it",
            hint="pick an ml.g*/ml.p* (GPU) or ml.m*/ml.c* (CPU) instance, or give your own "
            "image with extra image=<ECR URI>",
        )
    if family in GPU_FAMILIES:
        tag = f"{version}-gpu-{PYTHON_TAG}-{CUDA_TAG}-{OS_TAG}-sagemaker"
    else:
        tag = f"{version}-cpu-{PYTHON_TAG}-{OS_TAG}-sagemaker"
    return f"{registry(region)}/{REPOSITORY}:{tag}"
