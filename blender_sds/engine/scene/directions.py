"""Which way a camera looks, in four buckets: what view-dependent prompts and the teachers' data share.

Thresholds follow threestudio's defaults (front within 45 degrees of azimuth 0, back
within 45 degrees of 180, overhead above 60 degrees elevation), so results compare
with the research baselines, and a "back view" prompt and a teacher's back views mean
the same cameras.
"""
from __future__ import annotations

import torch

DIRECTIONS = ("side", "front", "back", "overhead")
FRONT_DEG = 45.0
BACK_DEG = 45.0
OVERHEAD_DEG = 60.0


def direction_index(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Index into DIRECTIONS for each camera (later rules win, as in threestudio)."""
    az = torch.remainder(azimuth + 180.0, 360.0) - 180.0  # wrap to [-180, 180)
    idx = torch.zeros_like(az, dtype=torch.long)
    idx = torch.where(az.abs() < FRONT_DEG, torch.ones_like(idx), idx)
    idx = torch.where(az.abs() > 180.0 - BACK_DEG, torch.full_like(idx, 2), idx)
    idx = torch.where(elevation > OVERHEAD_DEG, torch.full_like(idx, 3), idx)
    return idx
