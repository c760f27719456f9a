"""The worker: runs jobs for the add-on, speaking blender_sds.protocol over stdin/stdout.

`python -m blender_sds.engine worker` ends up in `main()`. The add-on starts it with a
Python that has torch, sends `hello` then `run`, reads events, may send `cancel`, and
closes stdin to make it exit. The run happens on a thread so `cancel` and EOF are read
while the engine works; every write goes through one locked writer. A malformed line is
answered with an error and the conversation goes on; only a bad hello or a line over the
limit ends it. `serve` (serve.py) runs the same Worker over TLS with a stricter
workspace (sandbox.py), whose jobs wait their turn in the server's queue (job_queue.py).

Protocol bytes own the real stdout: at start the worker moves fd 1 aside and points it
at stderr, so a stray print or a C library's chatter (tqdm, warnings) cannot corrupt the
message stream.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

from ... import protocol
from ...job import JobError, validate_job

EOF_JOIN_SECONDS = 30.0  # after the add-on hangs up, how long a run gets to notice should_stop
ENDING_JOIN_SECONDS = 10.0  # how long a new run waits for a run that has said its last word to return


class Refused(Exception):
    """A request the worker turns down (a wrong token, a busy worker, a path it will not
    touch): answered with an `error` carrying `code`, never a crash."""

    def __init__(self, message: str, code: str, kind: str = "bad_input", key: str | None = None):
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.key = key

    def as_message(self) -> dict:
        return protocol.error(str(self), self.kind, self.code, self.key)


class LocalWorkspace:
    """The pipe worker's rules: the add-on that started it, on the same machine and as the
    same user, names the job's files and its result folder, so both are taken as given.
    (sandbox.py holds the remote worker's rules, where nothing from a message is.)"""

    greets_first = True  # say hello at once: the add-on waits for it to know the Python works

    def hello_extra(self) -> dict:
        return {"pid": os.getpid(), "python": sys.version.split()[0]}

    def admit(self, hello: dict) -> None:
        pass

    def claim(self) -> None:
        pass

    def wait_turn(self, on_place, should_stop) -> bool:
        return True  # no queue: this worker serves one add-on

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass

    def public(self, message: dict) -> dict:
        return message  # the add-on on this machine may read this machine's paths

    def prepare(self, message: dict) -> tuple[dict, str]:
        return validate_job(message["job"], message["base_dir"]), message["out"]

    def upload(self, message: dict) -> None:
        raise Refused("uploads are for remote workers: a local worker reads the job's files where they are",
                      "upload")

    def relay(self, event: dict, send) -> None:
        send(event)


class Worker:
    """One conversation: a reader, a writer and the rules of a workspace. The transport
    (pipes here, a TCP connection in serve.py) is only the two streams."""

    def __init__(self, reader: protocol.MessageReader, writer: protocol.MessageWriter,
                 heartbeat_seconds: float = protocol.HEARTBEAT_SECONDS, *, workspace=None, engine=None):
        self.reader = reader
        self.writer = writer
        self.heartbeat_seconds = heartbeat_seconds
        self.workspace = workspace if workspace is not None else LocalWorkspace()
        self.engine = engine  # run_job's signature; None: the real engine, imported when a run starts
        self.stop = threading.Event()  # the current run should stop
        self.closing = threading.Event()  # the conversation is over
        self.run_thread: threading.Thread | None = None
        self.run_ended = threading.Event()  # the run has sent its last message and is only returning

    def send(self, message: dict) -> None:
        try:
            self.writer.write(self.workspace.public(message))
        except protocol.ProtocolError as exc:  # over the line limit: say so instead
            traceback.print_exc()
            self.send(protocol.error(f"could not send a '{message.get('type')}' message: {exc}", "failed",
                                     "too_large"))
        except (OSError, ValueError):
            # The add-on is gone (broken pipe) or the stream is closed: stop what we do.
            self.stop.set()
            self.closing.set()

    def busy(self) -> bool:
        return self.run_thread is not None and self.run_thread.is_alive()

    # -- the conversation -------------------------------------------------------------------
    def serve(self, first: dict | None = None) -> int:
        """Talk until the add-on hangs up (0), or the conversation cannot go on (2: a bad
        hello, a refused peer, a line over the limit; 1: the connection broke). `first`: the
        peer's hello when the transport has read it already (serve.py's admission gate)."""
        if self.workspace.greets_first:
            self._greet()
        try:
            if first is None:
                first = self.reader.read()
            if first is None:
                return 0
            protocol.check_hello(first, "addon")
            self.workspace.admit(first)
            if not self.workspace.greets_first:
                self._greet()
            threading.Thread(target=self._heartbeat, name="sds-heartbeat", daemon=True).start()
            while not self.closing.is_set():
                try:
                    message = self.reader.read()
                except protocol.LineTooLong:
                    raise
                except protocol.ProtocolError as exc:  # one bad line; the next one starts afresh
                    self.send(protocol.error(f"protocol: {exc}", "bad_input", "bad_message"))
                    continue
                if message is None:
                    break
                try:
                    self._dispatch(message)
                except Exception as exc:  # a bug here must cost one answer, not the conversation
                    traceback.print_exc()
                    self.send(protocol.error(f"internal error on a '{message['type'][:40]}' message: "
                                             f"{type(exc).__name__}: {_first_line(exc)[:300]}", "failed",
                                             "internal"))
        except protocol.ProtocolError as exc:
            code = "too_large" if isinstance(exc, protocol.LineTooLong) else "bad_hello"
            self.send(protocol.error(f"protocol: {exc}", "failed", code))
            return 2
        except Refused as exc:
            self.send(exc.as_message())
            return 2
        except OSError:
            return 1  # the connection broke (reset, timed out before hello)
        finally:
            self.stop.set()
            if self.run_thread is not None:
                self.run_thread.join(EOF_JOIN_SECONDS)
            self.closing.set()
            self.workspace.close()
        return 0

    def _greet(self) -> None:
        self.send(protocol.hello("worker", **self.workspace.hello_extra()))

    def _heartbeat(self) -> None:
        while not self.closing.wait(self.heartbeat_seconds):
            self.send(protocol.heartbeat(busy=self.busy()))

    def _dispatch(self, message: dict) -> None:
        kind = message["type"]
        if kind == "run":
            self._start_run(message)
        elif kind == "cancel":
            self.stop.set()
        elif kind == "ping":
            self.send(protocol.pong(message))
        elif kind == "upload":
            try:
                self.workspace.upload(message)
            except Refused as exc:
                self.send(exc.as_message())
            except protocol.ProtocolError as exc:
                self.send(protocol.error(str(exc), "bad_input", "upload"))
        # unknown types are ignored (a newer add-on may send more)

    def _start_run(self, message: dict) -> None:
        if self.busy() and self.run_ended.is_set():  # a client that answers `done` at once is not "busy"
            self.run_thread.join(ENDING_JOIN_SECONDS)
        if self.busy():
            self.send(protocol.error("a run is already going in this worker: cancel it first", "bad_input",
                                     "busy"))
            return
        device = message.get("device")
        if device is not None and not isinstance(device, str):
            self.send(protocol.error(f"device: must be a string such as 'cpu' or 'cuda', got "
                                     f"{type(device).__name__}", "bad_input", "bad_message", key="device"))
            return
        try:
            job, out = self.workspace.prepare(message)
        except JobError as exc:
            self.send(protocol.error(str(exc), "bad_input", "job", exc.key))
            return
        except Refused as exc:
            self.send(exc.as_message())
            return
        except Exception as exc:  # a validator bug must not take the conversation down
            traceback.print_exc()
            self.send(protocol.error(f"could not read the job: {type(exc).__name__}: {exc}", "failed", "validator"))
            return
        try:
            self.workspace.claim()  # a remote worker's queue: a sound job waits its turn, or is refused here
        except Refused as exc:
            self.workspace.release()
            self.send(exc.as_message())
            return
        self.stop.clear()
        self.run_ended.clear()
        self.run_thread = threading.Thread(target=self._run, args=(job, out, device),
                                           name="sds-run", daemon=True)
        self.run_thread.start()

    def _run(self, job: dict, out: str, device: str | None) -> None:
        try:
            if not self.workspace.wait_turn(self._tell_place, self.stop.is_set) or self.stop.is_set():
                self._last_word(protocol.error("cancelled while waiting in the remote worker's queue (it never "
                                               "started)", "cancelled", "cancelled"))
                return
            self._run_engine(job, out, device)
        finally:
            self.workspace.release()

    def _tell_place(self, position: int, length: int) -> None:
        self.send(protocol.queued(position, length))

    def _last_word(self, message: dict) -> None:
        """Send the run's final message, marking the run as ending first (a reply may come at once)."""
        self.run_ended.set()
        self.send(message)

    def _relay(self, event: dict) -> None:
        if event.get("type") == "done":
            self.run_ended.set()
        self.workspace.relay(event, self.send)

    def _run_engine(self, job: dict, out: str, device: str | None) -> None:
        try:
            from ..train.run import JobCancelled, run_job
        except ImportError as exc:
            self._last_word(protocol.error(
                f"this Python cannot load the engine ({exc}); install the worker packages into it "
                f"(vendor/requirements-worker.txt: torch, diffusers, ...)", "failed", "engine",
                python=sys.executable))
            return
        engine = self.engine or run_job
        try:
            engine(job, out, on_event=self._relay, should_stop=self.stop.is_set, device=device)
        except JobCancelled as exc:
            self._last_word(protocol.error(str(exc) or "cancelled", "cancelled", "cancelled"))
        except BaseException as exc:  # the add-on must hear about every way a run ends
            traceback.print_exc()
            code = _bad_input_code(exc)
            if code is not None:
                key = exc.key if isinstance(exc, JobError) else None
                self._last_word(protocol.error(_first_line(exc), "bad_input", code, key))
            else:
                self._last_word(protocol.error(f"{type(exc).__name__}: {_first_line(exc)}", "failed",
                                               "run_failed", traceback=traceback.format_exc()[-4000:]))


def _bad_input_code(exc: BaseException) -> str | None:
    """The error code of input the user can fix (the CLI's exit code 2), None for a failure."""
    try:
        from ..guidance.predictors.model_source import ModelSourceError
    except ImportError:
        ModelSourceError = ()
    try:
        from ..scene.isosurface import MeshError
    except ImportError:
        MeshError = ()
    if isinstance(exc, JobError):
        return "job"
    if isinstance(exc, ModelSourceError):
        return "model"
    if isinstance(exc, (ValueError, FileNotFoundError, MeshError)):
        return "input"
    return None


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
