"""The remote worker's rules in this process (fast): framing that cannot be made to read
an endless line or send an unencodable one, file names that cannot leave a folder, the
sandbox's refusals of uploads and jobs that could smuggle code, pickle or paths in, and the
server's paths kept out of what it says back."""
from __future__ import annotations

import base64
import io
import json
import math

import pytest

from blender_sds import protocol
from blender_sds.engine.service.job_queue import JobQueue
from blender_sds.engine.service.sandbox import SandboxWorkspace
from blender_sds.engine.service.worker import Refused
from blender_sds.job import JobError


class Endless(io.RawIOBase):
    """A stream of 'x' with no newline that counts what was read from it."""

    def __init__(self):
        self.given = 0

    def readable(self):
        return True

    def readinto(self, buf):
        buf[:] = b"x" * len(buf)
        self.given += len(buf)
        return len(buf)


def test_an_endless_line_is_refused_after_reading_only_the_limit():
    raw = Endless()
    reader = protocol.MessageReader(io.BufferedReader(raw), max_bytes=protocol.HELLO_MAX_BYTES)
    with pytest.raises(protocol.LineTooLong, match="65536-byte limit"):
        reader.read()
    assert raw.given <= protocol.HELLO_MAX_BYTES + 2 * io.DEFAULT_BUFFER_SIZE


def test_encode_never_fails_on_what_the_engine_or_a_peer_produced():
    line = protocol.encode({"type": "progress", "step": 1, "steps": 2, "loss": math.nan,
                            "figures": {"grad": math.inf}, "note": "\ud800"})
    message = protocol.decode(line)
    assert message["loss"] is None and message["figures"]["grad"] is None and message["note"] == "?"


@pytest.mark.parametrize("line, words", [
    (b'{"type": "ping", "id": NaN}', "NaN is not JSON"),
    (b'{"type": "ping", "id": -Infinity}', "Infinity is not JSON"),
    (b"[" * 100000, "nested more than 64 levels deep"),
    (b'{"type": "upload", "name": "a.png", "offset": -1, "data": ""}', "offset' must be >= 0"),
    (b'{"type": "file", "name": "a", "offset": 0, "data": ""}', "field 'size'"),
])
def test_decode_is_strict(line, words):
    with pytest.raises(protocol.ProtocolError, match=words):
        protocol.decode(line)


@pytest.mark.parametrize("name, ok", [
    ("model/unet/config.json", True), ("views/000-front.png", True), ("checkpoint.pt", True),
    ("../x", False), ("a/../b", False), ("./a", False), ("/etc/passwd", False), ("~/x", False),
    ("C:/x", False), ("a\\b", False), (".hidden", False), ("a/.git/x", False), ("a//b", False), ("", False),
    ("a\x00b", False), ("a\nb", False), ("x\n", False), ("é.png", False), ("/".join("a" * 9), False), (None, False),
])
def test_file_names_that_could_leave_a_folder_are_refused(name, ok):
    if ok:
        assert protocol.check_name(name) == name
    else:
        with pytest.raises(protocol.ProtocolError):
            protocol.check_name(name)


def test_chunks_carry_a_file_in_order_and_back():
    data = bytes(range(256)) * 9000  # over two chunks
    messages = list(protocol.chunks("mesh.npz", io.BytesIO(data), "file", size=len(data)))
    assert len(messages) == 3 and [m["offset"] for m in messages] == [0, protocol.CHUNK_BYTES, 2 * protocol.CHUNK_BYTES]
    assert all(len(protocol.encode(m)) < protocol.MAX_LINE_BYTES for m in messages)
    assert b"".join(protocol.chunk_bytes(protocol.decode(protocol.encode(m))) for m in messages) == data
    empty = list(protocol.chunks("a.png", io.BytesIO(b""), "upload"))
    assert len(empty) == 1 and empty[0]["data"] == "" and empty[0]["offset"] == 0


# -- the sandbox ---------------------------------------------------------------------------------

@pytest.fixture
def sandbox(tmp_path):
    return SandboxWorkspace(tmp_path / "root", JobQueue(), None, max_upload_bytes=1000, keep_jobs=2)


def upload(ws, name, data: bytes, offset=0):
    ws.upload({"type": "upload", "name": name, "offset": offset, "data": base64.b64encode(data).decode()})


def run_message(job, **fields):
    return {**protocol.run(job, "", ""), **fields}


def sd_job(model, **extra):
    return {"version": 1, "prompt": "x", "guidance": {"kind": "stable-diffusion", "model": model}, **extra}


def test_uploads_land_in_a_server_named_folder_in_order_and_within_budget(sandbox, tmp_path):
    upload(sandbox, "views/a.png", b"12345")
    upload(sandbox, "views/a.png", b"678", offset=5)
    folder = sandbox.folder
    assert folder.parent == (tmp_path / "root" / "jobs").resolve()
    assert (folder / "inputs" / "views" / "a.png").read_bytes() == b"12345678"
    with pytest.raises(Refused, match="chunk at offset 2, but 8 bytes are there"):
        upload(sandbox, "views/a.png", b"x", offset=2)
    with pytest.raises(Refused, match="limit of 0 MiB") as exc:
        upload(sandbox, "big.safetensors", b"x" * 1000)
    assert exc.value.code == "too_large"
    with pytest.raises(Refused, match="cannot write it here"):
        upload(sandbox, "views/a.png/inner.png", b"x")  # a.png is a file


def test_a_job_naming_uploads_is_read_inside_its_folder_and_gets_a_fresh_out(sandbox):
    upload(sandbox, "init/checkpoint.pt", b"not really a checkpoint")
    job, out = sandbox.prepare(run_message(sd_job("org/model", init={"checkpoint": "init/checkpoint.pt"})))
    inputs = sandbox.jobs.resolve()
    assert job["init"]["checkpoint"].startswith(str(inputs)) and job["guidance"]["model"] == "org/model"
    assert out.startswith(str(inputs)) and out.endswith("/out")
    assert sandbox.folder is None  # the next job gets a new folder


@pytest.mark.parametrize("files, job, words", [
    ({"model/model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline",
                                            "unet": ["my_code", "EvilUNet"]})},
     sd_job("model"), "comes from 'my_code'"),
    ({"model.pt": "x"}, sd_job("model.pt"), "only as .safetensors"),
    ({}, sd_job("org/model", init={"checkpoint": "init/../../../x.pt"}), "leaves its folder"),
])
def test_jobs_that_would_load_code_pickle_or_foreign_paths_are_refused(sandbox, files, job, words):
    for name, text in files.items():
        upload(sandbox, name, text.encode())
    with pytest.raises(Refused, match=words):
        sandbox.prepare(run_message(job))


def test_a_start_mesh_is_an_uploaded_npz_read_inside_the_jobs_folder(sandbox):
    upload(sandbox, "init/blockout.npz", b"PK not really arrays")
    job, _out = sandbox.prepare(run_message(sd_job("org/model", init={"mesh": "init/blockout.npz"})))
    inputs = (sandbox.jobs / "x").resolve().parent
    assert job["init"]["mesh"].startswith(str(inputs)) and job["init"]["mesh"].endswith("/inputs/init/blockout.npz")


@pytest.mark.parametrize("files, mesh, words", [
    ({"init/blockout.json": "{}"}, "init/blockout.json", "start mesh only as .npz"),
    ({}, "init/../../../x.npz", "leaves its folder"),
    ({}, "/tmp/x.npz", "absolute path"),
])
def test_a_start_mesh_that_is_not_an_uploaded_npz_is_refused(sandbox, files, mesh, words):
    for name, text in files.items():
        upload(sandbox, name, text.encode())
    with pytest.raises(Refused, match=words) as exc:
        sandbox.prepare(run_message(sd_job("org/model", init={"mesh": mesh})))
    assert exc.value.key == "init.mesh"


def test_a_start_mesh_that_was_not_uploaded_names_the_key(sandbox):
    with pytest.raises(JobError, match="init.mesh: 'init/blockout.npz' was not uploaded"):
        sandbox.prepare(run_message(sd_job("org/model", init={"mesh": "init/blockout.npz"})))


def test_a_job_naming_a_file_that_was_not_uploaded_names_the_key(sandbox):
    with pytest.raises(JobError, match="init.checkpoint: 'c.pt' was not uploaded"):
        sandbox.prepare(run_message(sd_job("org/model", init={"checkpoint": "c.pt"})))


def test_one_job_at_a_time_across_connections_the_next_one_waits(tmp_path):
    queue = JobQueue(max_waiting=1)
    a, b, c = (SandboxWorkspace(tmp_path, queue, None, max_upload_bytes=10) for _ in range(3))
    a.claim()
    b.claim()
    assert (a.ticket.state, b.ticket.state) == ("running", "waiting") and queue.place(b.ticket) == (1, 1)
    with pytest.raises(Refused, match=r"queue full: 1 jobs are waiting .*--max-queue 1") as exc:
        c.claim()
    assert exc.value.code == "queue_full"
    a.release()
    assert b.ticket.state == "running"  # its turn came when a's job ended, whatever b's thread was doing
    b.release()
    assert queue.idle


def test_what_the_server_says_names_the_clients_files_never_its_own_folders(sandbox, tmp_path):
    upload(sandbox, "init/checkpoint.pt", b"x")
    job, out = sandbox.prepare(run_message(sd_job("org/model", init={"checkpoint": "init/checkpoint.pt"})))
    said = sandbox.public(protocol.error(f"init.checkpoint: {job['init']['checkpoint']} is not a readable checkpoint; "
                                         f"the disk holding {out} is full (writing {out}/status.json)", "bad_input",
                                         "job", traceback=f'File "{out}/x.py"', python="/opt/python3"))
    assert said["message"] == ("init.checkpoint: init/checkpoint.pt is not a readable checkpoint; the disk holding "
                               "the job's folder is full (writing status.json)")
    assert "traceback" not in said and "python" not in said
    assert str(tmp_path) not in json.dumps(sandbox.public({"type": "stage", "name": f"in {tmp_path}/root/x"}))
    chunk = {"type": "file", "name": "log.jsonl", "offset": 0, "size": 3, "data": "abc="}
    assert sandbox.public(chunk) is chunk  # data passes untouched


def test_old_job_folders_are_pruned_and_only_ours(sandbox, tmp_path):
    stranger = tmp_path / "root" / "jobs" / "not-ours"
    stranger.mkdir(parents=True)
    made = []
    for i in range(4):
        upload(sandbox, "a.png", b"x")
        made.append(sandbox.folder)
        sandbox.close()  # its connection ended
        sandbox.claim()
        sandbox.release()  # a finished job prunes
    left = sorted(p.name for p in (tmp_path / "root" / "jobs").iterdir())
    assert left == sorted([m.name for m in made[-2:]] + ["not-ours"])
    # A folder in use (uploads arriving, a job waiting) is never pruned, however old.
    upload(sandbox, "a.png", b"x")
    busy = sandbox.folder
    for i in range(3):
        other = SandboxWorkspace(tmp_path / "root", sandbox.queue, None, max_upload_bytes=1000, keep_jobs=2)
        upload(other, "a.png", b"x")
        other.close()
        other.claim()
        other.release()
    assert busy.is_dir() and len(list((tmp_path / "root" / "jobs").iterdir())) == 4
