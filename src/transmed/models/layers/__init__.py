"""Building blocks: 3D axial attention, 3D dynamic convolution, factories."""

from transmed.models.layers.axial_attention import (
    AxialAttentionBlock3d,
    AxialSelfAttention,
    RelativePositionBias1d,
)
from transmed.models.layers.dynamic_conv import (
    DynamicConv3d,
    set_dynamic_temperature,
    temperature_schedule,
)

__all__ = [
    "AxialAttentionBlock3d",
    "AxialSelfAttention",
    "DynamicConv3d",
    "RelativePositionBias1d",
    "set_dynamic_temperature",
    "temperature_schedule",
]
