"""Who may use a remote worker: the secrets it was started with.

A token file holds one token per line (blank lines and lines starting with '#' are
skipped), so a team can give each artist their own: the queue's per-token share then
means per artist, and one artist's token can be withdrawn without telling everyone a new
one. SDS_WORKER_TOKEN holds one token. Never the command line: other users can read a
process's arguments. A token is compared with hmac.compare_digest against every token,
so the time taken says nothing about which one, or how much of it, was right.
"""
from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from .worker import Refused

MIN_TOKEN_CHARS = 16
TOKEN_ENV = "SDS_WORKER_TOKEN"
MAKE_ONE = "python -c \"import secrets; print(secrets.token_urlsafe(32))\""


class TokenError(Exception):
    """A token source that cannot be used (the server does not start)."""


class Tokens:
    """The accepted tokens; `admit` names which one a hello carries (its owner in the queue)."""

    def __init__(self, tokens, labels=None):
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        self.labels = tuple(labels or (f"token {i + 1}" for i in range(len(self._tokens))))
        if not self._tokens:
            raise TokenError("no token given")

    def __len__(self) -> int:
        return len(self._tokens)

    def admit(self, hello: dict) -> str:
        """The label of the token `hello` carries, or Refused (code unauthorized)."""
        given = hello.get("token")
        if not isinstance(given, str) or not given:
            raise Refused("this remote worker needs a token: set Token in the add-on preferences to the "
                          "worker's secret", "unauthorized", kind="failed")
        raw = given.encode("utf-8", "replace")
        found = None
        for label, token in zip(self.labels, self._tokens):  # every one, whatever matched
            if hmac.compare_digest(raw, token) and found is None:
                found = label
        if found is None:
            raise Refused("wrong token: the remote worker refused the connection; check Token in the add-on "
                          "preferences", "unauthorized", kind="failed")
        return found


class Nobody(Tokens):
    """No token set (loopback only): every hello is let in, all as one owner."""

    def __init__(self):
        self._tokens, self.labels = (), ("everyone",)

    def admit(self, hello: dict) -> str:
        return "everyone"


def as_tokens(tokens) -> Tokens:
    """Tokens from a Tokens, one token (str), several, or None (no token: Nobody)."""
    if isinstance(tokens, Tokens):
        return tokens
    if tokens is None:
        return Nobody()
    if isinstance(tokens, str):
        return Tokens([tokens])
    return Tokens(list(tokens))


def read_tokens(token_file: str | None) -> Tokens | None:
    """The tokens from --token-file, else SDS_WORKER_TOKEN, else None."""
    if not token_file:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        _check(token, TOKEN_ENV)
        return Tokens([token])
    path = Path(token_file)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"--token-file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"--token-file: {path} can be read by other users: chmod 600 {path}")
    tokens, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        where = "--token-file" if len(text.strip().splitlines()) == 1 else f"--token-file {path} line {number}"
        _check(token, where)
        if token in tokens:
            raise TokenError(f"{where}: the same token as line {labels[tokens.index(token)].split()[-1]}; "
                             "give each artist their own")
        tokens.append(token)
        labels.append(f"token on line {number}")
    if not tokens:
        raise TokenError(f"--token-file: {path} holds no token (one per line; make one with {MAKE_ONE})")
    return Tokens(tokens, labels)


def _check(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"{where}: the token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
                         f"{MAKE_ONE}")
