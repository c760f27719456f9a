"""10,000+ random and mutated messages at the worker's protocol, over pipes and TLS.

Most go to `Worker` in this process (over socketpairs and os.pipe pairs: fast), with the
remote rules (sandbox) and with the local pipe rules; a share goes to a real `serve`
subprocess over TLS, its queue and admission gate in front. After every batch a ping must
come back as a pong on the same conversation: the worker never crashes and keeps answering.
Nothing may be written outside the server's root (canary folders, HOME and the working
folder stay empty).

A fuzzed "run" that happens to be valid would start a job. In this process such runs go
to a stand-in for run_job that records where it was told to write (the engine itself is
not under test here: garbage never reaches it); the `serve` subprocess runs the real
engine, whose hub model cannot be found offline, so those runs end at once.
"""
from __future__ import annotations

import base64
import collections
import json
import os
import random
import socket
import threading
import zlib

import pytest

from blender_sds import protocol
from blender_sds.engine.service.job_queue import JobQueue
from blender_sds.engine.service.sandbox import SandboxWorkspace
from blender_sds.engine.service.worker import LocalWorkspace, Worker
from serve_client import Client, files_outside, start_serve, stop_serve

BATCH = 40
COUNTS = {"sandbox-socket": 4000, "sandbox-pipe": 2500, "local-pipe": 2000, "serve-tcp": 1600}
assert sum(COUNTS.values()) >= 10_000

HUB = "example-org/never-downloaded"
VALIDATOR_SURPRISES: set[str] = set()
REPLIES: collections.Counter = collections.Counter()  # what came back, for the curious (pytest -s)  # the job validator raising something other than JobError


def valid_messages(outside: str) -> list[dict]:
    job = {"version": 1, "prompt": "a red ball", "seed": 1, "steps": 2, "preset": "draft",
           "guidance": {"kind": "stable-diffusion", "model": HUB},
           "init": {"checkpoint": None}, "cameras": {"mode": "orbit"}}
    return [
        protocol.run(job, "", ""),
        protocol.run({**job, "guidance": {"kind": "reference", "views": [{"image": "views/a.png", "camera": {}}]}},
                     "", ""),
        {"type": "upload", "name": "views/a.png", "offset": 0, "data": base64.b64encode(b"\x89PNG").decode()},
        {"type": "upload", "name": "init/checkpoint.pt", "offset": 0, "data": ""},
        protocol.cancel(), protocol.ping(7), protocol.hello("addon"),
        {"type": "file", "name": "mesh.npz", "offset": 0, "size": 1, "data": "AA=="},
        {"type": "done", "out": outside}, {"type": "later-message", "x": [1, 2]},
    ]


def nasty_strings(outside: str) -> list:
    return ["", ".", "..", "../", "../../outside/pwned", f"{outside}/pwned", f"{outside}/pwned.png", "~/pwned.png",
            "a/../../../outside/p.png", "views/../../outside/p.png", "C:\\pwned", "\\\\server\\share", "\x00",
            "a\x00b.png", "%2e%2e/p.png", "é/ü.png", "\ud800", "x" * 5000, "model", HUB, "org/..", "/",
            "stable-diffusion", "reference", "cpu", "cuda:99", "nan", "auto"]


def random_value(rng: random.Random, strings: list, depth: int = 0):
    pick = rng.randrange(10 if depth < 3 else 7)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, -2**63, 2**70, 3, 1500])
    if pick == 3:
        return rng.choice([0.5, -1e308, 1e-320, 3.0])
    if pick in (4, 5, 6):
        return rng.choice(strings)
    if pick in (7, 8):
        return [random_value(rng, strings, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "job", "out", "name", "k", "prompt"]): random_value(rng, strings, depth + 1)
            for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, message, strings: list):
    """A copy of `message` with one random change somewhere inside it."""
    message = json.loads(json.dumps(message))
    node = message
    for _ in range(rng.randrange(4)):  # walk down a little
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        containers = [(k, v) for k, v in children if isinstance(v, (dict, list))]
        if not containers:
            break
        _, node = rng.choice(containers)
    op = rng.randrange(4)
    if isinstance(node, dict):
        keys = list(node)
        if op == 0 and keys:
            del node[rng.choice(keys)]
        elif op == 1 and keys:
            node[rng.choice(keys)] = random_value(rng, strings)
        elif op == 2:
            node[rng.choice(["type", "job", "out", "base_dir", "name", "offset", "data", "token", "device",
                             "checkpoint", "model", "image", "views", rng.choice(strings)[:20]])] = \
                random_value(rng, strings)
        else:
            if keys:
                node[rng.choice(keys)] = rng.choice(strings)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = random_value(rng, strings)
    return message


def fuzz_line(rng: random.Random, bases: list, strings: list) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))).replace(b"\n", b" ")
    if kind == 1:  # JSON that is not an object
        return json.dumps(random_value(rng, strings)).encode()
    if kind == 2:  # an object of random keys
        return json.dumps(random_value(rng, strings, depth=2) if rng.random() < 0.2 else
                          {"type": rng.choice(strings + ["run", "upload", "cancel"]), "x": 1}).encode()
    if kind == 3:  # a valid message's line, cut or with a byte flipped
        line = bytearray(json.dumps(rng.choice(bases)).encode())
        if rng.random() < 0.5:
            return bytes(line[:rng.randrange(1, len(line))])
        i = rng.randrange(len(line))
        line[i] = rng.choice(b"\x00\xff{}[]\",:\\ ")
        return bytes(line).replace(b"\n", b" ")
    if kind == 4:  # what strict JSON refuses, and what is hard to parse
        return rng.choice([b'{"type": "ping", "id": NaN}', b'{"type": "run", "x": Infinity}', b"[" * 50000,
                           b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"type": "ping", "id": "\\ud800"}',
                           b'\xff\xfe{"type":"ping"}', b'{"type": "ping"}' * 3, b'{"type": ""}',
                           b'{"type": "upload", "name": "a.png", "offset": -5, "data": ""}'])
    message = rng.choice(bases)
    for _ in range(rng.randrange(1, 4)):
        message = mutate(rng, message, strings)
    return json.dumps(message).encode()


def converse(send_line, read, rng, bases, strings, count: int, first_id: int) -> int:
    """`count` fuzz lines in batches, each batch followed by a ping whose pong must come back."""
    sent, ident = 0, first_id
    while sent < count:
        for _ in range(min(BATCH, count - sent)):
            send_line(fuzz_line(rng, bases, strings))
            sent += 1
        ident += 1
        send_line(json.dumps(protocol.ping(ident)).encode())
        while True:
            message = read()
            assert message is not None, f"the worker hung up after batch ending at line {sent}"
            if message["type"] == "pong" and message.get("id") == ident:
                break
            REPLIES[message["type"] if message["type"] != "error" else f"error:{message.get('code') or message['kind']}"] += 1
            if message["type"] == "error":
                assert message.get("code") != "internal", message
                if message.get("code") == "validator":
                    VALIDATOR_SURPRISES.add(message["message"][:160])
    return ident


class Watch:
    """Exceptions that escape any thread, and the folders a stand-in engine was given."""

    def __init__(self, monkeypatch):
        self.errors: list[str] = []
        self.outs: list[str] = []
        monkeypatch.setattr(threading, "excepthook", lambda args: self.errors.append(repr(args.exc_value)))

    def engine(self, job, out, *, on_event, should_stop, device):
        self.outs.append(out)
        on_event({"type": "stage", "name": "optimising"})
        on_event({"type": "done", "out": out, "vertices": 0, "faces": 0, "seconds": 0.0})


def _socket_streams():
    """(worker's in, out), (client's in, out), hang_up (the client's EOF), close_all."""
    a, b = socket.socketpair()
    files = [a.makefile("rb"), a.makefile("wb"), b.makefile("rb"), b.makefile("wb")]

    def close_all():
        for f in files:
            f.close()
        a.close()
        b.close()
    def worker_done():  # what serve.py does when a conversation ends
        files[1].close()
        a.shutdown(socket.SHUT_RDWR)
    return files[:2], files[2:], lambda: (files[3].close(), b.shutdown(socket.SHUT_WR)), worker_done, close_all


def _pipe_streams():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    files = [os.fdopen(r1, "rb"), os.fdopen(w2, "wb"), os.fdopen(r2, "rb"), os.fdopen(w1, "wb")]

    def close_all():
        for f in files:
            try:
                f.close()
            except OSError:
                pass
    return files[:2], files[2:], files[3].close, files[1].close, close_all


@pytest.fixture
def place(tmp_path, monkeypatch):
    for name in ("root", "outside", "home", "cwd"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


@pytest.mark.parametrize("name, streams, rules", [
    ("sandbox-socket", _socket_streams, "sandbox"),
    ("sandbox-pipe", _pipe_streams, "sandbox"),
    ("local-pipe", _pipe_streams, "local"),
])
def test_fuzz_the_worker_in_process(place, monkeypatch, name, streams, rules):
    watch = Watch(monkeypatch)
    rng = random.Random(zlib.crc32(name.encode()))
    outside = str(place / "outside")
    bases, strings = valid_messages(outside), nasty_strings(outside)
    queue = JobQueue()
    count, ident, conversations = COUNTS[name], 0, 0
    while count > 0:
        (w_in, w_out), (c_in, c_out), hang_up, worker_done, close_all = streams()
        reader = protocol.MessageReader(w_in)
        workspace = (SandboxWorkspace(place / "root", queue, "t" * 20, max_upload_bytes=2**20, reader=reader)
                     if rules == "sandbox" else LocalWorkspace())
        worker = Worker(reader, protocol.MessageWriter(w_out), 0.05, workspace=workspace, engine=watch.engine)
        result = {}

        def serve(worker=worker, worker_done=worker_done):
            result["code"] = worker.serve()
            worker_done()
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_reader = protocol.MessageReader(c_in)

        def send_line(line: bytes) -> None:
            c_out.write(line + b"\n")
            c_out.flush()

        def read():
            return client_reader.read()
        conversations += 1
        if conversations % 4 == 0:  # now and then the very first line is garbage: refused, conversation over
            if rules == "local":
                assert read()["type"] == "hello"
            send_line(fuzz_line(rng, bases, strings))
            count -= 1
            replies = []
            while (m := read()) is not None:
                replies.append(m)
            assert replies and replies[-1]["type"] == "error", replies
            thread.join(10)
            assert result.get("code") == 2
        else:
            send_line(json.dumps(protocol.hello("addon", token="t" * 20)).encode())
            assert read()["type"] == "hello"
            share = min(count, 300)
            ident = converse(send_line, read, rng, bases, strings, share, ident)
            count -= share
            hang_up()  # EOF: the worker ends the conversation by itself
            thread.join(10)
            assert not thread.is_alive() and result.get("code") == 0, result
        close_all()
    print(name, "runs reaching the engine:", len(watch.outs), "conversations:", conversations)
    assert watch.errors == []
    assert files_outside(place) == []  # canaries, HOME and cwd are empty; only root was written
    if rules == "sandbox":
        assert watch.outs, "no fuzzed run was valid: the fuzz never reached the run path"
        root = str((place / "root").resolve())
        assert all(os.path.commonpath([out, root]) == root for out in watch.outs)
    assert queue.idle


def test_fuzz_a_real_serve_over_tls_with_its_queue(tmp_path):
    (tmp_path / "outside").mkdir()
    proc, port = start_serve(tmp_path, "--max-upload-mb", "1")
    try:
        rng = random.Random(1234)
        outside = str(tmp_path / "outside")
        bases, strings = valid_messages(outside), nasty_strings(outside)
        count, ident, conversations = COUNTS["serve-tcp"], 0, 0
        while count > 0:
            client = Client(port, timeout=120)
            conversations += 1
            if conversations % 4 == 0:  # garbage first: the gate hangs up, saying nothing (or, to a
                client.sock.sendall(fuzz_line(rng, bases, strings) + b"\n")  # hello-shaped line, unauthorized)
                count -= 1
                first = client.next()
                assert first is None or (first["type"] == "error" and first["code"] == "unauthorized"), first
                assert first is None or client.next() is None
                client.close()
                continue
            assert client.hello()["type"] == "hello"
            share = min(count, 300)

            def send_line(line: bytes, client=client) -> None:
                client.sock.sendall(line + b"\n")
            ident = converse(send_line, client.reader.read, rng, bases, strings, share, ident)
            count -= share
            client.close()
        final = Client(port)
        assert final.hello()["type"] == "hello"
        # A valid run reaches the real engine in the fuzzed server, which refuses the unknown model.
        # (A fuzzed valid run may still hold the worker: this one waits in the queue until it ends.)
        final.send(bases[0])
        answer = final.until(("error",))
        assert answer["kind"] == "bad_input" and HUB in answer["message"], answer
        final.send(protocol.ping("last"))
        assert final.until(("pong",))["id"] == "last"
        assert proc.poll() is None, "the server died"
    finally:
        stop_serve(proc)
    print("replies:", dict(REPLIES))
    if VALIDATOR_SURPRISES:
        print("validator surprises:", *sorted(VALIDATOR_SURPRISES), sep="\n  ")
    assert files_outside(tmp_path) == [] and not any((tmp_path / "outside").iterdir())
