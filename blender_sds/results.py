"""The files of a result folder, by name: what the engine writes, the add-on imports and a
remote worker sends back (standard library only).

One list for all of them, so no side can look for a file under a name the other no longer uses,
and one reader (`read_status`) of what a folder holds, so no side takes a killed run for a result.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MESH_FILE = "mesh.npz"  # vertices, faces, linear vertex colours: what Import Result reads
PREVIEW_FILE = "preview.png"  # front and back side by side, each view PREVIEW_SIZES px square
PREVIEW_SIZES = (64, 128)  # twice the judged renders' size, within these (engine/train/run.py)
CHECKPOINT_FILE = "checkpoint.pt"  # what Refine and init.resume continue from
LOG_FILE = "log.jsonl"  # the run's events, one JSON object a line
JOB_FILE = "job.json"  # the normalised job, with the paths of the side that wrote it
STATUS_FILE = "status.json"
WORKER_LOG = "worker.log"  # the add-on's copy of what the worker said on stderr
BATCH_SUMMARY = "summary.json"  # beside a batch's job folders: what `batch` wrote, what Import Result reads

# What a remote worker sends back of a finished run, and all the add-on accepts. job.json is
# not among them: its paths are the worker's; the add-on writes its own.
RESULT_FILES = (MESH_FILE, PREVIEW_FILE, CHECKPOINT_FILE, LOG_FILE, STATUS_FILE)

# -- reading a result folder ----------------------------------------------------------------------
# A file being written is `.NAME.tmp-PID` beside NAME until it is moved into place
# (engine/train/artifacts.write_atomic); a SIGKILL can leave one behind.
TEMP_MARK = ".tmp-"
INTERRUPTED = "interrupted"  # what read_status says of a run that died without saying so


def temp_path(path) -> Path:
    """Where this process writes `path` before moving it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def temp_files(folder) -> list[Path]:
    """The `.NAME.tmp-PID` files in `folder`: files a run began and never moved into place."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [Path(folder) / n for n in names
            if n.startswith(".") and TEMP_MARK in n and n.rpartition(TEMP_MARK)[2].isdigit()]


def finished_files(folder) -> list[str]:
    """The names of the files in `folder` that were moved into place (no half-written temp files)."""
    try:
        leftovers = {p.name for p in temp_files(folder)}
        return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name not in leftovers)
    except OSError:
        return []


def pid_alive(pid) -> bool:
    """Whether process `pid` exists on THIS machine. A status.json is only judged by the machine
    that ran it (a remote worker's comes back complete or not at all); a reused pid reads as alive."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def read_status(folder) -> dict:
    """What a result folder holds: status.json's fields, with `state` judged against the folder.

    `state` is one of running, complete, cancelled, failed (as the run wrote it), `interrupted`
    (with a `message`: the run died without saying so: `running` from a pid no longer alive,
    `complete` without mesh.npz, an unreadable status.json, or none beside a dead run's temp
    file) or `none` (no run has written here). Only `complete` is a finished result: a mesh.npz
    beside any other state is not one (the engine writes status complete, then moves mesh.npz
    into place; an older engine or a half-received remote result can leave it otherwise).
    """
    folder = Path(folder)
    try:
        status = json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:  # a run's first write is its status: only its temp file can be here
        pids = [int(p.name.rpartition(TEMP_MARK)[2]) for p in temp_files(folder)]
        alive = [pid for pid in pids if pid_alive(pid)]
        if alive:
            return {"state": "running", "pid": alive[0]}
        if pids:
            return {"state": INTERRUPTED, "message": f"no {STATUS_FILE}: the run stopped as it began"}
        return {"state": "none"}
    except (OSError, ValueError) as exc:
        return {"state": INTERRUPTED, "message": f"{STATUS_FILE} cannot be read ({exc})"}
    if not isinstance(status, dict):
        return {"state": INTERRUPTED, "message": f"{STATUS_FILE} holds no status object"}
    state, pid = status.get("state"), status.get("pid")
    if state == "running" and not pid_alive(pid):
        return {**status, "state": INTERRUPTED,
                "message": f"the run (pid {pid}) ended without saying so: it was killed or its machine stopped"}
    if state == "complete" and not (folder / MESH_FILE).is_file():
        return {**status, "state": INTERRUPTED,
                "message": f"{MESH_FILE} is missing: the run stopped before moving it into place, or it was removed"}
    return status
