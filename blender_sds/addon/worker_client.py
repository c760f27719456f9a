"""One worker subprocess, and the reader thread that turns its stdout into a queue.

No bpy here, and no bpy may ever be called from the reader thread: it only decodes
lines and puts messages on a `queue.Queue`, which the main thread drains (a timer in
the UI, a blocking loop in `execute()`). Besides the protocol's messages the queue
carries two local ones that never travel on the wire:
  {"type": "protocol_error", "message": ...}   the worker wrote something that is not a message
  {"type": "worker_exit", "code": rc}           the worker's stdout closed; it has exited

remote_client.RemoteClient is the same client over TCP; session.Generation drives either through
start/submit/send/messages/stop and words its reports with `hint` and `describe_exit`.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading

from .. import protocol


class WorkerStartError(RuntimeError):
    pass


class MessageChannel:
    """What both worker transports share: a writer to send on, a queue the reader thread fills
    and only the main thread drains."""

    writer = None

    def send(self, message: dict) -> bool:
        """False when the worker can no longer hear us (it exited); its exit is queued anyway."""
        if self.writer is None:
            return False
        try:
            self.writer.write(message)
            return True
        except (OSError, ValueError):
            return False

    def messages(self, timeout: float | None = 0.0) -> list[dict]:
        """What arrived so far; waits up to `timeout` seconds for the first one (None: no wait)."""
        out = []
        try:
            if timeout:
                out.append(self.queue.get(timeout=timeout))
            while True:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        return out


class WorkerClient(MessageChannel):
    hint = ("Check Worker Python in the add-on preferences: it must be a Python with torch and diffusers "
            "installed")

    def __init__(self, argv: list[str], env: dict, cwd: str, log_path: str):
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.queue: queue.Queue = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.writer: protocol.MessageWriter | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         cwd=self.cwd, env=self.env, creationflags=flags)
        except OSError as exc:
            raise WorkerStartError(f"could not start {self.argv[0]}: {exc.strerror or exc}") from None
        finally:
            log.close()  # the child holds its own handle
        self.writer = protocol.MessageWriter(self.proc.stdin)
        self._reader = threading.Thread(target=self._read, name="sds-worker-reader", daemon=True)
        self._reader.start()
        self.send(protocol.hello("addon", pid=os.getpid()))

    def submit(self, job: dict, base_dir: str, out_dir: str, device: str | None) -> None:
        """Send the run: a local worker reads the job's files where they are."""
        self.send(protocol.run(job, base_dir, out_dir, device))

    def describe_exit(self, code, greeted: bool) -> str:
        tail = self.log_tail()
        said = f": {tail}" if tail else ""
        if not greeted:
            return (f"The worker exited at once (exit code {code}) before answering{said}. {self.hint} "
                    f"(full log: {self.log_path})")
        return (f"The worker stopped unexpectedly (exit code {code}){said}. It may have run out of memory: try "
                f"Low VRAM mode or the draft preset (full log: {self.log_path})")

    def _read(self) -> None:
        reader = protocol.MessageReader(self.proc.stdout)
        try:
            for message in reader:
                self.queue.put(message)
        except protocol.ProtocolError as exc:
            self.queue.put({"type": "protocol_error", "message": str(exc)})
            self.kill()
        except (OSError, ValueError):
            pass  # stdout closed under us: the exit below says what happened
        self.queue.put({"type": "worker_exit", "code": self.proc.wait()})

    def hang_up(self) -> None:
        """Close the worker's stdin: it stops its run and exits on its own."""
        if self.writer is not None:
            self.writer.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stop(self, grace: float = 3.0) -> None:
        """Hang up, then terminate, then kill: the worker is gone when this returns."""
        if self.proc is None:
            return
        self.hang_up()
        for action in (None, self.proc.terminate, self.proc.kill):
            if action is not None and self.proc.poll() is None:
                action()
            try:
                self.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(grace)

    def stop_soon(self, grace: float = 3.0) -> None:
        """stop() on a helper thread, so the main thread (Blender's UI) never waits for it."""
        threading.Thread(target=self.stop, args=(grace,), name="sds-worker-stop", daemon=True).start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the worker wrote to stderr: what a failure report quotes."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip() and "%|" not in ln]  # drop progress bars
        return " | ".join(kept[-lines:])
