"""Drives the add-on's own RemoteClient (blender_sds/addon/remote_client.py) outside Blender's UI.

Run by a Blender-side Python (the bpy venv: the add-on package imports bpy when it loads,
and the engine's venv has none), with the repository on PYTHONPATH:

    python remote_probe.py '[{"name": ..., "host": ..., "port": ..., "token": ..., "fingerprint": ..., "tls": true}]'

For each case it starts a client, waits for the server's hello, sends a ping and waits for
its pong, then stops; it prints one line `PROBE {name: {"error": ..., "greeted": ..., "pong": ...}}`.
"""
import json
import os
import sys
import tempfile
import time

from blender_sds import protocol
from blender_sds.addon.remote_client import RemoteClient
from blender_sds.addon.worker_client import WorkerStartError


def probe(case: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="probe-", ignore_cleanup_errors=True) as folder:  # nothing of it is read
        return _probe(case, folder)


def _probe(case: dict, folder: str) -> dict:
    client = RemoteClient(case["host"], case["port"], case.get("token", ""), folder, os.path.join(folder, "log.txt"),
                          fingerprint=case.get("fingerprint", ""), tls=case.get("tls", True))
    out = {"error": None, "greeted": False, "pong": False}
    try:
        client.start()
    except WorkerStartError as exc:
        out["error"] = str(exc)
        return out
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end and not (client.greeted.is_set() or client.closed.is_set()):
            time.sleep(0.02)
        out["greeted"] = client.greeted.is_set()
        if out["greeted"]:
            client.send(protocol.ping("probe"))
        while out["greeted"] and time.monotonic() < end + 10 and not out["pong"]:
            out["pong"] = any(m.get("type") == "pong" and m.get("id") == "probe" for m in client.messages(0.2))
        out["certificate"] = client.certificate
    finally:
        client.stop(grace=2.0)
    return out


def main() -> None:
    cases = json.loads(sys.argv[1])
    print("PROBE " + json.dumps({case["name"]: probe(case) for case in cases}), flush=True)


if __name__ == "__main__":
    main()
