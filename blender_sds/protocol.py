"""Messages between the add-on and the worker: JSON lines, one object per line.

Standard library only: Blender imports it (no torch there) and so does the worker (no bpy
there). Framing (`encode`, `decode`, `MessageReader`, `MessageWriter`) works on byte
streams and knows nothing of pipes or sockets, so the same messages can travel over a
subprocess's stdin/stdout today and over TCP later.

A conversation: each side first sends `hello` with the protocol version it speaks and
checks the other's (`check_hello`). Then the add-on sends `run` (and maybe `cancel`);
the worker answers with the engine's events (`stage`, `start`, `progress`, `preview`,
`checkpoint`, `done`, see engine/run.py), `error`, and a `heartbeat` every few seconds
so a silent worker can be told from a busy one. Closing the add-on's side (EOF) tells the
worker to stop and exit. Receivers ignore message types they do not know, so a newer
peer can add events without breaking an older one; changing a known message's meaning
needs a new PROTOCOL_VERSION.
"""
from __future__ import annotations

import json
import threading

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024  # a job with a large rig is tens of kB; anything near this is a fault
HEARTBEAT_SECONDS = 2.0

ERROR_KINDS = ("bad_input", "failed", "cancelled")
ROLES = ("addon", "worker")
ADDON_MESSAGES = ("hello", "run", "cancel")
WORKER_MESSAGES = ("hello", "stage", "start", "progress", "preview", "checkpoint", "done", "error",
                   "heartbeat")

# Fields a known message must carry, with their JSON types; extra fields are allowed.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"protocol": int, "role": str},
    "run": {"job": dict, "base_dir": str, "out": str},
    "cancel": {},
    "stage": {"name": str},
    "start": {"steps": int},
    "progress": {"step": int, "steps": int},
    "preview": {"path": str},
    "checkpoint": {"path": str},
    "done": {"out": str},
    "error": {"message": str, "kind": str},
    "heartbeat": {},
}


class ProtocolError(ValueError):
    """A line that is not a well-formed message, or a peer that speaks another version."""


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
    if kind == "error" and message["kind"] not in ERROR_KINDS:
        raise ProtocolError(f"'error' message: kind must be one of {ERROR_KINDS}, got {message['kind']!r}")
    return message


def encode(message: dict) -> bytes:
    """One message as one UTF-8 line ending in a newline."""
    check_message(message)
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(line) + 1 > MAX_LINE_BYTES:
        raise ProtocolError(f"'{message['type']}' message is {len(line)} bytes, over the "
                            f"{MAX_LINE_BYTES}-byte line limit")
    return line + b"\n"


def decode(line: bytes | str) -> dict:
    if isinstance(line, str):
        line = line.encode("utf-8")
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes is over the {MAX_LINE_BYTES}-byte limit")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line ({exc}): {_short(line)}") from None
    return check_message(message)


def _short(value) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = text.strip()
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


def error(message: str, kind: str, **extra) -> dict:
    if kind not in ERROR_KINDS:
        raise ValueError(f"kind must be one of {ERROR_KINDS}, got {kind!r}")
    return {"type": "error", "message": message, "kind": kind, **extra}


def heartbeat(**extra) -> dict:
    return {"type": "heartbeat", **extra}


# -- streams ---------------------------------------------------------------------------------

class MessageReader:
    """Messages from a binary stream (a pipe, or a socket's makefile('rb')); None at EOF."""

    def __init__(self, stream):
        self.stream = stream

    def read(self) -> dict | None:
        while True:
            line = self.stream.readline(MAX_LINE_BYTES + 1)
            if not line:
                return None
            if len(line) > MAX_LINE_BYTES:
                raise ProtocolError(f"line over the {MAX_LINE_BYTES}-byte limit")
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
