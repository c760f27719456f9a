"""The remote worker's queue, through a real TLS `Server` in this process.

The engine is a stand-in (the `engine=` hook of Server, run_job's signature): the queue,
not a run, is under test, and a stand-in's job lasts exactly as long as the test holds it.
Everything between (TLS, the admission gate, the sessions, the Worker, the sandbox, the
queue) is the real server. Three clients submit at once behind a running job: their jobs
run in the order they joined, each sees its place fall; a fourth that vanishes while
waiting leaves the queue at once (the others move up before any job ends, and its job
never runs); a fifth's cancel takes its job out. The bounds refuse with the limit named.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from blender_sds import protocol
from blender_sds.engine.service.serve import Server
from serve_client import TOKEN, Client, wait_for

OTHER_TOKEN = "another-artists-token-0123456789"


class Engine:
    """A stand-in for run_job: each job runs until the test lets it finish (or it is stopped)."""

    def __init__(self):
        self.started: list[str] = []  # prompts, in the order their jobs began
        self.finish: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def release(self, prompt: str) -> None:
        self.gate(prompt).set()

    def gate(self, prompt: str) -> threading.Event:
        with self._lock:
            return self.finish.setdefault(prompt, threading.Event())

    def __call__(self, job, out, *, on_event, should_stop, device):
        prompt = job["prompt"]
        self.started.append(prompt)
        on_event({"type": "start", "steps": 1})
        if prompt.startswith("flood"):  # previews of 4 MiB, as fast as they go, until stopped
            preview = Path(out) / "preview.png"
            preview.write_bytes(os.urandom(4 * 2**20))
            while not should_stop():
                on_event({"type": "preview", "path": str(preview)})
            from blender_sds.engine.train.run import JobCancelled
            raise JobCancelled("cancelled")
        while not self.gate(prompt).wait(0.05):
            if should_stop():
                from blender_sds.engine.train.run import JobCancelled
                raise JobCancelled("cancelled")
        on_event({"type": "progress", "step": 1, "steps": 1})
        on_event({"type": "done", "out": out, "vertices": 0, "faces": 0, "seconds": 0.0})


def job(prompt: str) -> dict:
    return protocol.run({"version": 1, "prompt": prompt, "seed": 1, "steps": 1, "preset": "draft",
                         "guidance": {"kind": "stable-diffusion", "model": "example-org/never-loaded"}}, "", "")


@pytest.fixture
def served(tmp_path):
    def start(**limits):
        engine = Engine()
        server = Server("127.0.0.1", 0, [TOKEN, OTHER_TOKEN], tmp_path / "root", max_upload_bytes=2**20,
                        engine=engine, heartbeat_seconds=0.5, **limits)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server, engine
    started: list[Server] = []
    yield start
    for server in started:
        server.close()


def client(server, token=TOKEN) -> Client:
    c = Client(server.address[1], timeout=30)
    assert c.hello(token)["type"] == "hello"
    return c


class Follower:
    """Reads one client's messages on a thread, keeping its `queued` places and its end."""

    def __init__(self, c: Client, name: str):
        self.client, self.name = c, name
        self.places: list[tuple[int, int]] = []
        self.messages: list[dict] = []
        self.ended = threading.Event()
        self.end: dict | None = None
        self.end_time: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while (message := self.client.next()) is not None:
                self.messages.append(message)
                if message["type"] == "queued":
                    self.places.append((message["position"], message["length"]))
                elif message["type"] in ("done", "error"):
                    self.end, self.end_time = message, time.monotonic()
                    self.ended.set()
                    return
        except OSError:
            pass
        self.ended.set()

    def started(self) -> bool:
        return any(m["type"] == "start" for m in self.messages)


def test_jobs_wait_in_order_see_their_place_fall_and_leave_when_cancelled_or_gone(served):
    server, engine = served()
    blocker = Follower(client(server), "blocker")
    blocker.client.send(job("blocker"))
    assert wait_for(blocker.started, 10, poll=0.02), blocker.messages

    vanishing = Follower(client(server), "vanishing")  # first in the queue, then gone
    vanishing.client.send(job("vanishing"))
    assert wait_for(lambda: vanishing.places == [(1, 1)], 10, poll=0.02), vanishing.places

    three = [client(server) for _ in range(3)]
    names = ["a", "b", "c"]
    go = threading.Barrier(3)

    def submit(c, name):
        go.wait()
        c.send(job(name))
    threads = [threading.Thread(target=submit, args=(c, n)) for c, n in zip(three, names)]
    followers = [Follower(c, n) for c, n in zip(three, names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_for(lambda: all(f.places for f in followers), 10, poll=0.02)
    joined = sorted(followers, key=lambda f: f.places[0][0])  # the order the server took them in
    assert [f.places[0][0] for f in joined] == [2, 3, 4]

    canceller = Follower(client(server), "cancelled")
    canceller.client.send(job("cancelled"))
    assert wait_for(lambda: canceller.places, 10, poll=0.02) and canceller.places[0] == (5, 5)

    # The vanishing client goes without a word; those behind it move up at once, while the
    # blocker still runs (no job of its ever starts).
    socket.socket.shutdown(vanishing.client.sock, socket.SHUT_RDWR)  # gone (TLS left unclosed)
    assert wait_for(lambda: all(f.places[-1][0] == i + 1 for i, f in enumerate(joined)), 10, poll=0.02), \
        [f.places for f in joined]
    assert not blocker.ended.is_set() and engine.started == ["blocker"]

    # A cancel takes a waiting job out: answered `cancelled`, the others' length drops.
    canceller.client.send(protocol.cancel())
    assert canceller.ended.wait(10)
    assert canceller.end["kind"] == "cancelled" and "waiting in the remote worker's queue" in canceller.end["message"]
    assert wait_for(lambda: all(f.places[-1] == (i + 1, 3) for i, f in enumerate(joined)), 10, poll=0.02), \
        [f.places for f in joined]
    assert server.queue.summary() == {"running": 1, "waiting": 3}

    # Now the jobs run, one after another, in the order they joined.
    engine.release("blocker")
    for f in joined:
        assert wait_for(f.started, 10, poll=0.02), (f.name, f.messages[-3:])
        engine.release(f.name)
        assert f.ended.wait(10) and f.end["type"] == "done", (f.name, f.end)
    assert engine.started == ["blocker"] + [f.name for f in joined]
    assert [f.end_time for f in joined] == sorted(f.end_time for f in joined)
    for f in joined:  # each saw its place fall, down to next-in-line
        positions = [p for p, _ in f.places]
        assert positions == sorted(positions, reverse=True) and positions[-1] == 1 and len(set(positions)) > 1, \
            (f.name, f.places)
    assert wait_for(lambda: server.queue.idle, 10, poll=0.02) and blocker.end["type"] == "done"


def test_the_queue_is_bounded_in_all_and_per_token_and_says_which_bound(served):
    server, engine = served(max_queue=2, max_queue_per_token=2)
    mine = [client(server) for _ in range(3)]
    mine[0].send(job("mine-0"))
    assert mine[0].until(("start",))  # running first: sent together, either could have taken the slot
    mine[1].send(job("mine-1"))
    assert mine[1].until(("queued",)) == {"type": "queued", "position": 1, "length": 1}
    mine[2].send(job("mine-2"))  # a third from the same token: its share is 2, running or waiting
    refused = mine[2].until(("error",))
    assert refused["code"] == "queue_full" and "--max-queue-per-token 2" in refused["message"], refused

    theirs = [client(server, OTHER_TOKEN) for _ in range(2)]
    theirs[0].send(job("theirs-0"))  # another artist's token still has room
    assert theirs[0].until(("queued",))["position"] == 2
    theirs[1].send(job("theirs-1"))  # but the whole queue holds two waiting
    refused = theirs[1].until(("error",))
    assert refused["code"] == "queue_full" and "2 jobs are waiting" in refused["message"] \
        and "--max-queue 2" in refused["message"], refused
    for prompt in ("mine-0", "mine-1", "theirs-0"):
        engine.release(prompt)
    assert wait_for(lambda: server.queue.idle, 10, poll=0.02)
    assert engine.started == ["mine-0", "mine-1", "theirs-0"]


def test_a_client_that_stops_reading_is_cut_off_and_the_next_job_runs(served):
    """A send the peer does not read for --send-seconds (1 s here, 60 s in serve) ends that
    peer's run: a client that froze, or a host that vanished without a word, cannot hold the
    queue (TLS would retry a blocked send forever; the server's watch cuts the socket)."""
    server, engine = served(send_seconds=1.0)
    frozen = client(server)  # sends its job, then never reads again
    frozen.send(job("flood"))
    waiting = Follower(client(server), "next")
    waiting.client.send(job("next"))
    assert wait_for(lambda: waiting.places == [(1, 1)], 10, poll=0.02), waiting.messages
    assert wait_for(waiting.started, 20, poll=0.05), waiting.messages[-3:]  # the flood's run was stopped
    engine.release("next")
    assert waiting.ended.wait(10) and waiting.end["type"] == "done", waiting.end
    assert engine.started == ["flood", "next"]


def test_a_queued_client_that_hangs_up_loses_its_job_and_the_next_takes_its_turn(served):
    server, engine = served()
    running = client(server)
    running.send(job("running"))
    assert running.until(("start",))
    leaving = client(server)
    leaving.send(job("leaving"))
    assert leaving.until(("queued",))["position"] == 1
    after = client(server)
    after.send(job("after"))
    assert after.until(("queued",))["position"] == 2
    socket.socket.shutdown(leaving.sock, socket.SHUT_WR)  # EOF: the add-on stopped (its file closed)
    assert after.until(("queued",)) == {"type": "queued", "position": 1, "length": 1}
    engine.release("running")
    assert after.until(("start",))
    engine.release("after")
    assert after.until(("done",))
    assert engine.started == ["running", "after"]
