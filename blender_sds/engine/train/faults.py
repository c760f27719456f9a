"""Faults on purpose, for tests of the real handling: `SDS_INJECT_FAULT="nan@3"` makes the
loss NaN from step 3 on, `"oom@2"` raises CUDA's out-of-memory error at step 2,
`"disk-full@checkpoint"` fails the next checkpoint write with ENOSPC. Unset (as for every
user), it costs one dictionary lookup per run.
"""
from __future__ import annotations

import errno
import os

import torch


def planned() -> tuple[str, str] | None:
    spec = os.environ.get("SDS_INJECT_FAULT", "")
    if "@" not in spec:
        return None
    kind, _, where = spec.partition("@")
    return kind, where


def at_step(step: int, loss: torch.Tensor) -> torch.Tensor:
    fault = planned()
    if fault is None or not fault[1].isdigit() or step < int(fault[1]):
        return loss
    if fault[0] == "nan":
        return loss * float("nan")
    if fault[0] == "oom" and step == int(fault[1]):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by SDS_INJECT_FAULT)")
    return loss


def at_write(what: str) -> None:
    fault = planned()
    if fault == ("disk-full", what):
        raise OSError(errno.ENOSPC, "No space left on device (injected by SDS_INJECT_FAULT)")
