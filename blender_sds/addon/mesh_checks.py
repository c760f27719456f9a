"""A result's mesh.npz and job.json, read and checked before any Blender data is made (numpy only).

The files may come from elsewhere (a shared folder, a remote worker, another tool), so the
importer trusts nothing in them: each array's .npy header (shape, dtype) is read and judged
before its data is loaded, so a header declaring 10^12 rows costs nothing; then the values
(finite, colours in 0..1, indices in range, not every face degenerate). Every refusal is
one ArtistError line naming the file and what to do, and nothing has been created yet.

Choices:
- Integer colours (e.g. uint8 0..255) are refused, not converted: whether they are sRGB or
  linear cannot be told from the file, and a guess would bake wrong colours in silently.
- Float colours may stray COLOR_SLACK outside 0..1 (rounding) and are clipped; further out
  is refused (a 0..255 float array, a broken bake).
- Faces with a repeated corner are dropped here, the rest left to `Mesh.validate()`; a
  marching-cubes mesh can hold a few, and only a mesh of nothing else is refused.
- MAX_ELEMENTS bounds vertices and faces: 50M triangles is past what Blender edits
  comfortably and ~2 GB of arrays to read; the engine's `high` preset stays far below.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .. import json_gate
from ..job import MAX_JOB_BYTES
from ..results import JOB_FILE, LOG_FILE, MESH_FILE
from .errors import ArtistError

MAX_ELEMENTS = 50_000_000  # vertices, and faces, a mesh.npz may declare
COLOR_SLACK = 1e-3
# name -> (columns, allowed dtype kinds, what the engine writes)
ARRAYS = {"vertices": (3, "f", "float32 coordinates"), "faces": (3, "iu", "int32 vertex indices"),
          "colors": (4, "f", "linear RGBA floats in 0..1")}
KINDS = {"b": "boolean", "c": "complex", "U": "text", "S": "bytes", "O": "Python object", "V": "structured",
         "f": "floating point", "i": "integer", "u": "integer", "M": "date", "m": "time"}
AGAIN = "run the job again, or import a result this engine wrote"


def short(value, limit: int = 60) -> str:
    """str(value) cut to `limit` characters: values from the file are echoed, never unbounded."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_mesh(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices (V,3) f32, faces (F,3) i32, colours (V,4) f32) of a result folder, all checked."""
    path = os.path.join(directory, MESH_FILE)
    if not os.path.isfile(path):
        raise ArtistError(f"No {MESH_FILE} in {directory}: pick a finished result folder (a run that stopped "
                          f"early has none; see {LOG_FILE} there)")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {name: _member(zf, name) for name in ARRAYS}
            missing = [name for name, info in members.items() if info is None]
            if missing:
                raise ArtistError(f"{path} lacks {', '.join(missing)}: it was not written by this engine version; "
                                  f"{AGAIN}")
            headers = {name: _header(zf, path, name, info) for name, info in members.items()}
            _check_counts(path, headers)
            arrays = {name: _read(zf, info) for name, info in members.items()}
            return _check_values(path, arrays["vertices"], arrays["faces"], arrays["colors"])
    except MemoryError:
        raise ArtistError(f"{path} is too large to load in this Blender's memory: lower mesh.resolution and "
                          "run the job again") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        # RuntimeError: zipfile's "encrypted, password required"; ValueError: truncated data
        raise ArtistError(f"{path} cannot be read ({short(exc, 120)}): the result is damaged; "
                          "run the job again") from None


def _member(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    """The zip entry np.savez writes for `name` (as np.load would find it), or None."""
    for candidate in (f"{name}.npy", name):
        try:
            return zf.getinfo(candidate)
        except KeyError:
            continue
    return None


def _header(zf: zipfile.ZipFile, path: str, name: str, info: zipfile.ZipInfo) -> tuple[int, ...]:
    """The declared shape of one array, refused on its header alone (dtype, rank, width, data present)."""
    columns, kinds, expected = ARRAYS[name]
    fmt = np.lib.format
    with zf.open(info) as fp:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ArtistError(f"{path}: '{name}' is stored in .npy format {version}; only 1.0 and 2.0 are read: "
                              f"{AGAIN}")
        header_bytes = fp.tell()
    if dtype.kind not in kinds or dtype.hasobject or dtype.fields is not None:
        what = f"{KINDS.get(dtype.kind, 'other')} ({short(dtype, 30)})"
        raise ArtistError(f"{path}: '{name}' holds {what} values, not {expected}: {AGAIN}")
    if len(shape) != 2 or shape[1] != columns or shape[0] < 0:
        raise ArtistError(f"{path}: '{name}' must have shape (N, {columns}), has {short(shape)}: {AGAIN}")
    if shape[0] > MAX_ELEMENTS:
        raise ArtistError(f"{path}: '{name}' declares {shape[0]:,} rows, more than the {MAX_ELEMENTS:,} the importer "
                          f"takes: lower mesh.resolution and run the job again")
    if info.file_size < header_bytes + shape[0] * columns * dtype.itemsize:
        raise ArtistError(f"{path}: '{name}' declares {shape[0]:,} rows but holds fewer: the result is damaged; "
                          "run the job again")
    return shape


def _check_counts(path: str, headers: dict) -> None:
    vertices, faces, colors = (headers[n][0] for n in ("vertices", "faces", "colors"))
    if vertices == 0 or faces == 0:
        raise ArtistError(f"{path} holds an empty mesh: nothing to import; try another seed or more steps")
    if colors != vertices:
        raise ArtistError(f"{path}: {colors:,} colours for {vertices:,} vertices: {AGAIN}")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _check_values(path: str, verts: np.ndarray, faces: np.ndarray, colors: np.ndarray):
    """The values, once their shapes and dtypes passed: finite, in range; degenerate faces dropped."""
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 becomes inf, refused below
        verts = np.ascontiguousarray(verts, dtype=np.float32)
        colors = np.ascontiguousarray(colors, dtype=np.float32)
    for name, arr in (("vertices", verts), ("colors", colors)):
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ArtistError(f"{path}: {int(bad.sum()):,} of the {len(arr):,} '{name}' rows hold NaN or infinite "
                              f"values (first: row {int(np.argmax(bad))}): {AGAIN}")
    low, high = float(colors.min()), float(colors.max())
    if low < -COLOR_SLACK or high > 1 + COLOR_SLACK:
        raise ArtistError(f"{path}: 'colors' range from {low:.4g} to {high:.4g}; linear RGBA floats in 0..1 "
                          f"are expected: {AGAIN}")
    np.clip(colors, 0.0, 1.0, out=colors)
    lowest, highest = int(faces.min()), int(faces.max())
    if lowest < 0 or highest >= len(verts):
        raise ArtistError(f"{path}: face indices run from {lowest} to {highest}, outside 0..{len(verts) - 1}: "
                          f"{AGAIN}")
    faces = faces.astype(np.int32, copy=False)
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    keep = (a != b) & (b != c) & (a != c)
    if not keep.any():
        raise ArtistError(f"{path}: all {len(faces):,} faces are degenerate (a corner repeated): nothing to "
                          f"import; {AGAIN}")
    if not keep.all():
        faces = faces[keep]
    return verts, np.ascontiguousarray(faces), colors


def read_job(directory: str) -> str | None:
    """job.json's text if the folder has one (None if not), refused unless it is a JSON object.

    Bounded before parsing (size, and json_gate's depth and number length, the engine's own
    limits, so the copy kept on the object is one Refine can send); bad UTF-8 or JSON becomes
    one line naming the file."""
    path = os.path.join(directory, JOB_FILE)
    if not os.path.isfile(path):  # not a FIFO or folder: reading those could block or fail
        return None
    remedy = "delete it to import the mesh without its job, or run the job again"
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JOB_BYTES + 1)
    except OSError as exc:
        raise ArtistError(f"{path} cannot be read ({short(exc.strerror or exc)}): {remedy}") from None
    if len(data) > MAX_JOB_BYTES:
        raise ArtistError(f"{path} is larger than {MAX_JOB_BYTES // 2**20} MiB, which no job is: {remedy}")
    try:
        text = data.decode("utf-8")
        job = json_gate.loads(text)  # depth and number length bounded before the parse, as the engine's
    except ValueError as exc:  # UnicodeDecodeError too
        raise ArtistError(f"{path} is not a readable job ({short(exc)}): {remedy}") from None
    if not isinstance(job, dict):
        raise ArtistError(f"{path} holds a JSON {type(job).__name__}, not a job object: {remedy}")
    return text
