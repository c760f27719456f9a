"""A bare protocol client and a `serve` subprocess for the remote-worker tests.

Deliberately not the add-on's RemoteClient (that one is tested inside Blender): these
tests speak the wire protocol by hand, so they can also send what no add-on would. The
client speaks TLS as `serve` does by default, without checking the certificate (the tests
that are about pinning use the add-on's client); `plain=True` for a `serve --plain`.
"""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from blender_sds import protocol
from blender_sds.engine.service.serve import FINGERPRINT_LINE, SEND_SECONDS

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789abcdef"
FINGERPRINTS: dict[int, str] = {}  # port -> the fingerprint that serve printed at start


def tls_context() -> ssl.SSLContext:
    """A client context that takes any certificate (what a test without pinning needs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context


class Client:
    def __init__(self, port: int, timeout: float = 60.0, *, plain: bool = False, host: str = "127.0.0.1",
                 source: str | None = None):
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        self.sock = sock if plain else tls_context().wrap_socket(sock)
        self.fingerprint = None if plain else protocol.certificate_fingerprint(self.sock.getpeercert(True))
        self.reader = protocol.MessageReader(self.sock.makefile("rb"))
        self.writer = protocol.MessageWriter(self.sock.makefile("wb"))

    def hello(self, token: str | None = TOKEN) -> dict | None:
        self.writer.write(protocol.hello("addon", **({"token": token} if token is not None else {})))
        return self.next()

    def send(self, message: dict) -> None:
        self.writer.write(message)

    def next(self, skip=("heartbeat",)) -> dict | None:
        while True:
            message = self.reader.read()
            if message is None or message["type"] not in skip:
                return message

    def until(self, kinds, collect=None, within: float = 600.0) -> dict:
        """Read until a message of one of `kinds`; earlier ones go into `collect`. The server's
        heartbeats keep the socket's timeout from firing, so `within` seconds bound the wait."""
        deadline = time.monotonic() + within
        while True:
            message = self.next()
            assert message is not None, f"connection closed while waiting for {kinds}"
            if message["type"] in kinds:
                return message
            assert time.monotonic() < deadline, f"no {kinds} within {within:g} s; last: {message}"
            if collect is not None:
                collect.append(message)

    def upload_folder(self, folder: Path, prefix: str) -> None:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                name = f"{prefix}/{path.relative_to(folder).as_posix()}"
                with open(path, "rb") as fh:
                    for message in protocol.chunks(name, fh, "upload"):
                        self.send(message)

    def hang_up(self) -> None:
        """EOF to the server (a TCP half-close, under TLS too): its last words can still be read."""
        socket.socket.shutdown(self.sock, socket.SHUT_WR)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def start_serve(tmp: Path, *args: str, token: str | None = TOKEN, env: dict | None = None):
    """(process, port) of `python -m blender_sds.engine serve`, in empty home/cwd folders under tmp."""
    for name in ("home", "cwd"):
        (tmp / name).mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "blender_sds.engine", "serve", "--port", "0", "--root", str(tmp / "root"), *args]
    if token is not None:
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        argv += ["--token-file", str(token_file)]
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp / "home"), "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "home" / "hf"), "TMPDIR": str(tmp / "cwd"),
                **(env or {})}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(tmp / "serve.log", "wb"), env=full_env,
                            cwd=tmp / "cwd", text=True)
    fingerprint = None
    line = proc.stdout.readline()
    if line.startswith(FINGERPRINT_LINE):
        fingerprint = line[len(FINGERPRINT_LINE):].strip()
        line = proc.stdout.readline()
    assert "listening on" in line, (line, (tmp / "serve.log").read_text())
    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    proc.fingerprint = fingerprint
    if fingerprint:
        FINGERPRINTS[port] = fingerprint
    return proc, port


def stop_serve(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def files_outside(tmp: Path, allowed=("root", "serve.log", "token")) -> list[str]:
    """Files under tmp that are not in the allowed places (what a server must never write)."""
    out = []
    for root, _dirs, files in os.walk(tmp):
        rel = Path(root).relative_to(tmp)
        if rel.parts and rel.parts[0] in allowed:
            continue
        out += [str(rel / f) for f in files if not (not rel.parts and f in allowed)]
    return out


def wait_for(predicate, seconds: float, poll: float = 0.2):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return predicate()


def takes_new_jobs(port: int) -> bool:
    """Whether the server is free: its hello says no job is running or waiting."""
    probe = Client(port)
    hello = probe.hello()
    probe.close()
    PROBE_REPLIES.append(hello)
    return hello.get("queue") == {"running": 0, "waiting": 0}


PROBE_REPLIES: list = []  # what takes_new_jobs heard, for a failure's message

# A run stops at its next step; a send to a peer that stopped reading gives up after SEND_SECONDS.
FREED_WITHIN = SEND_SECONDS + 60


def why_busy(tmp: Path) -> str:
    """The last probe answer, each job's status and the server log's tail: what a 'stayed busy' failure needs."""
    statuses = {p.parent.parent.name: p.read_text().strip()
                for p in sorted((tmp / "root" / "jobs").glob("*/out/status.json"))}
    log = (tmp / "serve.log").read_text(errors="replace")[-3000:] if (tmp / "serve.log").exists() else ""
    return f"last probe answer: {PROBE_REPLIES[-1:]}\njob statuses: {statuses}\nserve.log tail:\n{log}"
