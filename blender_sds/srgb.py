"""sRGB <-> linear light (IEC 61966-2-1): the one definition of the curve and its constants.

Standard library only, so both halves and the ground-truth scene can share it. The curve
is written once over three operations, so floats (here) and arrays (engine/scene/colour.py,
numpy and torch) compute it with the same formula: `where(cond, a, b)` picks elementwise,
`floor(x, lo)` is max(x, lo) (it keeps the unused power branch finite, so no NaN gradients).
Inputs are taken as already clamped to [0, 1]; the float forms below clamp first.
"""
from __future__ import annotations

SRGB_KNEE = 0.04045  # where the encoded curve leaves its linear toe
LINEAR_KNEE = 0.0031308  # the same point in linear light
TOE_SLOPE = 12.92
OFFSET = 0.055
GAMMA = 2.4


def _pick(cond, a, b):
    return a if cond else b


def decode(x, where=_pick, floor=max):
    """sRGB-encoded -> linear, for x in [0, 1]."""
    power = ((floor(x, SRGB_KNEE) + OFFSET) / (1.0 + OFFSET)) ** GAMMA
    return where(x <= SRGB_KNEE, x / TOE_SLOPE, power)


def encode(x, where=_pick, floor=max):
    """Linear -> sRGB-encoded, for x in [0, 1]."""
    power = (1.0 + OFFSET) * floor(x, LINEAR_KNEE) ** (1.0 / GAMMA) - OFFSET
    return where(x <= LINEAR_KNEE, x * TOE_SLOPE, power)


def srgb_to_linear(value: float) -> float:
    """One sRGB-encoded number (clamped to [0, 1]) in linear light."""
    return decode(min(max(float(value), 0.0), 1.0))


def linear_to_srgb(value: float) -> float:
    """One linear number (clamped to [0, 1]) sRGB-encoded."""
    return encode(min(max(float(value), 0.0), 1.0))
