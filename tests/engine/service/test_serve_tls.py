"""`serve` speaks TLS by default, and the add-on's client pins its certificate.

The server side: a certificate made once in ROOT/tls (key readable by its owner only),
its fingerprint printed at start and kept across restarts; plain TCP to it gets nothing
usable. The client side is the add-on's own RemoteClient, run in a Blender-side Python
(tests/support/remote_probe.py): a server whose certificate is not the pinned one is
refused with its fingerprint named, before the token is sent. Two proxies of this test
watch the wire: one records the bytes as they pass (the token never appears in them,
though it does when the same client speaks plain TCP to a `--plain` server), and one is a
man in the middle with its own certificate (the client refuses it; it reads nothing).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import threading

import pytest

from blender_sds import protocol
from blender_sds.engine.service.tls import TlsError, ensure_certificate, server_context
from bpy_harness import BPY_ENVS
from ci_skips import missing
from serve_client import REPO, TOKEN, Client, start_serve, stop_serve, tls_context

PROBE = REPO / "tests" / "support" / "remote_probe.py"


# -- the server's certificate ----------------------------------------------------------------------

def test_the_certificate_is_made_once_kept_private_and_reused(tmp_path):
    first = ensure_certificate(tmp_path / "tls")
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    der = ssl.PEM_cert_to_DER_cert(first.cert.read_text())
    assert first.fingerprint == protocol.certificate_fingerprint(der) and len(first.fingerprint) == 95
    assert ensure_certificate(tmp_path / "tls") == first  # reused, not made again
    assert [p.name for p in (tmp_path / "tls").iterdir() if p.name.startswith(".") and p.name != ".lock"] == []

    first.key.chmod(0o644)
    with pytest.raises(TlsError, match="can be read by other users: chmod 600"):
        ensure_certificate(tmp_path / "tls")
    first.key.chmod(0o600)
    other = ensure_certificate(tmp_path / "other")
    first.key.write_bytes(other.key.read_bytes())  # a key that is not the certificate's
    with pytest.raises(TlsError, match="cannot be used together"):
        ensure_certificate(tmp_path / "tls")


def test_serve_prints_its_fingerprint_and_keeps_it_across_restarts(tmp_path):
    proc, port = start_serve(tmp_path)
    try:
        printed = proc.fingerprint
        assert Client(port).fingerprint == printed  # the certificate it serves is the one it printed
    finally:
        stop_serve(proc)
    assert printed == ensure_certificate(tmp_path / "root" / "tls").fingerprint
    proc, port = start_serve(tmp_path)
    try:
        assert proc.fingerprint == printed
    finally:
        stop_serve(proc)


def test_plain_tcp_to_a_tls_serve_gets_nothing_usable(tmp_path):
    proc, port = start_serve(tmp_path)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(protocol.encode(protocol.hello("addon", token=TOKEN)) + protocol.encode(protocol.ping(1)))
        heard = b""
        try:
            while chunk := sock.recv(4096):
                heard += chunk
        except ConnectionResetError:
            pass
        sock.close()
        assert b"{" not in heard and b"hello" not in heard and b"pong" not in heard, heard
        assert heard == b"" or heard[0] == 0x15, heard  # nothing, or a TLS alert record
        assert Client(port).hello()["type"] == "hello" and proc.poll() is None  # and it lives on
    finally:
        stop_serve(proc)


# -- the wire, as a proxy sees it --------------------------------------------------------------------

class Proxy:
    """Forwards connections to 127.0.0.1:`target`, recording each direction's bytes. With
    `certificate`, a man in the middle: it ends the client's TLS with its own certificate,
    speaks TLS to the target itself, and records the plaintext it can read."""

    def __init__(self, target: int, certificate=None):
        self.target = target
        self.context = server_context(certificate) if certificate else None
        self.sent = bytearray()  # client -> server
        self.received = bytearray()  # server -> client
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._bridge, args=(client,), daemon=True).start()

    def _bridge(self, client):
        try:
            if self.context is not None:
                client = self.context.wrap_socket(client, server_side=True)
            server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            if self.context is not None:
                server = tls_context().wrap_socket(server)
        except (OSError, ValueError):
            client.close()
            return
        client.settimeout(None)
        server.settimeout(None)
        threading.Thread(target=self._pump, args=(server, client, self.received), daemon=True).start()
        self._pump(client, server, self.sent)

    @staticmethod
    def _pump(source, sink, record):
        try:
            while data := source.recv(65536):
                record += data
                sink.sendall(data)
        except (OSError, ValueError):
            pass
        for sock in (source, sink):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def run_probe(cases: list[dict]) -> dict:
    python = BPY_ENVS["4.5"] / "bin" / "python"
    if not python.exists():
        missing(f"{python.parent.parent.name} (bpy 4.5) is missing: run scripts/bpy_envs.sh to create it")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([str(python), str(PROBE), json.dumps(cases)], capture_output=True, text=True, timeout=180,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    assert lines, (proc.stdout[-3000:], proc.stderr[-3000:])
    return json.loads(lines[-1][len("PROBE "):])


def token_forms(token: str) -> list[bytes]:
    raw = token.encode()
    return [raw, base64.b64encode(raw), base64.b64encode(raw)[:-4], json.dumps(token).encode(), raw[:12]]


@pytest.fixture
def servers(tmp_path):
    """A TLS serve and a --plain one (loopback), each with the token."""
    for name in ("tls-serve", "plain-serve"):
        (tmp_path / name).mkdir()
    tls_proc, tls_port = start_serve(tmp_path / "tls-serve")
    plain_proc, plain_port = start_serve(tmp_path / "plain-serve", "--plain")
    yield {"tls": (tls_port, tls_proc.fingerprint), "plain": plain_port}
    stop_serve(tls_proc)
    stop_serve(plain_proc)


def test_the_add_on_pins_the_certificate_and_the_token_never_crosses_in_clear(servers, tmp_path):
    tls_port, fingerprint = servers["tls"]
    recorded = Proxy(tls_port)  # watches the TLS bytes pass
    plain = Proxy(servers["plain"])  # the same client speaking plain TCP: the control
    mitm = Proxy(tls_port, ensure_certificate(tmp_path / "mitm"))  # a man in the middle with its own certificate
    mitm_fingerprint = ensure_certificate(tmp_path / "mitm").fingerprint
    spelled = "sha256: " + fingerprint.replace(":", "").lower()  # how else an artist may paste it

    def case(name, port, **extra):
        return {"name": name, "host": "127.0.0.1", "port": port, "token": TOKEN, "fingerprint": fingerprint,
                "tls": True, **extra}
    facts = run_probe([case("pinned", recorded.port), case("spelled", tls_port, fingerprint=spelled),
                       case("plain", plain.port, tls=False, fingerprint=""),
                       case("mitm", mitm.port), case("unset", tls_port, fingerprint=""),
                       case("garbled", tls_port, fingerprint="AB:CD"),
                       case("plain_to_tls", tls_port, tls=False),
                       case("plain_far", 9, tls=False, host="192.0.2.1")])

    for name in ("pinned", "spelled", "plain"):
        assert facts[name]["error"] is None and facts[name]["greeted"] and facts[name]["pong"], (name, facts[name])
    assert facts["pinned"]["certificate"] == fingerprint
    # The token never appears on the TLS wire, in any spelling; the control sees it in clear.
    wire = bytes(recorded.sent) + bytes(recorded.received)
    assert len(recorded.sent) > 200 and recorded.received, "the proxy recorded no conversation"
    assert not [form for form in token_forms(TOKEN) if form in wire]
    assert TOKEN.encode() in bytes(plain.sent) and b'"type":"hello"' in bytes(plain.sent)

    # A man in the middle: refused by its fingerprint, before a byte of the conversation.
    error = facts["mitm"]["error"]
    assert error and mitm_fingerprint in error and fingerprint in error, error
    assert "Someone may be intercepting" in error and "Nothing was sent, not even the token" in error
    assert "Preferences > Add-ons > SDS Text to Mesh > Remote Worker > Fingerprint" in error
    assert bytes(mitm.sent) == b"" and mitm.received == b""  # it decrypted nothing from the client
    # No fingerprint set: the certificate's is named, and where it goes.
    assert fingerprint in facts["unset"]["error"] and "no Fingerprint is set" in facts["unset"]["error"]
    assert "not a SHA-256 fingerprint" in facts["garbled"]["error"]
    assert facts["plain_to_tls"]["error"] is None  # tls=False on loopback is allowed,
    assert not facts["plain_to_tls"]["greeted"]  # but a TLS server gives a plain client nothing
    assert "TLS is off, and 192.0.2.1 is not this machine" in facts["plain_far"]["error"]
    for proxy in (recorded, plain, mitm):
        proxy.close()
