"""The remote worker: the add-on protocol over TLS, for a GPU box a team's Blenders share.

    python -m blender_sds.engine serve [--host 127.0.0.1] [--port 8765] [--token-file FILE]
                                       [--root DIR] [--max-upload-mb 2048] [--plain]
                                       [--max-queue 16] [--max-queue-per-token 8] [--max-clients 32]
                                       [--hello-seconds 5] [--max-unauthenticated 128]
                                       [--max-unauthenticated-per-address 16]

A connection first passes the admission gate (admission.py: the TLS handshake and a hello
with a right token, within a short deadline and a budget of its own). Then it gets the same
`Worker` the pipe worker runs (worker.py), over the socket, with the remote rules of
sandbox.py: only hub ids and uploaded files, folders the server names itself, results sent
back as data; its jobs wait their turn in the server's queue (job_queue.py).

TLS is on unless --plain: the certificate is made on first start in ROOT/tls (tls.py) and
its fingerprint printed, for the artists to pin. The tokens come from --token-file (one
per line) or SDS_WORKER_TOKEN, never the command line (other users can read a process's
arguments). Without a token, or with --plain, the server binds only to loopback.
"""
from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ... import protocol
from .admission import Gate, GateLimits
from .job_queue import JobQueue
from .sandbox import SandboxWorkspace
from .tls import TlsError, ensure_certificate, server_context
from .tokens import TOKEN_ENV, TokenError, as_tokens, read_tokens
from .worker import Refused, Worker

DEFAULT_PORT = 8765
SEND_SECONDS = 60.0  # a peer that stops reading for this long is gone (its run is stopped)
MAX_CLIENTS = 32  # connections that showed the token, at once
MAX_QUEUE = 16  # jobs waiting behind the running one
MAX_QUEUE_PER_TOKEN = 8  # jobs one token may have waiting or running
FINGERPRINT_LINE = "TLS certificate SHA-256 fingerprint: "


class ServeError(Exception):
    """A setting that stops the server from starting (exit code 2, one line on stderr)."""


def default_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "blender-sds" / "serve"


class Server:
    def __init__(self, host: str, port: int, tokens, root: Path, *,
                 max_upload_bytes: int, keep_jobs: int = 20, heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS,
                 engine=None, tls: bool = True, max_queue: int = MAX_QUEUE,
                 max_queue_per_token: int = MAX_QUEUE_PER_TOKEN, max_clients: int = MAX_CLIENTS,
                 gate: GateLimits = GateLimits(), send_seconds: float = SEND_SECONDS):
        if tokens is None and not protocol.is_loopback(host):
            raise ServeError(f"--host {host}: not a loopback address, and no token is set: put a secret in a "
                             f"file only you can read and pass --token-file FILE (or set {TOKEN_ENV})")
        if not tls and not protocol.is_loopback(host):
            raise ServeError(f"--plain: refused on --host {host}, which is not a loopback address: the token would "
                             "cross the network in clear. Leave out --plain (the add-on pins the certificate's "
                             "fingerprint), or listen on 127.0.0.1 and reach it through ssh -L")
        self.tokens = as_tokens(tokens)
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ServeError(f"--root: cannot create {self.root}: {exc.strerror or exc}") from None
        self.fingerprint: str | None = None
        context = None
        if tls:
            try:
                certificate = ensure_certificate(self.root / "tls")
                context = server_context(certificate)
            except TlsError as exc:
                raise ServeError(f"TLS: {exc}") from None
            self.fingerprint = certificate.fingerprint
        self.max_upload_bytes = max_upload_bytes
        self.keep_jobs = keep_jobs
        self.heartbeat_seconds = heartbeat_seconds
        self.engine = engine
        self.queue = JobQueue(max_queue, max_queue_per_token)
        self.max_clients = max_clients
        self.clients = threading.BoundedSemaphore(max_clients)
        self.workers: set[Worker] = set()
        self.watch = _StalledSends(send_seconds)
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise ServeError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.listen(socket.SOMAXCONN)
        self.address = self.sock.getsockname()[:2]
        self.gate = Gate(self.sock, context, self.tokens.admit, self._take, gate)

    def serve_forever(self) -> None:
        self.watch.start()
        self.gate.run()

    def _take(self, conn, peer, hello: dict, leftover: bytes) -> dict | None:
        """A connection that showed the token gets its own session, if there is room for one."""
        if not self.clients.acquire(blocking=False):
            return Refused(f"busy: this remote worker already has {self.max_clients} clients connected "
                           "(--max-clients); try again when one has finished", "busy", kind="failed").as_message()
        try:
            conn.setblocking(True)
            threading.Thread(target=self._converse, args=(conn, peer, hello, leftover),
                             name=f"sds-conn-{peer[1]}", daemon=True).start()
        except BaseException:
            self.clients.release()
            raise
        return None

    def _converse(self, conn, peer, hello: dict, leftover: bytes) -> None:
        try:
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw = conn.makefile("rb", buffering=0)
                reader = protocol.MessageReader(io.BufferedReader(_Replay(leftover, raw) if leftover else raw))
                writer = protocol.MessageWriter(_WatchedWriter(conn, self.watch))
                workspace = SandboxWorkspace(self.root, self.queue, self.tokens,
                                             max_upload_bytes=self.max_upload_bytes, keep_jobs=self.keep_jobs)
                worker = Worker(reader, writer, self.heartbeat_seconds, workspace=workspace, engine=self.engine)
                with self._lock:
                    self.workers.add(worker)
                try:
                    worker.serve(first=hello)
                finally:
                    with self._lock:
                        self.workers.discard(worker)
                    writer.close()
                    reader.stream.close()  # then the socket: unread bytes now reset the peer
        except OSError:
            pass  # the peer vanished; the worker has already stopped its run
        finally:
            self.clients.release()

    def close(self) -> None:
        """Stop listening and ask every run to stop (each keeps its last checkpoint)."""
        self.gate.close()
        try:
            self.sock.close()
        except OSError:
            pass
        self.watch.close()
        with self._lock:
            for worker in self.workers:
                worker.stop.set()


class _Replay(io.RawIOBase):
    """A socket's reading side with the bytes the gate read past the hello put back in front."""

    def __init__(self, first: bytes, raw):
        self.first = first
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.first:
            n = min(len(buffer), len(self.first))
            buffer[:n], self.first = self.first[:n], self.first[n:]
            return n
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _WatchedWriter:
    """Whole writes to the socket, each watched: a peer that stops reading for SEND_SECONDS is
    cut off (a socket send timeout cannot do this under TLS: the TLS layer retries forever)."""

    def __init__(self, conn, watch: "_StalledSends"):
        self.conn = conn
        self.watch = watch

    def write(self, data: bytes) -> None:
        self.watch.begin(self.conn)
        try:
            self.conn.sendall(data)
        finally:
            self.watch.end(self.conn)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # the session closes the socket itself


class _StalledSends:
    """One thread for the whole server: cuts off a connection whose send has hung too long."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sending: dict = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sds-stalled-sends", daemon=True)
            self._thread.start()

    def begin(self, conn) -> None:
        with self._lock:
            self.sending[conn] = time.monotonic()

    def end(self, conn) -> None:
        with self._lock:
            self.sending.pop(conn, None)

    def close(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(min(1.0, self.seconds / 4)):
            now = time.monotonic()
            with self._lock:
                stalled = [c for c, since in self.sending.items() if now - since > self.seconds]
            for conn in stalled:
                try:
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)  # the hung send fails; the run stops
                except OSError:
                    pass


def add_arguments(parser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs a token, and TLS)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any)")
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the secrets clients must send, one per line (or set {TOKEN_ENV}); "
                             "never on the command line")
    parser.add_argument("--root", default=None, help=f"where job folders and the TLS certificate are kept "
                                                     f"(default {default_root()})")
    parser.add_argument("--max-upload-mb", type=int, default=2048, help="upload budget per job, MiB")
    parser.add_argument("--keep-jobs", type=int, default=20, help="job folders kept (oldest removed first)")
    parser.add_argument("--plain", action="store_true",
                        help="plain TCP instead of TLS; only on a loopback address (e.g. behind ssh -L)")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                        help=f"jobs that may wait behind the running one (default {MAX_QUEUE})")
    parser.add_argument("--max-queue-per-token", type=int, default=MAX_QUEUE_PER_TOKEN,
                        help=f"jobs one token may have waiting or running (default {MAX_QUEUE_PER_TOKEN})")
    parser.add_argument("--max-clients", type=int, default=MAX_CLIENTS,
                        help=f"connections that showed the token, at once (default {MAX_CLIENTS})")
    limits = GateLimits()
    parser.add_argument("--hello-seconds", type=float, default=limits.seconds,
                        help="seconds a new connection has to finish TLS and show the token "
                             f"(default {limits.seconds:g})")
    parser.add_argument("--max-unauthenticated", type=int, default=limits.total,
                        help=f"connections that have not yet shown the token, at once (default {limits.total})")
    parser.add_argument("--max-unauthenticated-per-address", type=int, default=limits.per_address,
                        help=f"... from one address (default {limits.per_address})")


def _limits(args) -> dict:
    """The bounds from the command line, each checked by name."""
    for flag, value, least in (("--max-upload-mb", args.max_upload_mb, 1), ("--max-queue", args.max_queue, 0),
                               ("--max-queue-per-token", args.max_queue_per_token, 1),
                               ("--max-clients", args.max_clients, 1),
                               ("--max-unauthenticated", args.max_unauthenticated, 1),
                               ("--max-unauthenticated-per-address", args.max_unauthenticated_per_address, 1)):
        if value < least:
            raise ServeError(f"{flag}: must be at least {least}, got {value}")
    if not 0.1 <= args.hello_seconds <= 600:
        raise ServeError(f"--hello-seconds: must be between 0.1 and 600, got {args.hello_seconds:g}")
    return {"max_upload_bytes": args.max_upload_mb * 2**20, "keep_jobs": args.keep_jobs, "tls": not args.plain,
            "max_queue": args.max_queue, "max_queue_per_token": args.max_queue_per_token,
            "max_clients": args.max_clients,
            "gate": GateLimits(args.hello_seconds, args.max_unauthenticated, args.max_unauthenticated_per_address)}


def main(args) -> int:
    """`serve` from __main__.py: listen until interrupted. Bad settings: exit 2, one line."""
    try:
        tokens = read_tokens(args.token_file)
        server = Server(args.host, args.port, tokens, Path(args.root) if args.root else default_root(),
                        **_limits(args))
    except (ServeError, TokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.address
    if server.fingerprint:
        print(f"{FINGERPRINT_LINE}{server.fingerprint}", flush=True)
    who = f"{len(tokens)} token{'s' if len(tokens) > 1 else ''}" if tokens else "no token: loopback only"
    print(f"SDS worker listening on {host}:{port} ({'TLS' if server.fingerprint else 'plain TCP: loopback only'}; "
          f"{who}; queue {server.queue.max_waiting}, {server.queue.max_per_owner} per token; "
          f"jobs in {server.root})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        server.close()
    return 0
