"""Will a job's renders fit the device? Asked before the first step, which is the largest.

The occupancy grid starts with every cell occupied, so the first steps evaluate every point
of every ray through the bounds: render.resolution^2 x batch x samples points, each with its
hash-grid features, MLP activations and their gradients. Past the device's whole memory the
run cannot start; it is refused with the keys to lower rather than left to the allocator.
"""
from __future__ import annotations

import os

import torch

# Bytes per render point, forward and backward of a lit render: measured 700-750 on the CPU
# for the draft and high fields at 128 px (docs/PERFORMANCE.md), rounded up.
BYTES_PER_POINT = 1024


def render_bytes(job: dict) -> int:
    r = job["render"]
    return r["resolution"] ** 2 * r["batch"] * r["samples"] * BYTES_PER_POINT


def device_memory(device: torch.device) -> int | None:
    """The device's whole memory in bytes, or None where it cannot be told."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "mps":
            return torch.mps.recommended_max_memory()
        if device.type == "cpu":
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError, RuntimeError):
        pass
    return None


def check_render_fits(job: dict, device: torch.device) -> None:
    """ValueError naming the render keys when the first step's points cannot fit the device."""
    need, have = render_bytes(job), device_memory(device)
    if have is not None and need > have:
        r = job["render"]
        raise ValueError(f"render: {r['resolution']}^2 px x batch {r['batch']} x {r['samples']} samples needs "
                         f"about {need / 2**30:.1f} GiB a step, over the {have / 2**30:.1f} GiB of {device.type}; "
                         "lower render.resolution, render.batch or render.samples")
