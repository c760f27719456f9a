"""The remote worker's queue: one job runs, the others wait their turn, in order.

A team shares one GPU, so a second artist's job waits instead of being turned away. The
queue is bounded twice, and a refusal says which bound it met: in all (`max_waiting`
jobs behind the running one) and per token (`max_per_owner` jobs waiting or running),
so one artist cannot fill it. The turn passes under the queue's lock the moment a job
ends, and nothing a client does (a slow socket, a vanished peer) is done under that lock:
each waiting job's own thread tells its client where it stands, and a job whose client
has gone leaves the queue from its own thread without holding up the others.
"""
from __future__ import annotations

import collections
import itertools
import threading
from pathlib import Path

from .worker import Refused

POLL_SECONDS = 0.2  # how soon a waiting job notices its client cancelled or went away


class Ticket:
    """One job's place: waiting, running, or done (left the queue)."""

    _serial = itertools.count(1)

    def __init__(self, owner: str, folder: Path | None):
        self.number = next(self._serial)
        self.owner = owner
        self.folder = folder
        self.state = "waiting"

    def __repr__(self) -> str:
        return f"Ticket({self.number}, {self.owner!r}, {self.state})"


class JobQueue:
    def __init__(self, max_waiting: int = 16, max_per_owner: int = 8):
        self.max_waiting = max_waiting
        self.max_per_owner = max_per_owner
        self._cond = threading.Condition()
        self._running: Ticket | None = None
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._folders: collections.Counter = collections.Counter()  # job folders in use (not to be pruned)

    # -- joining and leaving -------------------------------------------------------------------
    def enter(self, owner: str, folder: Path | None = None) -> Ticket:
        """A ticket that runs now or waits its turn; Refused (queue_full) when a bound is met."""
        with self._cond:
            mine = sum(t.owner == owner for t in self._tickets())
            if mine >= self.max_per_owner:
                raise Refused(f"queue full for this token: it already has {mine} jobs waiting or running on this "
                              f"remote worker (--max-queue-per-token {self.max_per_owner}); wait for one to "
                              "finish, or cancel one", "queue_full")
            ticket = Ticket(owner, folder)
            if self._running is None and not self._waiting:
                ticket.state, self._running = "running", ticket
            elif len(self._waiting) >= self.max_waiting:
                raise Refused(f"queue full: {len(self._waiting)} jobs are waiting on this remote worker "
                              f"(--max-queue {self.max_waiting}); try again when one has finished", "queue_full")
            else:
                self._waiting.append(ticket)
            return ticket

    def leave(self, ticket: Ticket) -> None:
        """The job ended, was cancelled, or its client went: the next one's turn (if it was running)."""
        with self._cond:
            if ticket is self._running:
                self._running = None
                if self._waiting:
                    self._running = self._waiting.popleft()
                    self._running.state = "running"
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            ticket.state = "done"
            self._cond.notify_all()

    def wait_turn(self, ticket: Ticket, should_stop, on_place) -> bool:
        """Block until `ticket` runs (True) or `should_stop()` (False: it has left the queue).

        `on_place(position, length)` is called, without the lock, when the ticket starts waiting
        and each time its place changes."""
        told = None
        while True:
            with self._cond:
                if ticket.state == "running":
                    return True
                if ticket.state == "done" or should_stop():
                    self._drop(ticket)
                    return False
                place = self._place(ticket)
                if place == told:
                    self._cond.wait(POLL_SECONDS)
                    continue
            told = place
            on_place(*place)

    # -- what it holds ---------------------------------------------------------------------------
    def place(self, ticket: Ticket) -> tuple[int, int] | None:
        """(position, length) of a waiting ticket; None when it is not waiting."""
        with self._cond:
            return self._place(ticket) if ticket in self._waiting else None

    def summary(self) -> dict:
        """What a client's hello carries: {"running": 0|1, "waiting": n}."""
        with self._cond:
            return {"running": int(self._running is not None), "waiting": len(self._waiting)}

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._running is None and not self._waiting

    def hold(self, folder: Path) -> None:
        """A job folder in use (uploads arriving, a job waiting or running): pruning leaves it."""
        with self._cond:
            self._folders[folder] += 1

    def let_go(self, folder: Path) -> None:
        with self._cond:
            self._folders[folder] -= 1
            if self._folders[folder] <= 0:
                del self._folders[folder]

    def in_use(self) -> set[Path]:
        with self._cond:
            return set(self._folders)

    # -- inside the lock ---------------------------------------------------------------------------
    def _tickets(self):
        if self._running is not None:
            yield self._running
        yield from self._waiting

    def _place(self, ticket: Ticket) -> tuple[int, int]:
        return self._waiting.index(ticket) + 1, len(self._waiting)

    def _drop(self, ticket: Ticket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
            self._cond.notify_all()
        if ticket is not self._running:
            ticket.state = "done"
