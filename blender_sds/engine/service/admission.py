"""The admission gate: where a connection waits until it has shown the token.

A hostile peer needs no token to open connections, so the time and room they get before
authenticating is the whole of what they can take from the team. Here that is bounded
and kept apart from the clients that did show a token:

- One thread, never blocking, drives every unauthenticated connection with a selector: the
  accept, the TLS handshake (non-blocking, so a peer that never finishes it holds no
  thread) and the first line, the hello, read in whatever pieces it comes.
- Each connection has `seconds` from its accept to finish the handshake and send a whole
  hello carrying a right token. Trickling bytes does not extend it.
- At most `total` such connections at once, and `per_address` from one address; a
  connection over either is closed at once. Held connections cost a socket each, no thread,
  so the budget can be far larger than any client's need: a hostile host fills its own
  per-address share, and the artists' connections (from other addresses) find room.
- A peer is told nothing before it has sent a well-formed hello: a dropped, expired or
  garbled connection is just closed. A hello with no or a wrong token is answered
  `unauthorized` (what the add-on shows the artist), then closed.
- A connection that shows the token leaves the gate for its own session (serve.py), so
  authenticated clients never wait behind unauthenticated ones.
"""
from __future__ import annotations

import collections
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from ... import protocol
from .worker import Refused

READ_BYTES = 16384
ACCEPTS_PER_TURN = 256  # then the held connections get their turn


@dataclass(frozen=True)
class GateLimits:
    seconds: float = 5.0  # from accept to a whole hello with the token, TLS handshake included
    total: int = 128  # connections that have not shown the token, in all
    per_address: int = 16  # ... from one address


class _Held:
    """One connection in the gate."""

    __slots__ = ("sock", "peer", "address", "deadline", "handshaking", "buffer", "events")

    def __init__(self, sock, peer, deadline: float, handshaking: bool):
        self.sock = sock
        self.peer = peer
        self.address = str(peer[0]).split("%")[0]
        self.deadline = deadline
        self.handshaking = handshaking
        self.buffer = b""
        self.events = selectors.EVENT_READ


class Gate:
    """Accepts on `listener`, holds each connection until its hello, hands it on.

    `check(hello)` returns the owner of the token (or raises Refused, or ProtocolError for a
    hello of another protocol version); `admit(sock, peer, hello, leftover)` takes the
    connection on, or returns a message refusing it (sent, then the connection closed).
    Neither may block."""

    def __init__(self, listener: socket.socket, context: ssl.SSLContext | None, check, admit,
                 limits: GateLimits = GateLimits()):
        self.listener = listener
        self.context = context
        self.check = check
        self.admit = admit
        self.limits = limits
        self.held: dict[socket.socket, _Held] = {}
        self.per_address: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()  # what happened to connections, by outcome
        self._closed = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        """Until close(): accept, drive, expire."""
        self.listener.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._closed.is_set():
                now = time.monotonic()
                soonest = min((h.deadline for h in self.held.values()), default=now + 1.0)
                for key, _mask in self._selector.select(max(0.0, min(soonest - now, 1.0))):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        return
                    elif key.fileobj in self.held:  # not dropped earlier in this turn
                        self._step(key.data)
                now = time.monotonic()
                for held in [h for h in self.held.values() if h.deadline <= now]:
                    self._drop(held, "expired")
        finally:
            for held in list(self.held.values()):
                self._drop(held, "closed")
            self._selector.close()
            self._wake_r.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- steps -----------------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, or the listener closed: the next turn tries again
                self.counts["accept_failed"] += 1
                return
            address = str(peer[0]).split("%")[0]
            if len(self.held) >= self.limits.total:
                self._close_silently(sock, "over_total")
                continue
            if self.per_address[address] >= self.limits.per_address:
                self._close_silently(sock, "over_address")
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.context is not None:
                    sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError):
                self._close_silently(sock, "failed")
                continue
            held = _Held(sock, peer, time.monotonic() + self.limits.seconds, self.context is not None)
            self.held[sock] = held
            self.per_address[address] += 1
            self.counts["accepted"] += 1
            self._selector.register(sock, selectors.EVENT_READ, held)
            self._step(held)

    def _step(self, held: _Held) -> None:
        try:
            if held.handshaking:
                try:
                    held.sock.do_handshake()
                except ssl.SSLWantReadError:
                    return self._want(held, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(held, selectors.EVENT_WRITE)
                held.handshaking = False
                self._want(held, selectors.EVENT_READ)
            while True:
                try:
                    chunk = held.sock.recv(READ_BYTES)
                except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                    return
                except ssl.SSLWantWriteError:
                    return self._want(held, selectors.EVENT_WRITE)
                if not chunk:
                    return self._drop(held, "hung_up")
                held.buffer += chunk
                while b"\n" in held.buffer:
                    line, held.buffer = held.buffer.split(b"\n", 1)
                    if line.strip():  # blank lines before the hello are nothing, as in MessageReader
                        return self._judge(held, line + b"\n")
                if len(held.buffer) > protocol.HELLO_MAX_BYTES:
                    return self._drop(held, "too_long")
        except (OSError, ValueError):  # ssl.SSLError is an OSError: a failed handshake, a reset
            self._drop(held, "failed")

    def _judge(self, held: _Held, line: bytes) -> None:
        """The first line: a hello with a right token leaves the gate; anything else is dropped."""
        try:
            hello = protocol.decode(line)
        except protocol.ProtocolError:
            return self._drop(held, "not_a_hello")
        if hello.get("type") != "hello":
            return self._drop(held, "not_a_hello")
        try:
            self.check(hello)
            protocol.check_hello(hello, "addon")
        except Refused as exc:
            return self._answer(held, exc.as_message(), "unauthorized")
        except protocol.ProtocolError as exc:  # the token was right: the peer may hear why
            return self._answer(held, protocol.error(f"protocol: {exc}", "failed", "bad_hello"), "bad_hello")
        self._release(held)
        try:
            refusal = self.admit(held.sock, held.peer, hello, held.buffer)
        except Exception:
            refusal = protocol.error("internal error taking the connection on", "failed", "internal")
        if refusal is not None:
            self._send_then_close(held.sock, refusal)
            self.counts["refused_after_token"] += 1
        else:
            self.counts["admitted"] += 1

    # -- endings ---------------------------------------------------------------------------------
    def _want(self, held: _Held, events: int) -> None:
        if held.events != events:
            held.events = events
            self._selector.modify(held.sock, events, held)

    def _release(self, held: _Held) -> None:
        """Out of the gate (admitted or dropped): its budget is free again."""
        if self.held.pop(held.sock, None) is None:
            return
        try:
            self._selector.unregister(held.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.per_address[held.address] -= 1
        if self.per_address[held.address] <= 0:
            del self.per_address[held.address]

    def _drop(self, held: _Held, why: str) -> None:
        self._release(held)
        self._close_silently(held.sock, why)

    def _answer(self, held: _Held, message: dict, why: str) -> None:
        self._release(held)
        self._send_then_close(held.sock, message)
        self.counts[why] += 1

    def _send_then_close(self, sock, message: dict) -> None:
        try:
            sock.setblocking(False)
            sock.send(protocol.encode(message))  # small, into an empty buffer; if it would block, it is not said
            socket.socket.shutdown(sock, socket.SHUT_WR)  # FIN after it (the TLS layer is left as it is)
        except (OSError, ValueError):
            pass
        self._close(sock)

    def _close_silently(self, sock, why: str) -> None:
        self.counts[why] += 1
        self._close(sock)

    @staticmethod
    def _close(sock) -> None:
        try:
            sock.close()
        except OSError:
            pass
