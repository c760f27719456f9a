"""A batch's manifest: the jobs it runs, every one validated before any of them starts (standard library only).

A batch of a hundred GPU jobs that dies at job 60 on a typo wastes the first 59 jobs' wait for
the message; so the whole manifest is read and each job validated by `job.validate_job`
first, and the first problem is one line naming the file, the line and the key.

Two forms (docs/SCALING.md):

- JSON lines: one JSON object a line. Without `--template` each is a whole job file's object;
  with it, each holds overrides merged over the template (`job.merge_overrides`), usually just
  `{"prompt": "a red cube", "seed": 3}`. A line may also be a JSON string: a prompt.
- A plain text file of prompts, one a line, run in the `--template` job.

The form is the first line's: JSON lines when it starts with `{` or `[` or is a JSON string. Blank lines and lines
starting with `#` are skipped in both. `--seeds 0,1,2` makes one job per seed of each line (the
seed replaces the line's); `--steps N` re-makes every job for N steps as `run --steps` does.
Relative paths in a job are read against the manifest's folder, or with `--template` against
the template's.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ... import json_gate
from ...job import MAX_JOB_BYTES, JobError, merge_overrides, validate_job, with_steps

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # 10,000 jobs of a few kB each
MAX_JOBS = 10000  # jobs after --seeds multiplies the lines; a batch past this is several batches
MAX_SEED = 2**32 - 1


class ManifestError(ValueError):
    """A manifest, template or flag refused before anything runs: the message says where (file and
    line, or the flag) and, for a job, the key, in one line."""


@dataclass(frozen=True)
class Entry:
    """One job of the batch: where it came from and the normalised job."""

    line: int  # 1-based line of the manifest
    job: dict


def read_text(path, limit: int, what: str) -> str:
    """A regular file's UTF-8 text, or ManifestError naming `what` (the file or its flag)."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # before open: opening a FIFO would wait for a writer forever
        if stat.S_ISDIR(mode):
            raise ManifestError(f"{what}: is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise ManifestError(f"{what}: is not a regular file (a pipe, device or socket); save it to a file")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise ManifestError(f"{what}: no such file") from None
    except OSError as exc:
        raise ManifestError(f"{what}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ManifestError(f"{what}: is over {limit // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as ints in 0 .. 2**32-1, each once."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > MAX_SEED:
            raise ManifestError(f"--seeds: {part!r} is not a seed (a whole number 0 .. {MAX_SEED}); "
                                f"give them as 0,1,2")
        if int(part) in seeds:
            raise ManifestError(f"--seeds: {int(part)} is given twice")
        seeds.append(int(part))
    return seeds


def read_template(path) -> dict:
    """The `--template` job as written (not yet validated: it may lack the prompt each line brings)."""
    what = f"--template {path}"
    text = read_text(path, MAX_JOB_BYTES, what)
    try:
        raw = json_gate.loads(text)
    except json_gate.JsonGateError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{what}: must be a JSON object (a job, docs/JOB.md)")
    return raw


def _lines(text: str):
    """(line number, text) of the lines that hold something: not blank, not a # comment."""
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def _looks_like_json(line: str) -> bool:
    """The first line decides the form: an object or list, or a whole JSON string, is JSON lines."""
    if line[0] in "{[":
        return True
    try:
        return isinstance(json_gate.loads(line), str)
    except json_gate.JsonGateError:
        return False


def _top_key(key: str) -> str:
    return key.split(".", 1)[0].split("[", 1)[0]


def read_manifest(path, *, template=None, seeds: list[int] | None = None, steps: int | None = None) -> list[Entry]:
    """Every job of the manifest at `path`, normalised, in order (each line times each seed).

    Raises ManifestError on the first problem: not a file, not JSON on line N, an invalid job
    on line N (with the key, as the job validator names it), a bad template or flag.
    """
    path = Path(path)
    name = str(path)
    text = read_text(path, MAX_MANIFEST_BYTES, f"manifest {name}")
    base = read_template(template) if template is not None else None
    base_dir = Path(template if template is not None else path).resolve().parent
    lines = list(_lines(text))
    if not lines:
        raise ManifestError(f"manifest {name}: holds no jobs (blank lines and # comments only)")
    json_lines = _looks_like_json(lines[0][1])
    if not json_lines and base is None:
        raise ManifestError(f"manifest {name}: a list of prompts needs --template JOB.json (the job each "
                            f"prompt runs in); or write one job object a line (JSON lines)")
    entries: list[Entry] = []
    for number, line in lines:
        where = f"{name} line {number}"
        if json_lines:
            try:
                value = json_gate.loads(line)
            except json_gate.JsonGateError as exc:
                raise ManifestError(f"{where}: {str(exc).replace('not valid JSON', 'not JSON')}; each line must be "
                                    f"one JSON object (JSON lines)") from None
            if isinstance(value, str):
                value = {"prompt": value}
            if not isinstance(value, dict):
                what = "a job, or overrides of the template" if base else "a job"
                raise ManifestError(f"{where}: must be a JSON object ({what}) or a prompt string, "
                                    f"got {type(value).__name__}")
        else:
            value = {"prompt": line}
        raw = merge_overrides(base, value) if base is not None else value
        for seed in seeds or [None]:
            if seed is not None:
                raw = {**raw, "seed": seed}
            try:
                job = validate_job(raw, base_dir=base_dir)
            except JobError as exc:
                if base is not None and _top_key(exc.key) not in value:
                    where = f"--template {template} (in the job of {name} line {number})"
                raise ManifestError(f"{where}: {exc}") from None
            if steps is not None:
                try:
                    job = with_steps(job, steps)
                except JobError as exc:
                    raise ManifestError(f"--steps {steps}: {exc} (the job of {where})") from None
            entries.append(Entry(number, job))
            if len(entries) > MAX_JOBS:
                raise ManifestError(f"{where}: more than {MAX_JOBS} jobs; split the manifest into several batches")
    return entries
