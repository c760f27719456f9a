"""Messages between the add-on and the worker: JSON lines, one object per line.

Standard library only: Blender imports it (no torch there) and so does the worker (no bpy
there). Framing (`encode`, `decode`, `MessageReader`, `MessageWriter`) works on byte
streams and knows nothing of pipes or sockets, so the same messages can travel over a
subprocess's stdin/stdout today and over TCP later.

A conversation: each side sends `hello` with the protocol version it speaks and checks
the other's (`check_hello`); a remote worker (engine/service/serve.py) waits for the add-on's
hello, which carries its `token`, before it says anything. Then the add-on sends `run`
(and maybe `cancel`, `ping`); the worker answers with the engine's events (`stage`,
`start`, `progress`, `preview`, `checkpoint`, `done`, see engine/train/run.py), `error`, `pong`,
and a `heartbeat` every few seconds so a silent worker can be told from a busy one.
Closing the add-on's side (EOF) tells the worker to stop. Files travel as data, never as
paths the other side should open: the add-on `upload`s a remote job's inputs, a remote
worker sends its results back as `file` chunks (base64 in JSON; no pickle on the wire).

A remote worker runs one job at a time and queues the others, in order. Its hello carries
`queue: {"running": 0|1, "waiting": n}`. A job that has to wait is answered with
`{"type": "queued", "position": k, "length": n}` (position 1 = next to run, `length` =
jobs waiting in all), again each time either number changes; when it starts, the usual run
messages follow. `cancel` takes a waiting job out of the queue (answered with an `error` of
kind `cancelled`) or stops a running one. Remote connections are TLS: the add-on pins the
server's certificate by its SHA-256 fingerprint (`certificate_fingerprint`, written as
`serve` prints it; `fingerprint_digest` reads any common spelling of it).

Receivers ignore message types they do not know, so a newer peer can add events without
breaking an older one; changing a known message's meaning needs a new PROTOCOL_VERSION.
A malformed line is a ProtocolError; a line over the limit is a LineTooLong, after which
the stream cannot be trusted to be at a line boundary, so the conversation ends.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading

from . import json_gate, results

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024  # a job with a large rig is tens of kB; anything near this is a fault
HELLO_MAX_BYTES = 64 * 1024  # what a peer may send before it has said who it is
HEARTBEAT_SECONDS = 2.0
CHUNK_BYTES = 1024 * 1024  # raw bytes per upload/file message (base64 makes it 4/3 of that)

ERROR_KINDS = ("bad_input", "failed", "cancelled")
# An error's `code` says which failure it is, so the other side acts on a field, never on the
# wording of `message` (which is for people); `key` names the job value at fault, if one is.
ERROR_CODES = {
    "bad_message": "a line that is not a well-formed message, or a field of the wrong type",
    "bad_hello": "the first message is not a hello in this protocol version",
    "too_large": "a line, a message or the uploads over the limit",
    "unauthorized": "no token, or a wrong one",
    "busy": "this connection already has a run going, or the remote worker has all the clients it takes",
    "queue_full": "the remote worker's queue is full, in all or for this token (the message says which limit)",
    "path": "a path the remote worker will not touch",
    "upload": "an upload refused or lost",
    "job": "the job is refused; `key` names the value",
    "model": "the model cannot be used as named (not there, not a model, no download allowed)",
    "input": "other input the engine cannot use (the message says which)",
    "engine": "the worker's Python cannot load the engine",
    "run_failed": "the run stopped with an error (the worker's log has the traceback)",
    "cancelled": "the run stopped because it was asked to",
    "validator": "the job validator failed on this job instead of naming a key (a fault in it)",
    "internal": "a fault in the worker itself, answering one message",
}
ROLES = ("addon", "worker")
ADDON_MESSAGES = ("hello", "run", "cancel", "ping", "upload")
WORKER_MESSAGES = ("hello", "queued", "stage", "start", "progress", "preview", "checkpoint", "done", "error",
                   "heartbeat", "pong", "file")

# Fields a known message must carry, with their JSON types; extra fields are allowed, and
# those below are checked when present.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"protocol": int, "role": str},
    "run": {"job": dict, "base_dir": str, "out": str},
    "cancel": {},
    "queued": {"position": int, "length": int},
    "stage": {"name": str},
    "start": {"steps": int},
    "progress": {"step": int, "steps": int},
    "preview": {"path": str},
    "checkpoint": {"path": str},
    "done": {"out": str},
    "error": {"message": str, "kind": str},
    "heartbeat": {},
    "ping": {},
    "pong": {},
    "upload": {"name": str, "offset": int, "data": str},
    "file": {"name": str, "offset": int, "size": int, "data": str},
}
_OPTIONAL: dict[str, dict[str, type]] = {"error": {"code": str, "key": str}}


class ProtocolError(ValueError):
    """A line that is not a well-formed message, or a peer that speaks another version."""


class LineTooLong(ProtocolError):
    """A line over the reader's limit: refused after reading only the limit, never whole."""


def check_message(message) -> dict:
    """`message` if it is a well-formed message, else ProtocolError naming what is wrong."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"message without a 'type': {_short(message)}")
    for field, wanted in _REQUIRED.get(kind, {}).items():
        value = message.get(field)
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ProtocolError(f"'{kind}' message: field '{field}' missing or of the wrong type "
                                f"in {_short(message)}")
    for field, wanted in _OPTIONAL.get(kind, {}).items():
        if field in message and not isinstance(message[field], wanted):
            raise ProtocolError(f"'{kind}' message: field '{field}' of the wrong type in {_short(message)}")
    if kind == "error" and message["kind"] not in ERROR_KINDS:
        raise ProtocolError(f"'error' message: kind must be one of {ERROR_KINDS}, got {message['kind']!r}")
    if kind in ("upload", "file") and message["offset"] < 0:
        raise ProtocolError(f"'{kind}' message: field 'offset' must be >= 0, got {message['offset']}")
    if kind == "queued" and not 1 <= message["position"] <= message["length"]:
        raise ProtocolError(f"'queued' message: position must be 1 .. length, got {message['position']} of "
                            f"{message['length']}")
    return message


def encode(message: dict) -> bytes:
    """One message as one UTF-8 line ending in a newline.

    Never fails on content a peer or the engine produced: a NaN or infinity (a figure of
    a diverging step) becomes null, a lone surrogate (from a JSON escape) becomes '?'.
    Only a message over the line limit is an error."""
    check_message(message)
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite_only(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    line = text.encode("utf-8", "replace")
    if len(line) + 1 > MAX_LINE_BYTES:
        raise ProtocolError(f"'{message['type']}' message is {len(line)} bytes, over the "
                            f"{MAX_LINE_BYTES}-byte line limit")
    return line + b"\n"


def decode(line: bytes | str) -> dict:
    """One line -> a checked message. Strict JSON: NaN/Infinity and absurd nesting are refused."""
    if isinstance(line, str):
        line = line.encode("utf-8", "replace")
    if len(line) > MAX_LINE_BYTES:
        raise LineTooLong(f"line of {len(line)} bytes is over the {MAX_LINE_BYTES}-byte limit")
    try:
        message = json_gate.loads(line.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8; json_gate: too deep, a huge number, NaN, bad JSON
        raise ProtocolError(f"not a JSON line ({exc}): {_short(line)}") from None
    return check_message(message)  # nested at most json_gate.MAX_DEPTH: its recursion is bounded


def _finite_only(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    return value


def _short(value) -> str:
    try:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    except RecursionError:
        return "<nested too deeply to show>"
    text = "".join(c if c.isprintable() else "?" for c in text.strip()[:400])  # a NUL would cut a UI report short
    return text if len(text) <= 200 else text[:197] + "..."


# -- messages --------------------------------------------------------------------------------

def hello(role: str, **extra) -> dict:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "role": role, **extra}


def check_hello(message: dict, expected_role: str) -> dict:
    """The peer's hello, or ProtocolError that says how the two sides disagree."""
    if message.get("type") != "hello":
        raise ProtocolError(f"expected a 'hello' from the {expected_role} first, got {_short(message)}")
    if message.get("role") != expected_role:
        raise ProtocolError(f"expected a hello from the {expected_role}, got one from {message.get('role')!r}")
    if message.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"the {expected_role} speaks protocol version {message.get('protocol')!r}, this side "
                            f"speaks {PROTOCOL_VERSION}: install the add-on and the worker from the same release")
    return message


def run(job: dict, base_dir: str, out: str, device: str | None = None) -> dict:
    """Ask the worker to validate `job` (paths relative to `base_dir`) and run it into `out`."""
    message = {"type": "run", "job": job, "base_dir": str(base_dir), "out": str(out)}
    if device:
        message["device"] = device
    return message


def cancel() -> dict:
    return {"type": "cancel"}


def queued(position: int, length: int) -> dict:
    """A remote job's place in the server's queue: 1 = next to run, of `length` waiting."""
    return check_message({"type": "queued", "position": position, "length": length})


def error(message: str, kind: str, code: str, key: str | None = None, **extra) -> dict:
    """A failure for people (`message`) and for the program (`kind`, `code`, `key`: see ERROR_CODES)."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    if code not in ERROR_CODES:
        raise ValueError(f"code must be one of {', '.join(ERROR_CODES)}, got {code!r}")
    out = {"type": "error", "message": message, "kind": kind, "code": code, **extra}
    if key:
        out["key"] = key
    return out


def heartbeat(**extra) -> dict:
    return {"type": "heartbeat", **extra}


def ping(ident: str | int | None = None) -> dict:
    """Ask for a `pong` carrying the same id: a round trip that proves the peer still answers."""
    return {"type": "ping"} if ident is None else {"type": "ping", "id": ident}


def pong(ping_message: dict) -> dict:
    ident = ping_message.get("id")
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or len(str(ident)) > 64:
        return {"type": "pong"}
    return {"type": "pong", "id": ident}


# -- the remote worker's certificate ----------------------------------------------------------

def certificate_digest(der: bytes) -> bytes:
    """The SHA-256 of a certificate (DER bytes): what a fingerprint names."""
    import hashlib
    return hashlib.sha256(der).digest()


def shown_fingerprint(digest: bytes) -> str:
    """32 bytes written as `serve` prints a fingerprint and artists paste it: 'AB:CD:...'."""
    return ":".join(f"{b:02X}" for b in digest)


def certificate_fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as `serve` prints it: 'AB:CD:...'."""
    return shown_fingerprint(certificate_digest(der))


def is_loopback(host: str) -> bool:
    """True when every address `host` names is this machine's loopback: where plain TCP, or
    a server without a token, is allowed (both the server and the add-on ask)."""
    import ipaddress
    import socket
    try:
        infos = socket.getaddrinfo(host, None)
        addresses = {info[4][0].split("%")[0] for info in infos}
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def fingerprint_digest(text: str) -> bytes:
    """The 32 bytes a SHA-256 fingerprint names, written 'AB:CD:..', 'abcd..', with 'sha256:' or
    'SHA256:' before it, or spaces in it; ValueError saying what was wrong otherwise."""
    plain = "".join(str(text).split())
    if plain[:7].lower() == "sha256:":
        plain = plain[7:]
    plain = plain.replace(":", "")
    if len(plain) != 64 or any(c not in "0123456789abcdefABCDEF" for c in plain):
        shown = str(text).strip()
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ValueError(f"{shown!r} is not a SHA-256 fingerprint (64 hex digits, e.g. "
                         "'AB:CD:...:EF' as serve prints it at start)")
    return bytes.fromhex(plain)


# -- files as data ---------------------------------------------------------------------------

# A file name inside a job's folder: relative, '/'-separated parts of letters, digits, '.',
# '_' and '-', none starting with a dot (so no '..', no hidden files), at most 8 deep.
_NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_NAME_DEPTH = 8
# Data files a remote job may upload. No .py (diffusers could import it), no .bin/.ckpt/.pkl
# (pickle): a checkpoint is read with weights_only, a model must be safetensors, a start mesh
# (init.mesh) an .npz that numpy reads with allow_pickle=False.
UPLOAD_SUFFIXES = (".json", ".txt", ".safetensors", ".png", ".jpg", ".jpeg", ".pt", ".model", ".npz")
# What a remote worker sends back of a finished run, and all the add-on accepts (results.py).
RESULT_FILES = results.RESULT_FILES


def check_name(name, field: str = "name") -> str:
    """`name` if it can only ever mean a file inside a folder, else ProtocolError saying why."""
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{field}: must be a non-empty relative file name, got {_short(name)}")
    parts = name.split("/")
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        raise ProtocolError(f"{field}: {_short(name)} is an absolute path; only names inside the job's "
                            "folder are accepted")
    if any(p in ("..", ".") for p in parts) or "\\" in name:
        raise ProtocolError(f"{field}: {_short(name)} leaves its folder ('..', '.' or '\\' in it)")
    if len(parts) > MAX_NAME_DEPTH or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise ProtocolError(f"{field}: {_short(name)} is not a plain file name (letters, digits, '.', '_', "
                            f"'-' and '/' only, no part starting with '.', at most {MAX_NAME_DEPTH} deep)")
    return name


def chunks(name: str, data_stream, kind: str, size: int | None = None):
    """`upload` (kind="upload") or `file` messages carrying a binary stream's bytes in order."""
    offset = 0
    while True:
        data = data_stream.read(CHUNK_BYTES)
        if not data and offset > 0:
            return
        message = {"type": kind, "name": name, "offset": offset, "data": base64.b64encode(data).decode("ascii")}
        if kind == "file":
            message["size"] = size if size is not None else offset + len(data)
        yield message
        offset += len(data)
        if not data:
            return


def chunk_bytes(message: dict) -> bytes:
    """The bytes of an `upload` or `file` message; ProtocolError if they are not base64."""
    try:
        return base64.b64decode(message["data"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProtocolError(f"'{message['type']}' message for {_short(message['name'])}: data is not "
                            "base64") from None


# -- streams ---------------------------------------------------------------------------------

class MessageReader:
    """Messages from a binary stream (a pipe, or a socket's makefile('rb')); None at EOF.

    Reads at most `max_bytes` + 1 bytes of a line (a bounded readline), so a peer cannot
    make us buffer an endless line; `max_bytes` may be lowered until the peer is known."""

    def __init__(self, stream, max_bytes: int = MAX_LINE_BYTES):
        self.stream = stream
        self.max_bytes = max_bytes

    def read(self) -> dict | None:
        while True:
            line = self.stream.readline(self.max_bytes + 1)
            if not line:
                return None
            if len(line) > self.max_bytes:
                raise LineTooLong(f"line over the {self.max_bytes}-byte limit (refused after reading "
                                  f"{len(line)} bytes of it)")
            if line.strip():
                return decode(line)

    def __iter__(self):
        while True:
            message = self.read()
            if message is None:
                return
            yield message


class MessageWriter:
    """Writes whole messages to a binary stream; safe to share between threads."""

    def __init__(self, stream):
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, message: dict) -> None:
        data = encode(message)
        with self._lock:
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            try:
                self.stream.close()
            except OSError:
                pass
