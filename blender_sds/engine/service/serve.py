"""The remote worker: the add-on protocol over TCP, for a GPU box the artist's Blender reaches.

    python -m blender_sds.engine serve [--host 127.0.0.1] [--port 8765] [--token-file FILE]
                                       [--root DIR] [--max-upload-mb 2048]

Each connection gets the same `Worker` the pipe worker runs (worker.py), over the
socket's two streams, with the remote rules of sandbox.py: the token first, then only
hub ids and uploaded files, folders the server names itself, results sent back as data,
one job at a time. The token comes from --token-file or the SDS_WORKER_TOKEN environment
variable, never from the command line (other users can read a process's arguments).
Without a token the server binds only to loopback; on any other address it refuses to
start. The token travels in the clear: across a network, use an SSH tunnel or a VPN.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import stat
import struct
import sys
import threading
from pathlib import Path

from ... import protocol
from .sandbox import JobSlot, SandboxWorkspace
from .worker import Refused, Worker

DEFAULT_PORT = 8765
HELLO_SECONDS = 10.0  # a peer that has not shown its token by then is dropped
SEND_SECONDS = 60.0  # a peer that stops reading for this long is gone (its run is stopped)
MAX_CONNECTIONS = 8
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "SDS_WORKER_TOKEN"


class ServeError(Exception):
    """A setting that stops the server from starting (exit code 2, one line on stderr)."""


def default_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "blender-sds" / "serve"


def read_token(token_file: str | None) -> str | None:
    """The token from --token-file, else from SDS_WORKER_TOKEN, else None."""
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServeError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ServeError(f"--token-file: {path} can be read by other users: chmod 600 {path}")
        token = text
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
        if token is None:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        where = "--token-file" if token_file else TOKEN_ENV
        raise ServeError(f"{where}: the token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
                         "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    return token


def is_loopback(host: str) -> bool:
    """True when every address `host` names is this machine's loopback."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


class Server:
    def __init__(self, host: str, port: int, token: str | None, root: Path, *,
                 max_upload_bytes: int, keep_jobs: int = 20, heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS,
                 engine=None):
        if token is None and not is_loopback(host):
            raise ServeError(f"--host {host}: not a loopback address, and no token is set: put a secret in a "
                             f"file only you can read and pass --token-file FILE (or set {TOKEN_ENV})")
        self.token = token
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ServeError(f"--root: cannot create {self.root}: {exc.strerror or exc}") from None
        self.max_upload_bytes = max_upload_bytes
        self.keep_jobs = keep_jobs
        self.heartbeat_seconds = heartbeat_seconds
        self.engine = engine
        self.slot = JobSlot()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.workers: set[Worker] = set()
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ServeError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.listen(MAX_CONNECTIONS)
        self.address = self.sock.getsockname()[:2]

    def serve_forever(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # closed by close()
            if not self.connections.acquire(blocking=False):
                threading.Thread(target=self._turn_away, args=(conn,), daemon=True).start()
                continue
            threading.Thread(target=self._converse, args=(conn, peer), name=f"sds-conn-{peer[1]}",
                             daemon=True).start()

    def _turn_away(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5.0)
                conn.sendall(protocol.encode(Refused(f"busy: this remote worker already has {MAX_CONNECTIONS} "
                                                     "connections", "busy", kind="failed").as_message()))
            except OSError:
                pass

    def _converse(self, conn: socket.socket, peer) -> None:
        try:
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                _send_timeout(conn, SEND_SECONDS)
                reader = protocol.MessageReader(conn.makefile("rb"), max_bytes=protocol.HELLO_MAX_BYTES)
                writer = protocol.MessageWriter(conn.makefile("wb"))
                # A whole-hello deadline (a per-read timeout would let a peer trickle bytes forever).
                deadline = threading.Timer(HELLO_SECONDS, _hang_up, args=(conn,))
                deadline.daemon = True
                deadline.start()

                workspace = SandboxWorkspace(self.root, self.slot, self.token, max_upload_bytes=self.max_upload_bytes,
                                             keep_jobs=self.keep_jobs, reader=reader, on_admit=deadline.cancel)
                worker = Worker(reader, writer, self.heartbeat_seconds, workspace=workspace, engine=self.engine)
                with self._lock:
                    self.workers.add(worker)
                try:
                    worker.serve()
                finally:
                    deadline.cancel()
                    with self._lock:
                        self.workers.discard(worker)
                    writer.close()
                    reader.stream.close()  # the last reference: unread bytes now reset the peer
        except OSError:
            pass  # the peer vanished; the worker has already stopped its run
        finally:
            self.connections.release()

    def close(self) -> None:
        """Stop listening and ask every run to stop (each keeps its last checkpoint)."""
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            for worker in self.workers:
                worker.stop.set()


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _send_timeout(conn: socket.socket, seconds: float) -> None:
    """Bound blocking sends only (reads stay unbounded): Linux/macOS SO_SNDTIMEO."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(seconds), 0))
    except (OSError, AttributeError, struct.error):
        pass


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any)")
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the secret clients must send (or set {TOKEN_ENV}); never on the "
                             "command line")
    parser.add_argument("--root", default=None, help=f"where job folders are made (default {default_root()})")
    parser.add_argument("--max-upload-mb", type=int, default=2048, help="upload budget per job, MiB")
    parser.add_argument("--keep-jobs", type=int, default=20, help="job folders kept (oldest removed first)")


def main(args) -> int:
    """`serve` from __main__.py: listen until interrupted. Bad settings: exit 2, one line."""
    try:
        token = read_token(args.token_file)
        if args.max_upload_mb < 1:
            raise ServeError(f"--max-upload-mb: must be at least 1, got {args.max_upload_mb}")
        server = Server(args.host, args.port, token, Path(args.root) if args.root else default_root(),
                        max_upload_bytes=args.max_upload_mb * 2**20, keep_jobs=args.keep_jobs)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.address
    print(f"SDS worker listening on {host}:{port} (token {'required' if token else 'not set: loopback only'}; "
          f"jobs in {server.root})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        server.close()
    return 0
