"""Atomic writes for the batch driver, standard library only.

The driver writes summary.json, the contact sheet, results that came back from a machine
without the output folder, and a lost job's failed status; a crash must leave each whole or
absent, as engine/train/artifacts.write_atomic does for a run. That one imports torch, which
the driver never needs (a rerun that skips every job starts in a fraction of a second).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...results import temp_path


def write_atomic(path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
