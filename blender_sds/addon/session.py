"""One run as the add-on follows it: messages in, a small state the UI shows.

No bpy here. `pump()` is called on the main thread (by the timer in the UI, or in a
blocking loop by `execute()`); it drains the worker's queue and moves the state along:
starting -> running -> done | failed | cancelled. Every way a run can end, including a
worker that dies, hangs or was never a worker, ends in one of those with a message that
says what to do.
"""
from __future__ import annotations

import time

from .. import protocol
from .worker_client import WorkerClient

HELLO_SECONDS = 60.0  # a Python that has not said hello by then is not a worker
SILENCE_SECONDS = 120.0  # heartbeats come every protocol.HEARTBEAT_SECONDS; allow long GIL-holding steps
CANCEL_SECONDS = 15.0  # a cancelled run gets this long to stop by itself before it is killed

FINISHED = ("done", "failed", "cancelled")


class Run:
    def __init__(self, client: WorkerClient, job: dict, base_dir: str, out_dir: str,
                 device: str | None = None, meta: dict | None = None):
        self.client = client
        self.job = job
        self.base_dir = base_dir
        self.out_dir = out_dir
        self.device = device
        self.meta = meta or {}  # what the caller needs when the result arrives
        self.state = "starting"
        self.stage = "starting worker"
        self.step = 0
        self.steps = 0
        self.seconds_left: float | None = None
        self.loss: float | None = None
        self.preview_path: str | None = None
        self.preview_serial = 0  # bumps with every new preview, so the UI knows to reload
        self.shown_preview = 0  # the serial the UI last loaded
        self.checkpoint_path: str | None = None
        self.result_dir: str | None = None
        self.message = ""  # why it failed or was cancelled
        self.greeted = False
        self.started_at = time.monotonic()
        self.last_heard = self.started_at
        self.cancel_asked_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0

    # -- driving ---------------------------------------------------------------------------
    def start(self) -> None:
        self.client.start()
        self.client.send(protocol.run(self.job, self.base_dir, self.out_dir, self.device))

    def pump(self, timeout: float = 0.0) -> bool:
        """Handle what the worker said; True once the run has finished."""
        for message in self.client.messages(timeout):
            if self.finished:
                break
            self.last_heard = time.monotonic()
            self._handle(message)
        if not self.finished:
            self._check_clock()
        return self.finished

    def wait(self, on_change=None, poll: float = 0.25) -> None:
        """Block until the run finishes (execute(): scripts and background Blender)."""
        while not self.pump(poll):
            if on_change is not None:
                on_change(self)
        self.client.stop()  # blocking is fine here: the worker is gone when execute() returns
        if on_change is not None:
            on_change(self)

    def cancel(self) -> None:
        if self.finished or self.cancel_asked_at is not None:
            return
        self.cancel_asked_at = time.monotonic()
        self.stage = "cancelling"
        if not self.client.send(protocol.cancel()):
            self._end("cancelled", "Cancelled")

    def kill(self, reason: str = "Stopped") -> None:
        """Stop now (unregister, another file loaded): the worker is gone when this returns."""
        if not self.finished:
            self.state, self.message, self.stage = "cancelled", reason, "cancelled"
        self.client.stop(grace=1.0)

    # -- messages --------------------------------------------------------------------------
    def _handle(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "worker_exit":
            self._worker_exit(msg["code"])
            return
        if kind == "protocol_error":
            self._fail(f"The worker wrote something that is not a message ({msg['message']}): "
                       f"check that Worker Python runs this add-on's engine (log: {self.client.log_path})")
            return
        if not self.greeted:
            try:
                protocol.check_hello(msg, "worker")
            except protocol.ProtocolError as exc:
                self._fail(f"The worker did not greet as expected: {exc}")
                return
            self.greeted = True
            self.stage = "waiting for the engine"
            return
        if kind == "stage":
            self.stage = msg["name"]
        elif kind == "start":
            self.state = "running"
            self.steps = msg["steps"]
            self.step = int(msg.get("start_step", 0))
        elif kind == "progress":
            self.state = "running"
            self.step, self.steps = msg["step"], msg["steps"]
            self.seconds_left = msg.get("seconds_left")
            self.loss = msg.get("loss")
        elif kind == "preview":
            self.preview_path = msg["path"]
            self.preview_serial += 1
        elif kind == "checkpoint":
            self.checkpoint_path = msg["path"]
        elif kind == "done":
            self.result_dir = msg["out"]
            self.step = self.steps or self.step
            self._end("done", "")
        elif kind == "error":
            self._error(msg)
        # heartbeat, and types a newer worker may add: nothing to do but note we heard it

    def _error(self, msg: dict) -> None:
        text = msg["message"]
        if msg["kind"] == "cancelled":
            self._end("cancelled", "Cancelled" + (f" ({text})" if text else ""))
        elif msg["kind"] == "bad_input":
            self._fail(f"The engine refused the job: {text}")
        else:
            self._fail(f"The worker failed: {text} (details: {self.client.log_path})")

    def _worker_exit(self, code: int) -> None:
        if self.finished:
            return
        if self.cancel_asked_at is not None:
            self._end("cancelled", "Cancelled")
            return
        tail = self.client.log_tail()
        said = f": {tail}" if tail else ""
        if not self.greeted:
            self._fail(f"The worker exited at once (exit code {code}) before answering{said}. Check Worker Python "
                       "in the add-on preferences: it must be a Python with torch and diffusers installed "
                       f"(full log: {self.client.log_path})")
        else:
            self._fail(f"The worker stopped unexpectedly (exit code {code}){said}. It may have run out of "
                       f"memory: try Low VRAM mode or the draft preset (full log: {self.client.log_path})")

    def _check_clock(self) -> None:
        now = time.monotonic()
        if self.cancel_asked_at is not None and now - self.cancel_asked_at > CANCEL_SECONDS:
            self._end("cancelled", "Cancelled (the worker did not stop by itself and was ended)")
        elif not self.greeted and now - self.started_at > HELLO_SECONDS:
            self._fail(f"The worker did not answer within {HELLO_SECONDS:.0f} s. Check Worker Python in the add-on "
                       f"preferences (log: {self.client.log_path})")
        elif now - self.last_heard > SILENCE_SECONDS:
            self._fail(f"The worker stopped answering for {SILENCE_SECONDS:.0f} s and was ended "
                       f"(log: {self.client.log_path})")

    def _fail(self, message: str) -> None:
        self._end("failed", message)

    def _end(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        self.stage = state
        self.client.stop_soon()  # never block the UI on a worker's exit
