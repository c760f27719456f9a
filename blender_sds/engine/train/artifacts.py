"""Writing a run's files so that a crash never leaves a half file that looks whole.

Every file is written beside its final name (`.NAME.tmp-PID`, synced) and moved into place
with os.replace, which is atomic on POSIX and Windows. A SIGKILL can still leave such a temp
file; the next run in the folder removes them all at its start (run_job).

The end of a run is ordered so that mesh.npz is never beside a status that is not complete:
the mesh is written to its temp file, status.json is written `complete`, and only then is the
mesh moved into place. A kill between the last two leaves `complete` without mesh.npz, which
`results.read_status` reads as `interrupted`; a new run removes any old mesh.npz before its
first status. A folder is therefore a finished result only when status says complete AND
mesh.npz is there.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import faults
from ...results import temp_path

CHECKPOINT_FORMAT = "blender-sds-checkpoint"
CHECKPOINT_VERSION = 1


def write_atomic(path: Path, data: bytes, before_replace=None) -> None:
    """Write `data` to `path` whole or not at all; `before_replace()` runs once the data is
    safely in the temp file, before it takes the name. An OSError names `path` (a full disk's
    write error names no file), and the temp file is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            faults.at_write(path.name)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        faults.at_replace(path.name)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (None, str(tmp)):
            raise  # about another file (one before_replace wrote): it names that one
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def save_mesh(path: Path, mesh: dict, before_replace=None) -> None:
    """`before_replace`: run_job writes status complete there, so mesh.npz appears only after it."""
    buf = io.BytesIO()
    np.savez(buf, vertices=np.ascontiguousarray(mesh["vertices"], dtype=np.float32),
             faces=np.ascontiguousarray(mesh["faces"], dtype=np.int32),
             colors=np.ascontiguousarray(mesh["colors"], dtype=np.float32))
    write_atomic(path, buf.getvalue(), before_replace)


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
    """A checkpoint's state, loaded without unpickling code (weights_only).

    Torch's own text (warnings, coloured weights_only advice to unpickle the file anyway) never
    reaches the artist: the load runs with warnings silenced and each failure is one plain line.
    What is inside is checked against the job by `checkpoint_checks`, from `Run.restore`."""
    import pickle
    import warnings

    from .checkpoint_checks import describe, refuse
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise refuse(path, "", "file not found", "check the path") from None
    except OSError as exc:
        raise refuse(path, "", f"cannot be read ({exc.strerror or type(exc).__name__})", "check the path") from None
    except EOFError:
        raise refuse(path, "", "is not a readable blender-sds checkpoint (it ends early: empty or cut short)",
                     "use another checkpoint or start without init.checkpoint") from None
    except pickle.UnpicklingError as exc:  # weights_only met something other than tensors and plain values
        what = "holds Python objects, which are never unpickled" if "weights only" in str(exc).lower() else "is damaged"
        raise refuse(path, "", f"is not a readable blender-sds checkpoint (it {what})",
                     "use a checkpoint.pt written by blender-sds") from None
    except Exception:  # torch raises many kinds for a corrupt or foreign file; its text means nothing here
        raise refuse(path, "", "is not a readable blender-sds checkpoint (not a PyTorch file, or damaged)",
                     "use a checkpoint.pt written by blender-sds") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise refuse(path, "", "is not a blender-sds checkpoint (a PyTorch file without format "
                     f"{CHECKPOINT_FORMAT!r})", "use a checkpoint.pt written by blender-sds")
    if state.get("version") != CHECKPOINT_VERSION:
        raise refuse(path, "version", f"is {describe(state.get('version'))}; this engine reads version "
                     f"{CHECKPOINT_VERSION}", "use a checkpoint written by this version of blender-sds")
    return state
