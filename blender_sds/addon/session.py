"""One generation (a Generate or a Refine) as the add-on follows it: the worker's messages in,
a small state the UI shows.

No bpy here. `pump()` is called on the main thread (by the timer in the UI, or in a
blocking loop by `execute()`); it drains the worker's queue and moves the state along:
starting -> running -> done | failed | cancelled (a remote worker busy with other jobs
first sends `queued`, the job's place in line, which the progress line shows). Every way a
run can end, including a worker that dies, hangs, was never a worker, speaks another
protocol version or writes garbage, ends in one of those with a message that says what to
do. The client is a local subprocess (worker_client.py) or a remote worker
(remote_client.py); this file does not care which.
"""
from __future__ import annotations

import queue
import time

from .. import protocol

HELLO_SECONDS = 60.0  # a Python that has not said hello by then is not a worker
SILENCE_SECONDS = 120.0  # heartbeats come every protocol.HEARTBEAT_SECONDS; allow long GIL-holding steps
CANCEL_SECONDS = 15.0  # a cancelled run gets this long to stop by itself before it is killed

FINISHED = ("done", "failed", "cancelled")
RUN_MESSAGES = ("stage", "start", "progress", "preview", "checkpoint", "done")  # a queued job has begun


class Generation:
    """One job sent to one worker and followed to its end (not the engine's training Run, nor the
    protocol's `run` message, which is how it starts)."""

    def __init__(self, client, job: dict, base_dir: str, out_dir: str,
                 device: str | None = None, meta: dict | None = None, silence_seconds: float = SILENCE_SECONDS):
        self.client = client
        self.silence_seconds = silence_seconds
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
        self.queue_position: int | None = None  # a remote worker's queue: 1 = next to run
        self.queue_length: int | None = None
        self.loss: float | None = None
        self.preview_path: str | None = None
        self.preview_serial = 0  # bumps with every new preview, so the UI knows to reload
        self.shown_preview = 0  # the serial the UI last loaded
        self.checkpoint_path: str | None = None
        self.result_dir: str | None = None
        self.message = ""  # why it failed or was cancelled, for people
        self.code: str | None = None  # the worker's error code (protocol.ERROR_CODES), for the program
        self.key: str | None = None  # the job key that error names, if any
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

    @property
    def stage_text(self) -> str:
        """The stage in the words the progress line shows, e.g. "Queued: 2nd of 3 on the remote worker"."""
        if self.stage != "queued":
            return self.stage.capitalize()
        return f"Queued: {ordinal(self.queue_position)} of {self.queue_length} on the remote worker"

    # -- driving ---------------------------------------------------------------------------
    def start(self) -> None:
        self.client.start()
        self.client.submit(self.job, self.base_dir, self.out_dir, self.device)

    def pump(self, timeout: float = 0.0, max_messages: int | None = None) -> bool:
        """Handle what the worker said (at most `max_messages`); True once the generation has finished."""
        if max_messages is None:
            messages = self.client.messages(timeout)
        else:
            messages = []
            try:
                messages.append(self.client.queue.get(timeout=timeout) if timeout else self.client.queue.get_nowait())
                while len(messages) < max_messages:
                    messages.append(self.client.queue.get_nowait())
            except queue.Empty:
                pass
        for message in messages:
            if self.finished:
                break
            self.last_heard = time.monotonic()
            self._handle(message)
        if not self.finished:
            self._check_clock()
        return self.finished

    def wait(self, on_change=None, poll: float = 0.25) -> None:
        """Block until the generation finishes (execute(): scripts and background Blender)."""
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
            self._fail(f"The worker wrote something that is not a message ({msg['message']}). {self.client.hint}, "
                       f"and that it runs this add-on's engine (log: {self.client.log_path})")
            return
        if not self.greeted:
            if kind == "error":  # refused before it said hello (a remote worker: a wrong token, busy)
                self._error(msg)
                return
            try:
                protocol.check_hello(msg, "worker")
            except protocol.ProtocolError as exc:
                self._fail(f"The worker did not greet as expected: {exc}. {self.client.hint}")
                return
            self.greeted = True
            self.stage = "waiting for the engine"
            return
        if kind == "queued":  # a remote worker busy with other jobs (checked: 1 <= position <= length)
            self.stage, self.queue_position, self.queue_length = "queued", msg["position"], msg["length"]
            return
        if kind in RUN_MESSAGES and self.stage == "queued":  # out of the queue: the run has begun
            self.stage, self.queue_position, self.queue_length = "running", None, None
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
            if self.cancel_asked_at is not None:  # it finished before the cancel reached it
                self._end("cancelled", f"Cancelled (the run had already finished: its result is kept in "
                                       f"{msg['out']}; Import Result brings it in)")
            else:
                self._end("done", "")
        elif kind == "error":
            self._error(msg)
        # heartbeat, and types a newer worker may add: nothing to do but note we heard it

    def _error(self, msg: dict) -> None:
        text = msg["message"]
        self.code, self.key = msg.get("code"), msg.get("key")
        if msg["kind"] == "cancelled":
            self._end("cancelled", "Cancelled" + (f" ({text})" if text else ""))
        elif msg["kind"] == "bad_input":
            self._fail(f"The engine refused the job: {text}")
        else:
            self._fail(f"The worker failed: {text} (details: {self.client.log_path})")

    def _worker_exit(self, code) -> None:
        if self.finished:
            return
        if self.cancel_asked_at is not None:
            self._end("cancelled", "Cancelled")
            return
        self._fail(self.client.describe_exit(code, self.greeted))

    def _check_clock(self) -> None:
        now = time.monotonic()
        if self.cancel_asked_at is not None and now - self.cancel_asked_at > CANCEL_SECONDS:
            self.client.kill()
            self._end("cancelled", "Cancelled (the worker did not stop by itself and was ended)")
        elif not self.greeted and now - self.started_at > HELLO_SECONDS:
            self.client.kill()
            self._fail(f"The worker did not answer within {HELLO_SECONDS:.0f} s. {self.client.hint} "
                       f"(log: {self.client.log_path})")
        elif now - self.last_heard > self.silence_seconds:
            self.client.kill()  # it cannot hear a polite hang-up: end it now
            self._fail(f"The worker sent nothing for {self.silence_seconds:.0f} s (not even a heartbeat) and was "
                       f"ended: it may be stuck, or its machine overloaded; Worker Timeout in the add-on preferences "
                       f"sets how long to wait (log: {self.client.log_path})")

    def _fail(self, message: str) -> None:
        self._end("failed", message)

    def _end(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        self.stage = state
        self.client.stop_soon()  # never block the UI on a worker's exit


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, ... 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
