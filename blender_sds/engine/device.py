"""Which torch device a run uses: CUDA, then Apple MPS, then the CPU."""
from __future__ import annotations

import torch


def pick_device(preference: str | None = None) -> torch.device:
    if preference and preference != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {preference!r} asked for but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device: {preference!r} asked for but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def weight_dtype(option: str, device: torch.device) -> torch.dtype:
    """fp16 weights on CUDA unless told otherwise; fp32 elsewhere (CPU half is slow and lossy)."""
    if option == "float16":
        return torch.float16
    if option == "float32":
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.float32
