"""Faults on purpose, for tests of the real handling. `SDS_INJECT_FAULT` holds one of:

- `nan@3`: the loss is NaN from step 3 on; `oom@2`: CUDA's out-of-memory error at step 2;
- `disk-full@WHAT`: ENOSPC at every write of WHAT: `checkpoint` (before the state is even
  gathered), a result file's name (`status.json`, `mesh.npz`, ...: its temp file is open and
  empty, as on a real full disk) or `*` (every write: a disk that is full from the start);
- `kill@NAME` or `kill@NAME#N`: SIGKILL this process at the Nth (default first) write of the
  result file NAME, when its temp file is whole and synced but not yet moved into place: the
  moment a crash leaves the most behind.

Unset (as for every user), it costs an environment lookup per step and two per write.
"""
from __future__ import annotations

import errno
import os
import signal

import torch

_replaces: dict[str, int] = {}  # writes of each file so far, for kill@NAME#N


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
    if fault is not None and fault[0] == "disk-full" and fault[1] in (what, "*"):
        raise OSError(errno.ENOSPC, "No space left on device (injected by SDS_INJECT_FAULT)")


def at_replace(name: str) -> None:
    fault = planned()
    if fault is None or fault[0] != "kill":
        return
    target, _, nth = fault[1].partition("#")
    if target == name:
        _replaces[name] = _replaces.get(name, 0) + 1
        if _replaces[name] == int(nth or 1):
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
