"""sRGB <-> linear transfer functions: the one place the engine changes colour encoding.

Renders and the diffusion model live in sRGB [0,1]; Blender's FLOAT_COLOR attribute stores
linear values, so every colour written onto a mesh passes through `srgb_to_linear` here and
nowhere else. Both functions take numpy arrays (or anything numpy accepts) and torch tensors,
clamp the input to [0,1] and use the exact piecewise curve of IEC 61966-2-1.
"""
from __future__ import annotations

import numpy as np
import torch

# IEC 61966-2-1 constants: the linear toe and where it meets the power segment.
_SRGB_KNEE = 0.04045
_LINEAR_KNEE = 0.0031308
_TOE_SLOPE = 12.92
_A = 0.055
_GAMMA = 2.4


def srgb_to_linear(x):
    """sRGB-encoded values in [0,1] -> linear light (same type, float dtype kept)."""
    if isinstance(x, torch.Tensor):
        x = x.float() if not x.is_floating_point() else x
        x = x.clamp(0.0, 1.0)
        # Clamp inside the power branch too, so its unused half never makes NaN gradients.
        power = ((x.clamp_min(_SRGB_KNEE) + _A) / (1.0 + _A)) ** _GAMMA
        return torch.where(x <= _SRGB_KNEE, x / _TOE_SLOPE, power)
    x = np.clip(_as_float_array(x), 0.0, 1.0)
    power = ((np.maximum(x, _SRGB_KNEE) + _A) / (1.0 + _A)) ** _GAMMA
    return np.where(x <= _SRGB_KNEE, x / _TOE_SLOPE, power).astype(x.dtype, copy=False)


def linear_to_srgb(x):
    """Linear light in [0,1] -> sRGB-encoded values (same type, float dtype kept)."""
    if isinstance(x, torch.Tensor):
        x = x.float() if not x.is_floating_point() else x
        x = x.clamp(0.0, 1.0)
        power = (1.0 + _A) * x.clamp_min(_LINEAR_KNEE) ** (1.0 / _GAMMA) - _A
        return torch.where(x <= _LINEAR_KNEE, x * _TOE_SLOPE, power)
    x = np.clip(_as_float_array(x), 0.0, 1.0)
    power = (1.0 + _A) * np.maximum(x, _LINEAR_KNEE) ** (1.0 / _GAMMA) - _A
    return np.where(x <= _LINEAR_KNEE, x * _TOE_SLOPE, power).astype(x.dtype, copy=False)


def _as_float_array(x) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    raise TypeError(f"colour values must be numbers, got an array of dtype {array.dtype}")
