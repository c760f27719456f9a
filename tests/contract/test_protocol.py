"""The add-on <-> worker protocol: framing, limits, the hello handshake, and a real worker
subprocess answering hello, refusing a bad job with the key, ignoring unknown messages,
and exiting on EOF. (The full run path is covered by test_addon_e2e.py.)"""
import io
import json
import os
import subprocess
import sys

import pytest

from bpy_harness import REPO, WORKER_PYTHON

sys.path.insert(0, str(REPO))
from blender_sds import protocol  # noqa: E402


def test_encode_decode_round_trip():
    msg = protocol.run({"version": 1, "prompt": "ä teapot"}, "/base", "/out", device="cpu")
    line = protocol.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line) == msg


@pytest.mark.parametrize("line, words", [
    (b"not json", "not a JSON line"),
    (b"[1, 2]", "JSON object"),
    (b'{"step": 3}', "without a 'type'"),
    (b'{"type": "run", "job": {}, "base_dir": "/b"}', "field 'out'"),
    (b'{"type": "progress", "step": true, "steps": 3}', "field 'step'"),
    (b'{"type": "error", "message": "x", "kind": "oops"}', "kind must be one of"),
])
def test_decode_rejects_malformed_lines(line, words):
    with pytest.raises(protocol.ProtocolError, match=words):
        protocol.decode(line)


def test_unknown_types_pass_for_forward_compatibility():
    assert protocol.decode(b'{"type": "warning", "text": "later"}')["type"] == "warning"


def test_line_limit_on_both_sides():
    huge = {"type": "stage", "name": "x" * protocol.MAX_LINE_BYTES}
    with pytest.raises(protocol.ProtocolError, match="line limit"):
        protocol.encode(huge)
    stream = io.BytesIO(b"{" + b" " * protocol.MAX_LINE_BYTES + b"}\n")
    with pytest.raises(protocol.ProtocolError, match="limit"):
        protocol.MessageReader(stream).read()


def test_reader_skips_blank_lines_and_ends_at_eof():
    stream = io.BytesIO(b"\n" + protocol.encode(protocol.cancel()) + b"\n\n")
    assert list(protocol.MessageReader(stream)) == [{"type": "cancel"}]


def test_hello_version_and_role_checks():
    protocol.check_hello(protocol.hello("worker"), "worker")
    with pytest.raises(protocol.ProtocolError, match="version 2.*same release"):
        protocol.check_hello({"type": "hello", "protocol": 2, "role": "worker"}, "worker")
    with pytest.raises(protocol.ProtocolError, match="from 'addon'"):
        protocol.check_hello(protocol.hello("addon"), "worker")
    with pytest.raises(protocol.ProtocolError, match="expected a 'hello'"):
        protocol.check_hello({"type": "progress", "step": 1, "steps": 2}, "worker")


def test_errors_carry_a_code_and_maybe_a_key_for_the_program():
    msg = protocol.decode(protocol.encode(protocol.error("seed: must be an int", "bad_input", "job", "seed")))
    assert (msg["kind"], msg["code"], msg["key"]) == ("bad_input", "job", "seed")
    assert "key" not in protocol.error("busy", "bad_input", "busy")
    with pytest.raises(ValueError, match="code must be one of"):
        protocol.error("x", "failed", "some-words")
    for field in ("code", "key"):
        with pytest.raises(protocol.ProtocolError, match=f"field '{field}'"):
            protocol.check_message({"type": "error", "message": "x", "kind": "failed", field: 3})


def _worker():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([WORKER_PYTHON, "-m", "blender_sds.engine", "worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_worker_refuses_a_bad_job_naming_the_key_and_exits_on_eof():
    proc = _worker()
    reader, writer = protocol.MessageReader(proc.stdout), protocol.MessageWriter(proc.stdin)
    hello = reader.read()
    protocol.check_hello(hello, "worker")
    writer.write(protocol.hello("addon"))
    writer.write({"type": "something-new"})  # ignored
    writer.write(protocol.run({"version": 1, "prompt": "x", "guidance": {"kind": "stable-diffusion",
                                                                         "model": "org/name", "scale": -1}},
                              str(REPO), "/tmp/unused"))
    msg = reader.read()
    while msg["type"] == "heartbeat":
        msg = reader.read()
    assert msg["type"] == "error" and msg["kind"] == "bad_input"
    assert msg["code"] == "job" and msg["key"] == "guidance.scale" and "guidance.scale" in msg["message"]
    writer.close()  # EOF: the worker exits by itself
    assert proc.wait(30) == 0
    assert reader.read() is None


def test_worker_refuses_another_protocol_version():
    proc = _worker()
    reader = protocol.MessageReader(proc.stdout)
    reader.read()
    proc.stdin.write(json.dumps({"type": "hello", "protocol": 99, "role": "addon"}).encode() + b"\n")
    proc.stdin.flush()
    msg = reader.read()
    while msg["type"] == "heartbeat":
        msg = reader.read()
    assert msg["type"] == "error" and msg["kind"] == "failed" and "version 99" in msg["message"]
    assert proc.wait(30) == 2
    proc.stdin.close()


NOISY_WORKER = """
import os, sys
from blender_sds.engine.service import worker
real = worker._protocol_stdout
def noisy():
    stream = real()
    print("noise from print")            # sys.stdout, now stderr
    os.write(1, b"noise from fd 1\\n")   # what a C library would do
    return stream
worker._protocol_stdout = noisy
sys.exit(worker.main())
"""


def test_worker_stdout_carries_only_messages(tmp_path):
    """Prints and raw writes to fd 1 inside the worker go to stderr, never into the messages."""
    script = tmp_path / "noisy_worker.py"
    script.write_text(NOISY_WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([WORKER_PYTHON, str(script)], input=b"", capture_output=True, env=env, timeout=30)
    assert proc.returncode == 0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and [protocol.decode(ln)["type"] for ln in lines][0] == "hello"
    assert b"noise from print" in proc.stderr and b"noise from fd 1" in proc.stderr
    assert b"noise" not in proc.stdout
