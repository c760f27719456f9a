"""Writing a run's files so that a crash never leaves a half file that looks whole.

Every file is written beside its final name and moved into place with os.replace, which
is atomic on POSIX and Windows. `mesh.npz` is written last: its presence is what marks a
result folder complete.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CHECKPOINT_FORMAT = "blender-sds-checkpoint"
CHECKPOINT_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_mesh(path: Path, mesh: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, vertices=np.ascontiguousarray(mesh["vertices"], dtype=np.float32),
             faces=np.ascontiguousarray(mesh["faces"], dtype=np.int32),
             colors=np.ascontiguousarray(mesh["colors"], dtype=np.float32))
    write_atomic(path, buf.getvalue())


def save_png(path: Path, image: np.ndarray) -> None:
    """image: (H,W,3|4) floats in [0,1] (sRGB)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def save_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state, loaded without unpickling code (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"init.checkpoint: file not found: {path}") from None
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise ValueError(f"init.checkpoint: {path} is not a readable blender-sds checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"init.checkpoint: {path} is not a blender-sds checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"init.checkpoint: {path} has checkpoint version {state.get('version')}; "
                         f"this engine reads version {CHECKPOINT_VERSION}")
    return state
