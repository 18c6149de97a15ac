"""Models: the TransMed family and MONAI peers behind one registry."""

from transmed.models.base import SegmentationModel
from transmed.models.precision import PRECISIONS, autocast
from transmed.models.registry import (
    create_model,
    create_model_from_config,
    list_models,
    model_kwargs,
    pinned_kwargs,
    register_model,
    stored_kwargs,
)

__all__ = [
    "PRECISIONS",
    "SegmentationModel",
    "autocast",
    "create_model",
    "create_model_from_config",
    "list_models",
    "model_kwargs",
    "pinned_kwargs",
    "register_model",
    "stored_kwargs",
]
