"""sRGB <-> linear for arrays: the one place the engine changes colour encoding.

Renders and the diffusion model live in sRGB [0,1]; Blender's FLOAT_COLOR attribute stores
linear values, so every colour written onto a mesh passes through `srgb_to_linear` here and
nowhere else. Both functions take numpy arrays (or anything numpy accepts) and torch tensors,
clamp the input to [0,1] and apply the curve of blender_sds/srgb.py (its one formula and
constants) with the array's own elementwise operations.
"""
from __future__ import annotations

import numpy as np
import torch

from ... import srgb


def srgb_to_linear(x):
    """sRGB-encoded values in [0,1] -> linear light (same type, float dtype kept)."""
    return _apply(srgb.decode, x)


def linear_to_srgb(x):
    """Linear light in [0,1] -> sRGB-encoded values (same type, float dtype kept)."""
    return _apply(srgb.encode, x)


def _apply(curve, x):
    if isinstance(x, torch.Tensor):
        x = x.float() if not x.is_floating_point() else x
        return curve(x.clamp(0.0, 1.0), where=torch.where, floor=torch.clamp_min)
    x = np.clip(_as_float_array(x), 0.0, 1.0)
    return curve(x, where=np.where, floor=np.maximum).astype(x.dtype, copy=False)


def _as_float_array(x) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    raise TypeError(f"colour values must be numbers, got an array of dtype {array.dtype}")
