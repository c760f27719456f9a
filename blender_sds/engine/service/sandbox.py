"""The remote worker's rules: nothing a message says is trusted to be a path.

A client of `serve` may be on another machine, so a job's own paths (init.checkpoint,
init.mesh, reference views, model folders) mean nothing here and must not reach the disk. A remote
job names only hub ids, or files the client uploaded into the job's folder; the worker
makes every folder itself, under the root it was started with:

    ROOT/jobs/<utc time, µs>-<random>/inputs/...   what the client uploaded (names checked)
    ROOT/jobs/<utc time, µs>-<random>/out/...      what the engine writes

and sends results back as data (`file` messages). Uploads are data files only (no code,
no pickle: a checkpoint is read with weights_only, a model must be safetensors, a start
mesh an .npz read with allow_pickle=False, never a format a parser library reads), within
a size budget per job. One job runs at a time in the whole server; the others wait in the
server's queue (job_queue.py). Both message fields that could carry a path, `out` and
`base_dir`, must be empty; the paths in what the worker says back are the client's names
(`public`), never the server's folders.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from ... import protocol
from ...job import HUB_ID, JobError, validate_job
from ...results import RESULT_FILES
from .job_queue import JobQueue, Ticket
from .tokens import as_tokens
from .worker import Refused

UPLOAD_SUFFIXES = protocol.UPLOAD_SUFFIXES
_JOB_FOLDER = re.compile(r"\d{8}-\d{12}-[0-9a-f]{8}")
_LIBRARIES = ("diffusers", "transformers")


class SandboxWorkspace:
    """One connection's view of the server's root: its uploads, its job folders, its place
    in the server's queue (shared by all connections)."""

    greets_first = False  # nothing is said to a peer before it has shown the token

    def __init__(self, root: Path, queue: JobQueue, tokens, *, max_upload_bytes: int,
                 keep_jobs: int = 20, reader: protocol.MessageReader | None = None, on_admit=None):
        self.root = Path(root).resolve()
        self.jobs = self.root / "jobs"
        self.queue = queue
        self.tokens = as_tokens(tokens)
        self.owner: str | None = None  # which token the peer showed: its share of the queue
        self.max_upload_bytes = max_upload_bytes
        self.keep_jobs = keep_jobs
        self.reader = reader  # its line limit is raised once the peer is admitted
        self.on_admit = on_admit  # the transport lifts its hello deadline
        self.folder: Path | None = None  # where the next job's uploads go
        self.uploaded = 0
        self.job_folder: Path | None = None  # the folder of the job sent last (waiting or running)
        self.ticket: Ticket | None = None
        self._server_paths = _ServerPaths(self.root)

    # -- who may talk ------------------------------------------------------------------------
    def hello_extra(self) -> dict:
        return {"remote": True, "queue": self.queue.summary()}

    def admit(self, hello: dict) -> None:
        self.owner = self.tokens.admit(hello)
        if self.reader is not None:
            self.reader.max_bytes = protocol.MAX_LINE_BYTES
        if self.on_admit is not None:
            self.on_admit()

    # -- the queue ---------------------------------------------------------------------------
    def claim(self) -> None:
        """Join the queue with the job `prepare` made (Refused when the queue is full)."""
        self.ticket = self.queue.enter(self.owner or "everyone", self.job_folder)

    def wait_turn(self, on_place, should_stop) -> bool:
        return self.queue.wait_turn(self.ticket, should_stop, on_place)

    def release(self) -> None:
        """The job ended or never joined: leave the queue, free its folder for pruning."""
        if self.ticket is not None:
            self.queue.leave(self.ticket)
            self.ticket = None
        if self.job_folder is not None:
            self.queue.let_go(self.job_folder)
            self.job_folder = None
        self.prune()

    def close(self) -> None:
        """The conversation is over: uploads for a job never sent may be pruned."""
        if self.folder is not None:
            self.queue.let_go(self.folder)
            self.folder = None

    # -- what the client may read ------------------------------------------------------------
    def public(self, message: dict) -> dict:
        """`message` as a remote client sees it: the server's paths in its words become the
        client's names (an upload's name, a result's file name); no traceback, no interpreter."""
        if message.get("type") == "file":
            return message
        message = {k: v for k, v in message.items() if k not in ("traceback", "python")}
        return self._server_paths.scrub(message)

    # -- uploads -----------------------------------------------------------------------------
    def _job_folder(self) -> Path:
        if self.folder is None:
            self.jobs.mkdir(parents=True, exist_ok=True, mode=0o700)
            now = time.time_ns()
            name = (time.strftime("%Y%m%d-%H%M%S", time.gmtime(now // 10**9)) + f"{now // 1000 % 10**6:06d}-"
                    + secrets.token_hex(4))  # sorts by time, to the microsecond
            folder = self.jobs / name
            (folder / "inputs").mkdir(parents=True, mode=0o700)
            (folder / "out").mkdir(mode=0o700)
            self.queue.hold(folder)
            self.folder, self.uploaded = folder, 0
        return self.folder

    def _inside(self, base: Path, name: str) -> Path:
        path = (base / name).resolve()
        if os.path.commonpath([path, base.resolve()]) != str(base.resolve()) or path == base.resolve():
            raise Refused(f"{name!r} is not inside the job's folder", "path", key="name")
        return path

    def upload(self, message: dict) -> None:
        name = protocol.check_name(message["name"], "upload.name")
        if not name.lower().endswith(UPLOAD_SUFFIXES):
            raise Refused(f"upload.name: {name!r}: only data files may be uploaded "
                          f"({', '.join(UPLOAD_SUFFIXES)}); no code, no pickle", "upload", key="name")
        data = protocol.chunk_bytes(message)
        if self.uploaded + len(data) > self.max_upload_bytes:
            raise Refused(f"upload: the job's uploads would pass this worker's limit of "
                          f"{self.max_upload_bytes // 2**20} MiB (--max-upload-mb)", "too_large")
        inputs = self._job_folder() / "inputs"
        path = self._inside(inputs, name)
        have = path.stat().st_size if path.is_file() else 0
        if message["offset"] != have:
            raise Refused(f"upload {name!r}: chunk at offset {message['offset']}, but {have} bytes are there: "
                          "send a file's chunks in order, from offset 0, once", "upload", key="offset")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(path, "ab" if have else "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise Refused(f"upload {name!r}: cannot write it here: {exc.strerror or exc}", "upload") from None
        self.uploaded += len(data)

    # -- the run -----------------------------------------------------------------------------
    def prepare(self, message: dict) -> tuple[dict, str]:
        for field in ("base_dir", "out"):
            if message[field] != "":
                raise Refused(f"{field}: a remote worker reads and writes only folders it makes itself; send an "
                              f"empty string (got {message[field][:120]!r})", "path", key=field)
        folder = self._job_folder()
        inputs = folder / "inputs"
        raw = message["job"]
        _check_paths(raw, inputs)
        job = validate_job(raw, str(inputs))
        for key, path in _job_paths(job):
            if path is not None and not _is_hub(path):
                real = Path(path).resolve()
                if os.path.commonpath([real, inputs.resolve()]) != str(inputs.resolve()):
                    raise Refused(f"{key}: {path!r} is outside the job's folder", "path", key=key)
        self.folder, self.job_folder = None, folder  # the next job's uploads go to a new folder
        return job, str(folder / "out")

    def relay(self, event: dict, send) -> None:
        """An engine event as the client can use it: folder paths become file names, and
        the files themselves travel first (a preview at once, the result at the end)."""
        kind = event.get("type")
        if kind == "preview":
            path = Path(event["path"])
            self._send_file(path, send)
            event = {**event, "path": path.name}
        elif kind == "checkpoint":
            event = {**event, "path": Path(event["path"]).name}
        elif kind == "done":
            out = Path(event["out"])
            for name in RESULT_FILES:  # job.json is not sent: the client knows its own paths, we do not
                self._send_file(out / name, send)
            event = {**event, "out": ""}
        send(event)

    def _send_file(self, path: Path, send) -> None:
        try:
            fh = open(path, "rb")
        except OSError:
            return  # not written (e.g. no preview yet): the client goes without it
        with fh:
            size = os.fstat(fh.fileno()).st_size
            for message in protocol.chunks(path.name, fh, "file", size=size):
                send(message)

    # -- housekeeping ------------------------------------------------------------------------
    def prune(self) -> None:
        """Keep the newest `keep_jobs` job folders (only ones with our own names)."""
        if self.keep_jobs <= 0 or not self.jobs.is_dir():
            return
        ours = sorted(p for p in self.jobs.iterdir() if p.is_dir() and _JOB_FOLDER.fullmatch(p.name))
        in_use = self.queue.in_use()  # uploads arriving, jobs waiting or running, on any connection
        for old in ours[:-self.keep_jobs]:
            if old not in in_use:
                shutil.rmtree(old, ignore_errors=True)


class _ServerPaths:
    """Turns the server's paths in a message's words into what the client knows: a job's
    inputs/ and out/ folders fall away (leaving the upload's or result's own name), anything
    else under the root or the server's home is not named. Job folders are found by their
    names, so a path the engine shortened to '...its/tail' is caught too."""

    def __init__(self, root: Path):
        job = r"[^\s'\"]*?" + _JOB_FOLDER.pattern
        self.patterns = [(re.compile(job + "/(?:inputs|out)/"), ""),
                         (re.compile(r"\.\.\.[0-9a-f-]*/(?:inputs|out)/"), ""),  # cut inside the folder's name
                         (re.compile(job + "(?:/(?:inputs|out))?"), "the job's folder"),
                         (re.compile(re.escape(str(root)) + r"[^\s'\",;)]*"), "the server's folder")]
        home = os.path.expanduser("~")
        if home and home not in ("/", "~"):
            self.patterns.append((re.compile(re.escape(home) + r"(?=/|\b)"), "~"))

    def scrub(self, value):
        if isinstance(value, str):
            for pattern, replacement in self.patterns:
                value = pattern.sub(replacement, value)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value


# -- what a remote job may name ------------------------------------------------------------------

def _is_hub(text: str) -> bool:
    return bool(HUB_ID.fullmatch(text)) and ".." not in text


def _job_paths(job: dict):
    """(key, path) for every path a normalised job holds."""
    g = job["guidance"]
    yield "guidance.model", g["model"]
    yield "guidance.config", g["config"]
    for i, view in enumerate(g["views"]):
        yield f"guidance.views[{i}].image", view["image"]
    yield "init.checkpoint", job["init"]["checkpoint"]
    yield "init.mesh", job["init"].get("mesh")


def _raw_paths(raw):
    """(key, value, may_be_hub) for the places a raw job may name a file, whatever their shape."""
    if not isinstance(raw, dict):
        return
    guidance = raw.get("guidance")
    if isinstance(guidance, dict):
        yield "guidance.model", guidance.get("model"), True
        yield "guidance.config", guidance.get("config"), True
        views = guidance.get("views")
        if isinstance(views, list):
            for i, view in enumerate(views):
                if isinstance(view, dict):
                    yield f"guidance.views[{i}].image", view.get("image"), False
    init = raw.get("init")
    if isinstance(init, dict):
        yield "init.checkpoint", init.get("checkpoint"), False
        yield "init.mesh", init.get("mesh"), False


def _check_paths(raw, inputs: Path) -> None:
    """Refuse a path that could leave the job's folder, before the validator reads anything."""
    for key, value, may_be_hub in _raw_paths(raw):
        if not isinstance(value, str) or not value:
            continue  # not a path: the validator names the key and what was wanted
        if may_be_hub and _is_hub(value) and not (inputs / value).exists():
            continue  # a hub id: fetched by the worker's own hub cache
        try:
            protocol.check_name(value, key)
        except protocol.ProtocolError as exc:
            raise Refused(f"{exc}; a remote job may name only hub ids (org/name) and files it uploaded",
                          "path", key=key) from None
        if key == "init.mesh" and not value.lower().endswith(".npz"):
            raise Refused(f"{key}: a remote worker takes a start mesh only as .npz (numpy arrays, no pickle), got "
                          f"{value!r}; save it as .npz (the layout of a result's mesh.npz)", "path", key=key)
        target = inputs / value
        if not target.exists():
            raise JobError(key, f"{value!r} was not uploaded to this job; upload it first (a remote job names "
                                "only hub ids and uploaded files)")
        if key == "guidance.model" and target.is_file() and not value.lower().endswith(".safetensors"):
            raise Refused(f"{key}: a remote worker loads single-file models only as .safetensors (no pickle), "
                          f"got {value!r}", "path", key=key)
        if target.is_dir():
            _check_model_index(target, key)


def _check_model_index(folder: Path, key: str) -> None:
    """A diffusers folder may only name library classes: a class from a file in the folder
    would be code the client sent."""
    index = folder / "model_index.json"
    if not index.is_file():
        return
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(key, f"model_index.json cannot be read: {exc}") from None
    if not isinstance(entries, dict):
        raise JobError(key, "model_index.json must be a JSON object")
    for name, value in entries.items():
        if name.startswith("_"):
            if name == "_class_name" and not isinstance(value, str):
                raise Refused(f"{key}: model_index.json _class_name must be a diffusers class name", "path", key=key)
            continue
        if isinstance(value, list) and len(value) == 2 and value[0] is not None and value[0] not in _LIBRARIES:
            raise Refused(f"{key}: model_index.json component {name!r} comes from {value[0]!r}; a remote worker "
                          f"loads only {', '.join(_LIBRARIES)} classes", "path", key=key)
