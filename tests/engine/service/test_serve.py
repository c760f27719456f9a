"""The remote worker as a real `serve` subprocess (TLS, as it starts by default): who it lets
in, what it refuses, and a real job on a tiny model whose results come back as data while a
second client's job waits in the queue and then runs; a client that vanishes mid-run frees
the worker. (TLS itself: test_serve_tls.py; the queue: test_serve_queue.py; the gate before
the token: test_serve_admission.py.)"""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from blender_sds import protocol
from serve_client import (REPO, TOKEN, Client, FREED_WITHIN, files_outside, start_serve, stop_serve, takes_new_jobs,
                          wait_for, why_busy)

TINY = {"preset": "draft", "render": {"resolution": 32, "samples": 8}, "mesh": {"resolution": 24},
        "optim": {"orientation": 0.0, "albedo_steps": 1}, "output": {"preview_every": 1, "progress_every": 1}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    proc, port = start_serve(tmp)
    yield tmp, proc, port
    stop_serve(proc)
    log = (tmp / "serve.log").read_text()  # refusals are logged with tracebacks; crashes would say these:
    assert "Exception in thread" not in log and "internal error" not in log, log[-3000:]


def serve_cli(*args, env=None, timeout=20):
    return subprocess.run([sys.executable, "-m", "blender_sds.engine", "serve", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})})


# -- starting ------------------------------------------------------------------------------------

def test_a_public_address_without_a_token_is_refused_at_start(tmp_path):
    proc = serve_cli("--host", "0.0.0.0", "--port", "0", "--root", str(tmp_path / "root"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --host 0.0.0.0: not a loopback address, and no token is set")
    assert "--token-file" in proc.stderr and not (tmp_path / "root").exists()


def test_plain_tcp_is_refused_on_a_public_address_even_with_a_token(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    proc = serve_cli("--host", "0.0.0.0", "--port", "0", "--plain", "--token-file", str(token),
                     "--root", str(tmp_path / "root"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --plain: refused on --host 0.0.0.0, which is not a loopback address")
    assert "in clear" in proc.stderr and not (tmp_path / "root").exists()


def test_plain_tcp_on_loopback_speaks_the_protocol_without_tls(tmp_path):
    proc, port = start_serve(tmp_path, "--plain")
    try:
        assert proc.fingerprint is None and not (tmp_path / "root" / "tls").exists()
        client = Client(port, plain=True)
        assert client.hello()["type"] == "hello"
    finally:
        stop_serve(proc)


@pytest.mark.parametrize("flag, value, words", [
    ("--max-queue", "-1", "--max-queue: must be at least 0, got -1"),
    ("--max-queue-per-token", "0", "--max-queue-per-token: must be at least 1, got 0"),
    ("--max-clients", "0", "--max-clients: must be at least 1"),
    ("--max-unauthenticated-per-address", "0", "--max-unauthenticated-per-address: must be at least 1"),
    ("--hello-seconds", "0", "--hello-seconds: must be between 0.1 and 600, got 0"),
])
def test_bounds_that_make_no_sense_are_refused_by_name(tmp_path, flag, value, words):
    proc = serve_cli("--port", "0", flag, value, "--root", str(tmp_path / "root"))
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_the_token_never_comes_from_the_command_line(tmp_path):
    proc = serve_cli("--port", "0", "--token", "a-secret-on-the-command-line")
    assert proc.returncode == 2 and "unrecognised arguments: --token" in proc.stderr


@pytest.mark.parametrize("mode, text, words", [
    (0o644, "x" * 32, "can be read by other users: chmod 600"),
    (0o600, "short", "the token is 5 characters; use at least 16"),
    (0o600, "x" * 20 + "\n# the team\nshort\n", "line 3: the token is 5 characters"),
    (0o600, "x" * 20 + "\n" + "x" * 20 + "\n", "line 2: the same token as line 1; give each artist their own"),
    (0o600, "# nobody yet\n\n", "holds no token"),
])
def test_token_files_that_are_unsafe_are_refused(tmp_path, mode, text, words):
    token = tmp_path / "token"
    token.write_text(text)
    token.chmod(mode)
    proc = serve_cli("--port", "0", "--token-file", str(token), "--root", str(tmp_path / "root"))
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_the_token_may_come_from_the_environment(tmp_path):
    proc, port = start_serve(tmp_path, "--host", "0.0.0.0", token=None, env={"SDS_WORKER_TOKEN": "e" * 20})
    try:
        client = Client(port)
        assert client.hello("e" * 20)["type"] == "hello"
        assert Client(port).hello("f" * 20)["code"] == "unauthorized"
    finally:
        stop_serve(proc)


def test_a_token_file_may_hold_one_token_per_artist(tmp_path):
    other = "second-artists-token-0123456789"
    proc, port = start_serve(tmp_path, token=f"# the team\n{TOKEN}\n\n{other}")
    try:
        assert Client(port).hello(TOKEN)["type"] == "hello"
        assert Client(port).hello(other)["type"] == "hello"
        assert Client(port).hello("third-token-never-given-0123")["code"] == "unauthorized"
    finally:
        stop_serve(proc)


# -- who is let in -------------------------------------------------------------------------------

@pytest.mark.parametrize("token, words", [(None, "needs a token"), ("wrong-token-0123456789", "wrong token"),
                                          (TOKEN[:-1], "wrong token"), (TOKEN + "x", "wrong token")])
def test_no_or_a_wrong_token_is_refused_and_the_connection_closed(server, token, words):
    _tmp, _proc, port = server
    client = Client(port)
    first = client.hello(token)  # the server says nothing (not even hello) before the token
    assert first["type"] == "error" and first["code"] == "unauthorized" and words in first["message"]
    assert client.next() is None  # closed
    with pytest.raises(OSError):  # nothing more is heard
        for _ in range(50):
            client.send(protocol.ping(1))
            time.sleep(0.02)


def test_the_right_token_gets_a_hello_and_answers_pings(server):
    client = Client(server[2])
    hello = client.hello()
    assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION and "pid" not in hello
    client.send(protocol.ping("abc"))
    assert client.next() == {"type": "pong", "id": "abc"}


def test_a_silent_peer_is_dropped_before_it_shows_a_token(tmp_path):
    """Within the gate's deadline, whether it stalls inside the TLS handshake or after it,
    and without a word."""
    import threading

    from blender_sds.engine.service import serve
    from blender_sds.engine.service.admission import GateLimits
    srv = serve.Server("127.0.0.1", 0, TOKEN, tmp_path / "root", max_upload_bytes=2**20,
                       gate=GateLimits(seconds=0.5))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        mid_handshake = socket.create_connection(srv.address, timeout=10)
        mid_handshake.sendall(b"\x16\x03\x01")  # the start of a TLS record, never finished
        after_handshake = Client(srv.address[1], timeout=10)
        after_handshake.sock.sendall(b"{")  # trickling, never finishing a hello
        start = time.monotonic()
        assert mid_handshake.recv(100) == b""  # hung up on, nothing said
        assert after_handshake.sock.recv(100) == b""
        assert time.monotonic() - start < 5
        assert srv.gate.counts["expired"] == 2, srv.gate.counts
    finally:
        srv.close()


# -- what is refused -----------------------------------------------------------------------------

OUTSIDE = "../../outside/pwned"


def _run(job_extra=None, **fields):
    job = {"version": 1, "prompt": "x", "guidance": {"kind": "stable-diffusion", "model": "example-org/model"}}
    job.update(job_extra or {})
    return {**protocol.run(job, "", ""), **fields}


@pytest.mark.parametrize("message, key, words", [
    ({"type": "upload", "name": "../evil.png", "offset": 0, "data": ""}, None, "leaves its folder"),
    ({"type": "upload", "name": "views/../../evil.png", "offset": 0, "data": ""}, None, "leaves its folder"),
    ({"type": "upload", "name": "/tmp/evil.png", "offset": 0, "data": ""}, None, "absolute path"),
    ({"type": "upload", "name": "~/evil.png", "offset": 0, "data": ""}, None, "absolute path"),
    ({"type": "upload", "name": "C:/evil.png", "offset": 0, "data": ""}, None, "absolute path"),
    ({"type": "upload", "name": ".hidden.png", "offset": 0, "data": ""}, None, "not a plain file name"),
    ({"type": "upload", "name": "run_me.py", "offset": 0, "data": ""}, "name", "only data files"),
    ({"type": "upload", "name": "weights.bin", "offset": 0, "data": ""}, "name", "no pickle"),
    ({"type": "upload", "name": "a.png", "offset": 0, "data": "***"}, None, "not base64"),
    (_run(out=OUTSIDE), "out", "folders it makes itself"),
    (_run(out="/tmp/x"), "out", "folders it makes itself"),
    (_run(base_dir="/"), "base_dir", "folders it makes itself"),
    (_run({"init": {"checkpoint": "../../outside/x.pt"}}), "init.checkpoint", "leaves its folder"),
    (_run({"init": {"checkpoint": "/etc/passwd"}}), "init.checkpoint", "absolute path"),
    (_run({"init": {"checkpoint": "~/x.pt"}}), "init.checkpoint", "absolute path"),
    (_run({"init": {"checkpoint": "never-uploaded.pt"}}), "init.checkpoint", "was not uploaded"),
    (_run({"init": {"mesh": "../../outside/x.npz"}}), "init.mesh", "leaves its folder"),
    (_run({"init": {"mesh": "/etc/passwd"}}), "init.mesh", "absolute path"),
    (_run({"init": {"mesh": "never-uploaded.npz"}}), "init.mesh", "was not uploaded"),
    (_run({"guidance": {"kind": "stable-diffusion", "model": "/usr/share"}}), "guidance.model", "absolute path"),
    (_run({"guidance": {"kind": "stable-diffusion", "model": "../.."}}), "guidance.model", "leaves its folder"),
    (_run({"guidance": {"kind": "reference", "views": [{"image": "../outside/v.png", "camera": {}}]}}),
     "guidance.views[0].image", "leaves its folder"),
])
def test_paths_that_could_leave_the_job_folder_are_refused(server, message, key, words):
    tmp, proc, port = server
    client = Client(port)
    client.hello()
    client.send(message)
    answer = client.until(("error",))
    assert words in answer["message"], answer
    if key:
        assert answer.get("key") == key, answer
    client.send(protocol.ping(2))
    assert client.until(("pong",)) == {"type": "pong", "id": 2}  # and the conversation goes on
    assert files_outside(tmp) == [] and not (tmp / "outside").exists()
    assert proc.poll() is None


def test_an_oversized_line_is_refused_without_reading_it_whole(server):
    """100 MB with no newline: the server stops at its 4 MiB limit and hangs up, long before the end."""
    _tmp, proc, port = server
    for admitted in (False, True):
        client = Client(port)
        if admitted:
            client.hello()
        block = b"x" * 2**16
        sent, start = 0, time.monotonic()
        with pytest.raises(OSError):
            while sent < 100 * 2**20:
                client.sock.sendall(block)
                sent += len(block)
        limit = protocol.MAX_LINE_BYTES if admitted else protocol.HELLO_MAX_BYTES
        assert sent < limit + 24 * 2**20, sent  # the limit plus what the two kernels buffer
        assert time.monotonic() - start < 30
    client = Client(port)  # and the server lives on
    assert client.hello()["type"] == "hello" and proc.poll() is None


# -- real jobs -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from blender_sds.engine.bench.tiny_models import make_tiny_sd
    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


def _job(steps: int) -> dict:
    return {"version": 1, "prompt": "a red ball", "seed": 2, "steps": steps,
            "guidance": {"kind": "stable-diffusion", "model": "model"}, **TINY}


def test_a_remote_job_sends_results_back_as_data_and_a_second_client_waits_its_turn(server, tiny_sd):
    tmp, proc, port = server
    client = Client(port)
    client.hello()
    client.upload_folder(tiny_sd, "model")
    client.send(protocol.run(_job(steps=3), "", "", device="cpu"))
    seen = []
    client.until(("start",), seen)

    other = Client(port)  # a second add-on while the first job runs
    assert other.hello()["queue"] == {"running": 1, "waiting": 0}
    other.upload_folder(tiny_sd, "model")
    other.send(protocol.run(_job(steps=1), "", "", device="cpu"))
    assert other.until(("queued", "error")) == {"type": "queued", "position": 1, "length": 1}

    done = client.until(("done",), seen)
    assert done["out"] == ""  # no server path is handed out
    files: dict[str, bytearray] = {}
    for message in seen:
        if message["type"] == "file":
            assert message["name"] in protocol.RESULT_FILES
            if message["offset"] == 0:  # a file sent again (each new preview) starts afresh
                files[message["name"]] = bytearray()
            buf = files[message["name"]]
            assert message["offset"] == len(buf)
            buf += protocol.chunk_bytes(message)
        elif message["type"] == "preview":
            assert message["path"] == "preview.png"
        assert not any(isinstance(v, str) and v.startswith(str(tmp)) for v in message.values()), message
    assert {"mesh.npz", "preview.png", "checkpoint.pt", "status.json", "log.jsonl"} <= set(files)
    with np.load(io.BytesIO(bytes(files["mesh.npz"])), allow_pickle=False) as mesh:
        assert mesh["vertices"].shape[1] == 3 and len(mesh["faces"]) == done["faces"]
    assert json.loads(files["status.json"])["state"] == "complete"
    # Every write happened under the root, in one job folder named by the server.
    jobs = list((tmp / "root" / "jobs").iterdir())
    assert any((j / "out" / "mesh.npz").is_file() and (j / "inputs" / "model" / "model_index.json").is_file()
               for j in jobs)
    assert files_outside(tmp) == []
    # The second job runs once the first is done, to a result of its own.
    second = []
    assert other.until(("done", "error"), second)["type"] == "done", second[-3:]
    assert any(m["type"] == "file" and m["name"] == "mesh.npz" for m in second)
    assert takes_new_jobs(port)


def test_a_client_that_vanishes_mid_run_frees_the_worker(server, tiny_sd):
    tmp, proc, port = server
    client = Client(port)
    client.hello()
    client.upload_folder(tiny_sd, "model")
    client.send(protocol.run(_job(steps=200), "", "", device="cpu"))
    client.until(("progress",))
    client.sock.shutdown(socket.SHUT_RDWR)  # gone without a word
    client.close()

    assert wait_for(lambda: takes_new_jobs(port), FREED_WITHIN, poll=1.0), \
        f"the worker stayed busy after its client vanished\n{why_busy(tmp)}"
    statuses = [json.loads(p.read_text()) for p in (tmp / "root" / "jobs").glob("*/out/status.json")]
    assert any(s["state"] == "cancelled" for s in statuses), statuses
    assert proc.poll() is None


class _Trap:
    """Unpickling this creates a file: what a malicious checkpoint would do with code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_uploaded_checkpoints_are_never_unpickled_as_code(server, tiny_sd, tmp_path):
    import pickle
    tmp, proc, port = server
    canary = tmp_path / "canary-created-by-pickle"
    payloads = {"pickle with code": pickle.dumps({"format": "blender-sds-checkpoint", "trap": _Trap(str(canary))}),
                "corrupt": b"PK\x03\x04 not really a zip" * 10}
    client = Client(port)
    client.hello()
    for what, payload in payloads.items():
        client.upload_folder(tiny_sd, "model")
        for message in protocol.chunks("init/checkpoint.pt", io.BytesIO(payload), "upload"):
            client.send(message)
        client.send(protocol.run({**_job(steps=1), "init": {"checkpoint": "init/checkpoint.pt"}}, "", "",
                                 device="cpu"))
        refused = client.until(("error",))
        assert refused["kind"] == "bad_input", (what, refused)
        assert refused["message"].startswith("init.checkpoint:") and "not a readable" in refused["message"], refused
        # named by the upload's own name (which the add-on maps back to its file), never the server's folders
        assert "init/checkpoint.pt" in refused["message"] and "/jobs/" not in refused["message"], refused
        assert str(tmp) not in refused["message"] and str(tmp.resolve()) not in refused["message"], refused
    assert not canary.exists()
    assert proc.poll() is None


# -- a start mesh (init.mesh) ----------------------------------------------------------------------

CUBE = np.array([[x, y, z] for x in (-0.4, 0.4) for y in (-0.4, 0.4) for z in (-0.4, 0.4)], dtype=np.float32)
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int32)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _fit_job(mesh: str) -> dict:
    """Fit a pocket field to the mesh and mesh it (steps 0): no model to upload, a few seconds."""
    return {"version": 1, "prompt": "a red cube", "seed": 1, "steps": 0, "preset": "draft",
            "guidance": {"kind": "pocket"}, "bounds": {"center": [0, 0, 0], "size": 2.0},
            "init": {"mesh": mesh}, "render": {"resolution": 32, "samples": 8},
            "mesh": {"resolution": 32}, "output": {"preview_every": 0}}


def _upload(client, name, data: bytes) -> None:
    for message in protocol.chunks(name, io.BytesIO(data), "upload"):
        client.send(message)


def test_a_start_mesh_is_uploaded_as_data_and_named_by_its_own_file(server, tmp_path):
    """The mesh travels as an upload, the job names it inside its own folder, and the engine's
    words about it name the file, never the server's folders; an npz holding pickled objects is
    refused unread."""
    tmp, proc, port = server
    client = Client(port)
    client.hello()
    colors = np.tile(np.array([[0.9, 0.1, 0.1, 1.0]], dtype=np.float32), (8, 1))
    _upload(client, "init/blockout.npz", _npz(vertices=CUBE, faces=CUBE_FACES, colors=colors))
    client.send(protocol.run(_fit_job("init/blockout.npz"), "", "", device="cpu"))
    seen = []
    done = client.until(("done", "error"), seen)
    assert done["type"] == "done", done
    sent = {m["name"] for m in seen if m["type"] == "file"}
    assert "mesh.npz" in sent
    ran = [json.loads(p.read_text()) for p in (tmp / "root" / "jobs").glob("*/out/job.json")
           if "blockout.npz" in p.read_text()]
    assert ran and ran[-1]["init"]["mesh"].endswith("/inputs/init/blockout.npz")
    assert ran[-1]["init"]["mesh"].startswith(str((tmp / "root" / "jobs").resolve()))

    far = CUBE + np.float32(10.0)  # far outside the bounds
    _upload(client, "init/far-away.npz", _npz(vertices=far, faces=CUBE_FACES))
    client.send(protocol.run(_fit_job("init/far-away.npz"), "", "", device="cpu"))
    refused = client.until(("error",))
    assert refused["kind"] == "bad_input" and refused.get("key") == "init.mesh", refused
    assert "far-away.npz" in refused["message"] and str(tmp) not in refused["message"], refused

    canary = tmp_path / "canary-created-by-pickle"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(str(canary))
    _upload(client, "init/pickled.npz", _npz(vertices=CUBE, faces=CUBE_FACES, colors=trap))
    client.send(protocol.run(_fit_job("init/pickled.npz"), "", "", device="cpu"))
    refused = client.until(("error",))
    assert refused["kind"] == "bad_input" and refused["message"].startswith("init.mesh:"), refused
    assert "pickled.npz" in refused["message"] and str(tmp) not in refused["message"], refused
    assert not canary.exists()
    assert files_outside(tmp) == [] and proc.poll() is None
