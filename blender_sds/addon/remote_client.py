"""The worker client over TCP: a remote `python -m blender_sds.engine serve`.

The same shape as worker_client.WorkerClient (start, submit, send, messages, stop), so
session.Generation follows a remote job with the same code. No bpy here (threads only). What
differs is the files: the remote worker cannot read ours, and we must not trust its
paths. So `submit` uploads the job's local files (a model folder, a checkpoint to refine
from, a start mesh, reference images) and rewrites the job to name them (the worker's
messages name our files again: an upload's name becomes our path), and the reader thread writes
the `file` messages the worker sends back into our own run folder (only the known result
names, in order, within a size limit), then hands the session local paths. `job.json`
there is our own normalised job, with our paths, which is what Refine reads later.

The connection is TLS, and the server's certificate is pinned like an SSH host key: its
SHA-256 fingerprint must be the one the artist pasted from `serve`'s start-up line, or
nothing (not even the token) is sent. No CA is consulted: a team's GPU box has none. Plain
TCP (`tls=False`) is for a loopback address only (the local end of an SSH tunnel), so a
token never crosses a network in clear. A `queued` message (the job's place in the
server's queue) reaches the session like the run's other messages.
"""
from __future__ import annotations

import copy
import hmac
import json
import os
import queue
import socket
import ssl
import threading
import time

from .. import job as job_schema
from .. import protocol, results
from .worker_client import MessageChannel

CONNECT_SECONDS = 10.0  # to connect and finish the TLS handshake
HELLO_SECONDS = 30.0
MAX_RESULT_BYTES = 8 * 2**30  # a result file bigger than this is not one of ours
REMOTE_PREFS = "Edit > Preferences > Add-ons > SDS Text to Mesh > Remote Worker"
FINGERPRINT_PREF = f"{REMOTE_PREFS} > Fingerprint"


class RemoteClient(MessageChannel):
    def __init__(self, host: str, port: int, token: str, out_dir: str, log_path: str, *,
                 fingerprint: str = "", tls: bool = True):
        self.host = host
        self.port = port
        self.token = token
        self.out_dir = out_dir
        self.log_path = log_path
        self.fingerprint = fingerprint
        self.tls = tls
        self.certificate: str | None = None  # the fingerprint of the certificate we accepted
        self.where = f"{host}:{port}"
        self.hint = (f"Check Address, Token and Fingerprint of the remote worker in the add-on preferences, and that "
                     f"'python -m blender_sds.engine serve' runs at {self.where}")
        self.queue: queue.Queue = queue.Queue()
        self.sock: socket.socket | None = None
        self.writer: protocol.MessageWriter | None = None
        self.greeted = threading.Event()
        self.closed = threading.Event()
        self.submitted = threading.Event()
        self.cancelled = threading.Event()
        self._reader: threading.Thread | None = None
        self._receiving: dict[str, int] = {}
        self._uploads: list[tuple[str, str]] = []  # (upload name, our path), for the worker's messages
        self._log_lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------------
    def start(self) -> None:
        from .worker_client import WorkerStartError
        pinned = None
        if not self.tls and not protocol.is_loopback(self.host):
            raise WorkerStartError(f"TLS is off, and {self.host} is not this machine: the token would cross the "
                                   f"network in clear. Turn TLS on ({REMOTE_PREFS} > TLS) and start serve without "
                                   "--plain, or reach it through an SSH tunnel (ssh -L 8765:localhost:8765) at "
                                   "127.0.0.1")
        if self.tls and self.fingerprint.strip():
            try:
                pinned = protocol.fingerprint_digest(self.fingerprint)
            except ValueError as exc:
                raise WorkerStartError(f"Fingerprint: {exc}; set it in {FINGERPRINT_PREF}") from None
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_SECONDS)
        except OSError as exc:
            raise WorkerStartError(f"could not connect to the remote worker at {self.where}: "
                                   f"{exc.strerror or exc}") from None
        if self.tls:
            sock = self._pin(sock, pinned)  # before a byte of ours (the token) is sent
        self.sock = sock
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.log(f"connected to {self.where}" + (f" (TLS, certificate SHA-256 {self.certificate})" if self.tls
                                                 else " (plain TCP)"))
        self.writer = protocol.MessageWriter(self.sock.makefile("wb"))
        self._reader = threading.Thread(target=self._read, name="sds-remote-reader", daemon=True)
        self._reader.start()
        self.send(protocol.hello("addon", **({"token": self.token} if self.token else {})))

    def _pin(self, sock: socket.socket, pinned: bytes | None) -> ssl.SSLSocket:
        """The TLS connection, if the server's certificate is the pinned one; else WorkerStartError
        naming the certificate it showed and where its fingerprint goes (as SSH does for a host key)."""
        from .worker_client import WorkerStartError
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # no CA signs a team's GPU box: the fingerprint below is the check
        context.verify_mode = ssl.CERT_NONE
        context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)  # the server's close is the end
        try:
            tls = context.wrap_socket(sock, server_hostname=None)
            der = tls.getpeercert(binary_form=True)
        except (OSError, ValueError) as exc:
            sock.close()
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise WorkerStartError(f"could not make a TLS connection to the remote worker at {self.where} "
                                   f"({reason}). If it was started with --plain, start it without (or turn TLS "
                                   f"off for a loopback address: {REMOTE_PREFS} > TLS)") from None
        shown = protocol.certificate_fingerprint(der or b"")
        if pinned is not None and hmac.compare_digest(protocol.certificate_digest(der or b""), pinned):
            self.certificate = shown
            return tls
        tls.close()
        self.log(f"refused the certificate of {self.where}: SHA-256 {shown}")
        if pinned is None:
            raise WorkerStartError(
                f"no Fingerprint is set for the remote worker at {self.where}, so its certificate cannot be "
                f"trusted (nothing was sent). It shows SHA-256 fingerprint {shown}. Check that this is the one "
                f"'serve' printed when it started ('TLS certificate SHA-256 fingerprint: ...'); if it is, put it "
                f"in {FINGERPRINT_PREF}")
        raise WorkerStartError(
            f"the remote worker at {self.where} shows a certificate with SHA-256 fingerprint {shown}, not the "
            f"Fingerprint set in the preferences ({protocol.shown_fingerprint(pinned)}). "
            "Someone may be intercepting the connection, or the server made a new certificate (its tls folder "
            "was removed). Nothing was sent, not even the token. Ask whoever runs the server which fingerprint "
            f"'serve' printed; only if it is {shown}, put it in {FINGERPRINT_PREF}")

    def send(self, message: dict) -> bool:
        if message.get("type") == "cancel" and not self.submitted.is_set():
            self.cancelled.set()  # the upload stops and the run is never sent
            return True
        return super().send(message)

    def hang_up(self) -> None:
        """Tell the worker we are done (EOF): it stops the job and closes its side. A TCP
        half-close under TLS too (the server reads it as the end), so its last words still
        reach the reader thread."""
        if self.sock is not None:
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_WR)
            except OSError:
                pass

    def kill(self) -> None:
        if self.sock is not None:
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self, grace: float = 3.0) -> None:
        """Hang up, wait for the worker to close, then drop the connection."""
        if self.sock is None:
            return
        self.cancelled.set()
        self.hang_up()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(grace)
        self.kill()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(grace)
        if self.writer is not None:
            self.writer.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def stop_soon(self, grace: float = 3.0) -> None:
        threading.Thread(target=self.stop, args=(grace,), name="sds-remote-stop", daemon=True).start()

    @property
    def running(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def describe_exit(self, code, greeted: bool) -> str:
        tail = self.log_tail()
        said = f": {tail}" if tail else ""
        if not greeted:
            return f"The remote worker at {self.where} closed the connection before answering{said}. {self.hint}"
        return (f"The connection to the remote worker at {self.where} was lost{said}. The worker or its machine "
                f"may have stopped; a job it was running is stopped there (log: {self.log_path})")

    # -- the job out -----------------------------------------------------------------------------
    def submit(self, job: dict, base_dir: str, out_dir: str, device: str | None) -> None:
        """Upload the job's files and send the run, on a thread (uploads can take a while)."""
        threading.Thread(target=self._submit, args=(job, base_dir, device), name="sds-remote-upload",
                         daemon=True).start()

    def _submit(self, job: dict, base_dir: str, device: str | None) -> None:
        try:
            normal = job_schema.validate_job(job, base_dir)
            _write_json(os.path.join(self.out_dir, results.JOB_FILE), normal)
            remote_job, files = remote_form(normal)
            self._uploads = sorted(files, key=lambda f: -len(f[0]))  # longest first: no name inside another
            deadline = time.monotonic() + HELLO_SECONDS
            while not self.greeted.wait(0.1):  # uploads only once the worker has let us in
                if self.closed.is_set() or self.cancelled.is_set() or time.monotonic() > deadline:
                    return
            if self.cancelled.is_set():
                return
            total = sum(os.path.getsize(path) for _, path in files)
            if files:
                self.queue.put({"type": "stage", "name": f"uploading {len(files)} files ({total / 2**20:.1f} MiB)"})
            for name, path in files:
                with open(path, "rb") as fh:
                    for message in protocol.chunks(name, fh, "upload"):
                        if self.cancelled.is_set():
                            break
                        self.writer.write(message)
                if self.cancelled.is_set():
                    break
            if self.cancelled.is_set():
                self.queue.put(protocol.error("cancelled before the job was sent", "cancelled", "cancelled"))
                return
            self.writer.write(protocol.run(remote_job, "", "", device))
            self.submitted.set()
            if self.cancelled.is_set():  # a cancel that came while the run was being sent
                self.send(protocol.cancel())
        except ValueError as exc:  # a JobError (naming its key), or a name the worker would refuse
            key = exc.key if isinstance(exc, job_schema.JobError) else None
            self.queue.put(protocol.error(f"the job cannot go to a remote worker: {exc}", "bad_input",
                                          "job" if key else "input", key))
        except OSError as exc:
            if not self.cancelled.is_set():
                self.log(f"upload failed: {exc}")
                self.queue.put(protocol.error(f"could not send the job to {self.where}: {exc.strerror or exc}",
                                              "failed", "upload"))

    # -- the results in ----------------------------------------------------------------------------
    def _read(self) -> None:
        reader = protocol.MessageReader(self.sock.makefile("rb"))
        reason = "it closed the connection"
        try:
            for message in reader:
                kind = message["type"]
                if kind == "hello":
                    self.greeted.set()
                elif kind == "queued":
                    self.log(f"queued: {message['position']} of {message['length']} waiting")
                elif kind == "file":
                    self._receive(message)
                    continue
                elif kind == "preview":
                    message = {**message, "path": self._local(message["path"])}
                elif kind == "checkpoint":
                    message = {**message, "path": self._local(message["path"])}
                elif kind == "done":
                    message = {**message, "out": self.out_dir}
                elif kind == "error":
                    message = {**message, "message": self._ours(message["message"])}
                    self.log(f"worker error: {message['message']}")
                    if isinstance(message.get("traceback"), str):
                        self.log(message["traceback"])
                self.queue.put(message)
        except protocol.ProtocolError as exc:
            self.log(f"protocol error: {exc}")
            self.queue.put({"type": "protocol_error", "message": str(exc)})
            self.kill()
        except (OSError, ValueError) as exc:
            reason = f"connection error: {exc}"
        self.log(f"disconnected ({reason})")
        self.closed.set()
        self.queue.put({"type": "worker_exit", "code": None})

    def _ours(self, text: str) -> str:
        """A worker's message with the names of our uploads turned back into our own paths."""
        for name, path in self._uploads:
            text = text.replace(name, path)
        return text

    def _local(self, name: str) -> str:
        """Our path for a result file the worker named (only names we accept)."""
        base = os.path.basename(str(name))
        return os.path.join(self.out_dir, base) if base in results.RESULT_FILES else ""

    def _receive(self, message: dict) -> None:
        name, offset, size = message["name"], message["offset"], message["size"]
        if name not in results.RESULT_FILES:
            raise protocol.ProtocolError(f"the remote worker sent a file named {name[:80]!r}, which is not a "
                                         f"result file ({', '.join(results.RESULT_FILES)})")
        if not 0 <= size <= MAX_RESULT_BYTES:
            raise protocol.ProtocolError(f"the remote worker sent {name} of {size} bytes, over the limit")
        data = protocol.chunk_bytes(message)
        have = self._receiving.get(name, 0) if offset else 0
        if offset != have or offset + len(data) > size:
            raise protocol.ProtocolError(f"the remote worker sent {name} out of order (offset {offset}, "
                                         f"expected {have}, size {size})")
        part = os.path.join(self.out_dir, f".{name}.part")
        with open(part, "ab" if offset else "wb") as fh:
            fh.write(data)
        self._receiving[name] = offset + len(data)
        if offset + len(data) == size:
            os.replace(part, os.path.join(self.out_dir, name))
            self._receiving.pop(name, None)

    # -- log -------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        with self._log_lock:
            try:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            except OSError:
                pass

    def log_tail(self, lines: int = 2) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()[-8192:]
        except OSError:
            return ""
        kept = [ln.split(" ", 1)[-1] for ln in text.splitlines()
                if ln.strip() and "connected to" not in ln and "disconnected" not in ln]
        return " | ".join(kept[-lines:])


def remote_form(job: dict) -> tuple[dict, list[tuple[str, str]]]:
    """(the job naming uploads instead of our paths, [(upload name, local path)]).

    `job` is normalised: its local paths are absolute, hub ids are not paths."""
    job = copy.deepcopy(job)
    files: list[tuple[str, str]] = []
    guidance = job["guidance"]
    for key, prefix in (("model", "model"), ("config", "config")):
        value = guidance[key]
        if value is None or not os.path.isabs(value):
            continue  # a hub id: the worker fetches it
        if os.path.isdir(value):
            files += _folder_files(value, prefix)
            guidance[key] = prefix
        else:
            if not value.lower().endswith(".safetensors"):
                raise job_schema.JobError(f"guidance.{key}", "a remote worker loads single-file models only as "
                                                             f".safetensors (no pickle), got {value}")
            name = f"{prefix}/{_plain(os.path.basename(value))}"
            files.append((name, value))
            guidance[key] = name
    for i, view in enumerate(guidance["views"]):
        name = f"views/{i:03d}-{_plain(os.path.basename(view['image']))}"
        files.append((name, view["image"]))
        view["image"] = name
    if job["init"]["checkpoint"]:
        name = f"init/{results.CHECKPOINT_FILE}"
        files.append((name, job["init"]["checkpoint"]))
        job["init"]["checkpoint"] = name
    mesh = job["init"].get("mesh")
    if mesh:
        if not mesh.lower().endswith(".npz"):
            raise job_schema.JobError("init.mesh", f"a remote worker takes a start mesh only as .npz (numpy arrays, "
                                                   f"no pickle), got {os.path.basename(mesh)}: save it as .npz, or "
                                                   "run on a local worker")
        name = f"init/{_plain(os.path.basename(mesh))}"
        files.append((name, mesh))
        job["init"]["mesh"] = name
    for name, _ in files:
        protocol.check_name(name)
    return job, files


def _folder_files(folder: str, prefix: str) -> list[tuple[str, str]]:
    """A model folder's data files (what the worker accepts); .bin, code and hidden files stay home."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(protocol.UPLOAD_SUFFIXES):
                continue
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            try:
                out.append((protocol.check_name(f"{prefix}/{rel}"), os.path.join(root, name)))
            except protocol.ProtocolError:
                continue  # a name the worker would refuse (odd characters): not a model file
    return out


def _plain(name: str) -> str:
    keep = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in name).lstrip("._-")
    return keep or "file"


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)
