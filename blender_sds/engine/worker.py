"""The worker: runs jobs for the add-on, speaking blender_sds.protocol over stdin/stdout.

`python -m blender_sds.engine worker` ends up in `main()`. The add-on starts it with a
Python that has torch, sends `hello` then `run`, reads events, may send `cancel`, and
closes stdin to make it exit. The run happens on a thread so `cancel` and EOF are read
while the engine works; every write goes through one locked writer.

Protocol bytes own the real stdout: at start the worker moves fd 1 aside and points it
at stderr, so a stray print or a C library's chatter (tqdm, warnings) cannot corrupt the
message stream.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

from .. import protocol
from ..job import JobError, validate_job

EOF_JOIN_SECONDS = 30.0  # after the add-on hangs up, how long a run gets to notice should_stop


class Worker:
    def __init__(self, reader: protocol.MessageReader, writer: protocol.MessageWriter,
                 heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS):
        self.reader = reader
        self.writer = writer
        self.heartbeat_seconds = heartbeat_seconds
        self.stop = threading.Event()  # the current run should stop
        self.closing = threading.Event()  # the conversation is over
        self.run_thread: threading.Thread | None = None

    def send(self, message: dict) -> None:
        try:
            self.writer.write(message)
        except (OSError, ValueError):
            # The add-on is gone (broken pipe) or the stream is closed: stop what we do.
            self.stop.set()
            self.closing.set()

    def busy(self) -> bool:
        return self.run_thread is not None and self.run_thread.is_alive()

    # -- the conversation -------------------------------------------------------------------
    def serve(self) -> int:
        self.send(protocol.hello("worker", pid=os.getpid(), python=sys.version.split()[0]))
        beat = threading.Thread(target=self._heartbeat, name="sds-heartbeat", daemon=True)
        beat.start()
        try:
            first = self.reader.read()
            if first is None:
                return 0
            protocol.check_hello(first, "addon")
            for message in self.reader:
                kind = message["type"]
                if kind == "run":
                    self._start_run(message)
                elif kind == "cancel":
                    self.stop.set()
                # unknown types are ignored (a newer add-on may send more)
        except protocol.ProtocolError as exc:
            self.send(protocol.error(f"protocol: {exc}", "failed"))
            return 2
        finally:
            self.stop.set()
            if self.run_thread is not None:
                self.run_thread.join(EOF_JOIN_SECONDS)
            self.closing.set()
        return 0

    def _heartbeat(self) -> None:
        while not self.closing.wait(self.heartbeat_seconds):
            self.send(protocol.heartbeat(busy=self.busy()))

    def _start_run(self, message: dict) -> None:
        if self.busy():
            self.send(protocol.error("a run is already going in this worker: cancel it first", "bad_input"))
            return
        try:
            job = validate_job(message["job"], message["base_dir"])
        except JobError as exc:
            self.send(protocol.error(str(exc), "bad_input", key=exc.key))
            return
        except Exception as exc:  # a validator bug must not take the conversation down
            traceback.print_exc()
            self.send(protocol.error(f"could not read the job: {type(exc).__name__}: {exc}", "failed"))
            return
        self.stop.clear()
        self.run_thread = threading.Thread(target=self._run, args=(job, message["out"], message.get("device")),
                                           name="sds-run", daemon=True)
        self.run_thread.start()

    def _run(self, job: dict, out: str, device: str | None) -> None:
        try:
            from .run import JobCancelled, run_job
        except ImportError as exc:
            self.send(protocol.error(
                f"this Python cannot load the engine ({exc}); install the worker packages into it "
                f"(vendor/requirements-worker.txt: torch, diffusers, ...)", "failed", python=sys.executable))
            return
        bad_input = _bad_input_errors()
        try:
            run_job(job, out, on_event=self.send, should_stop=self.stop.is_set, device=device)
        except JobCancelled as exc:
            self.send(protocol.error(str(exc) or "cancelled", "cancelled"))
        except bad_input as exc:
            traceback.print_exc()
            self.send(protocol.error(_first_line(exc), "bad_input"))
        except BaseException as exc:  # the add-on must hear about every way a run ends
            traceback.print_exc()
            self.send(protocol.error(f"{type(exc).__name__}: {_first_line(exc)}", "failed",
                                     traceback=traceback.format_exc()[-4000:]))


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """The errors the engine raises for input the user can fix (the CLI's exit code 2)."""
    errors: list[type[BaseException]] = [JobError, ValueError, FileNotFoundError]
    try:
        from .guidance.model_source import ModelSourceError
        errors.append(ModelSourceError)
    except ImportError:
        pass
    try:
        from .isosurface import MeshError
        errors.append(MeshError)
    except ImportError:
        pass
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _protocol_stdout():
    """A private handle on the real stdout for messages; fd 1 then goes to stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb")


def main(argv: list[str] | None = None) -> int:
    reader = protocol.MessageReader(sys.stdin.buffer)
    writer = protocol.MessageWriter(_protocol_stdout())
    try:
        return Worker(reader, writer).serve()
    finally:
        writer.close()


if __name__ == "__main__":
    sys.exit(main())
