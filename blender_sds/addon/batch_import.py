"""A batch folder (`python -m blender_sds.engine batch`) -> one object per finished result, laid
out in a grid, so an artist picks from the variations by looking.

A batch folder holds `summary.json` and one ordinary result folder per job
(`<index>-<slug>-seed<N>/`). The summary is written as the batch goes and may be stale or
damaged, so it is not trusted: every result folder is judged by its own status
(`results.read_status`), with the rule Import Result applies to a single folder (complete, or
a mesh.npz beside no status at all). The summary only adds order and the jobs that never got a
folder. A folder without summary.json whose subfolders are results is taken as a batch too (a
batch copied without its summary, or folders gathered by hand), ordered by the number their
names start with.

Each result keeps its own coordinates' shape: it is moved (translation only, so Refine still
sees the frame it was made in) to the centre of a grid cell. The cells are as wide as the
largest result's footprint plus a margin, in rows of ceil(sqrt(n)) along +X, rows going -Y,
the first result left where it was made. All of it happens inside one operator call: one undo
step.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .. import json_gate
from ..results import BATCH_SUMMARY as SUMMARY_FILE
from ..results import JOB_FILE, LOG_FILE, MESH_FILE, STATUS_FILE, read_status
from . import importer, mesh_checks
from .errors import ArtistError

MAX_SUMMARY_BYTES = 16 * 2**20  # a summary of thousands of jobs is a few MB
MARGIN = 0.25  # the gap between neighbours, as a fraction of the largest footprint
MAX_NAME_BYTES = 59  # Blender's 63-byte names, less room for its ".001" on a repeated name
LISTED = 8  # skipped results named in the report; the rest are counted
_INDEX = re.compile(r"(\d+)")


@dataclass
class Entry:
    """One job of the batch: its folder (None when it never got one) and what the summary said."""
    name: str
    index: int | None
    path: str | None
    summary: dict = field(default_factory=dict)


@dataclass
class Imported:
    """What a batch import did: the objects in grid order, and the results it skipped with why."""
    directory: str
    objects: list = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""  # about summary.json, when it could not be read

    @property
    def total(self) -> int:
        return len(self.objects) + len(self.skipped)

    def report(self) -> str:
        """"SDS: imported 6 of 8 from DIR; 2 not complete: NAME (why), NAME (why)"."""
        text = f"SDS: imported {len(self.objects)} of {self.total} from {self.directory}"
        return text + (f"; {self.not_complete()}" if self.skipped else "") + (f" ({self.note})" if self.note else "")

    def not_complete(self) -> str:
        named = [f"{name} ({why})" for name, why in self.skipped[:LISTED]]
        more = len(self.skipped) - LISTED
        return f"{len(self.skipped)} not complete: " + ", ".join(named) + (f" and {more} more" if more > 0 else "")


def is_batch(directory: str) -> bool:
    """A batch folder: summary.json, or no result of its own but result folders inside."""
    if os.path.isfile(os.path.join(directory, SUMMARY_FILE)):
        return True
    if any(os.path.exists(os.path.join(directory, f)) for f in (MESH_FILE, STATUS_FILE)):
        return False
    return any(_is_result(os.path.join(directory, d)) for d in _subfolders(directory))


def entries(directory: str) -> tuple[list[Entry], str]:
    """The batch's jobs in order (summary index, else the number a folder's name starts with),
    and a note when summary.json could not be read."""
    jobs, note = _read_summary(directory)
    found: dict[str, Entry] = {}
    for job in jobs:
        folder = job.get("folder")
        if not isinstance(folder, str) or not _plain_name(folder) or folder in found:
            continue  # never follow a path out of the batch folder
        index = job.get("index")
        path = os.path.join(directory, folder)
        found[folder] = Entry(folder, index if isinstance(index, int) and not isinstance(index, bool) else None,
                              path if os.path.isdir(path) else None, job)
    for folder in _subfolders(directory):
        if folder not in found and _is_result(os.path.join(directory, folder)):
            match = _INDEX.match(folder)
            found[folder] = Entry(folder, int(match.group(1)) if match else None, os.path.join(directory, folder))
    ordered = sorted(found.values(), key=lambda e: (e.index is None, e.index or 0, e.name))
    return ordered, note


def import_batch(scene, view_layer, directory: str) -> Imported:
    """Every finished result of the batch in `directory` as its own object, in a grid; the
    first one active and all of them selected. ArtistError, and nothing added, when none is."""
    directory = os.path.abspath(directory)
    jobs, note = entries(directory)
    if not jobs:
        raise ArtistError(f"The batch folder {directory} holds no results yet: pick it again once its first job "
                          f"has finished")
    done = Imported(directory, note=note)
    for entry in jobs:
        why = _not_finished(entry)
        if why:
            done.skipped.append((entry.name, why))
            continue
        try:
            done.objects.append(importer.import_result(scene, view_layer, entry.path, name=result_name(entry)))
        except ArtistError as exc:  # checked before any datablock is made: skip it, say why
            done.skipped.append((entry.name, mesh_checks.short(exc, 160)))
    if not done.objects:
        raise ArtistError(f"No finished result in the batch folder {directory}: {done.not_complete()}; see "
                          f"{LOG_FILE} in each, or run the batch again" + (f" ({note})" if note else ""))
    lay_out(done.objects)
    for ob in done.objects:
        ob.select_set(True)
    view_layer.objects.active = done.objects[0]
    return done


def lay_out(objects) -> None:
    """Move each object to the centre of its cell (XY only): rows of ceil(sqrt(n)), cells the
    largest footprint plus MARGIN, cell 0 where the first object already is."""
    boxes = [_box(ob) for ob in objects]
    footprint = max(float(max(hi[0] - lo[0], hi[1] - lo[1])) for lo, hi in boxes)
    spacing = footprint * (1.0 + MARGIN) if footprint > 0 else 1.0
    columns = math.ceil(math.sqrt(len(objects)))
    anchor = (boxes[0][0][:2] + boxes[0][1][:2]) / 2
    for i, (ob, (lo, hi)) in enumerate(zip(objects, boxes)):
        row, column = divmod(i, columns)
        centre = anchor + np.array([column * spacing, -row * spacing])
        shift = centre - (lo[:2] + hi[:2]) / 2
        ob.location = (ob.location[0] + shift[0], ob.location[1] + shift[1], ob.location[2])


def result_name(entry: Entry) -> str:
    """"<prompt> · seed <N>" from the result's job.json (else the summary's entry, else the
    folder's name), shortened to fit a Blender name with the seed kept whole."""
    prompt, seed = _prompt_and_seed(entry)
    if not prompt:
        return _fit(entry.name, "")
    return _fit(prompt, "" if seed is None else f" · seed {seed}")


def _fit(text: str, suffix: str) -> str:
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    while len(text.encode("utf-8")) > room:
        text = text[:-1]
    return text.rstrip() + suffix


def _prompt_and_seed(entry: Entry) -> tuple[str, int | None]:
    job = {}
    try:
        text = mesh_checks.read_job(entry.path)
        job = json.loads(text) if text else {}
    except ArtistError:
        pass  # the import itself says what is wrong with it
    prompt = job.get("prompt") if isinstance(job.get("prompt"), str) else entry.summary.get("prompt")
    seed = job.get("seed") if "seed" in job else entry.summary.get("seed")
    prompt = " ".join(prompt.split()) if isinstance(prompt, str) else ""
    return prompt, seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _not_finished(entry: Entry) -> str:
    """Why this job is no result to import ("" when it is one)."""
    if entry.path is None:
        status = entry.summary.get("status")
        message = entry.summary.get("message")
        why = status if isinstance(status, str) and status else "no folder"
        return why + (f": {mesh_checks.short(message, 100)}" if isinstance(message, str) and message else "")
    found = read_status(entry.path)
    state = found["state"]
    if state == "complete" or (state == "none" and os.path.isfile(os.path.join(entry.path, MESH_FILE))):
        return ""
    if state == "none":
        return f"no {MESH_FILE}"
    message = found.get("message")
    return state + (f": {mesh_checks.short(message, 100)}" if isinstance(message, str) and message else "")


def _read_summary(directory: str) -> tuple[list[dict], str]:
    path = os.path.join(directory, SUMMARY_FILE)
    if not os.path.isfile(path):
        return [], ""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SUMMARY_BYTES + 1)
        if len(data) > MAX_SUMMARY_BYTES:
            raise ValueError(f"larger than {MAX_SUMMARY_BYTES // 2**20} MiB")
        summary = json_gate.loads(data.decode("utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JsonGateError too
        return [], f"{SUMMARY_FILE} could not be read ({mesh_checks.short(exc)}): the result folders were used"
    jobs = summary.get("jobs") if isinstance(summary, dict) else None
    if not isinstance(jobs, list):
        return [], f"{SUMMARY_FILE} has no list of jobs: the result folders were used"
    return [job for job in jobs if isinstance(job, dict)], ""


def _subfolders(directory: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _is_result(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in (MESH_FILE, STATUS_FILE, JOB_FILE))


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and os.path.basename(name) == name and "\\" not in name \
        and "/" not in name


def _box(ob) -> tuple[np.ndarray, np.ndarray]:
    """The object's world-space box (min, max) from its vertices (as imported: translation only)."""
    co = np.empty(len(ob.data.vertices) * 3, dtype=np.float32)
    ob.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64) + np.array(ob.location)
    return co.min(axis=0), co.max(axis=0)
