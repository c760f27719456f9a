"""JSON from outside (a job file, a pipe, a socket) parsed within bounds (standard library only).

Python's parser recurses once per nesting level and turns any run of digits into an int,
so a few thousand `[` end in RecursionError and a 5,000-digit number in ValueError, deep in
the reader, naming nothing. Both are checked here before the real parse, and NaN and
Infinity (not JSON) are refused, so the caller can name its file or field.
"""
from __future__ import annotations

import json
import re

MAX_DEPTH = 64  # a job nests 5 deep (cameras.rig[i].c2w[r]); anything near this is a fault
MAX_NUMBER_CHARS = 40  # a float's repr is at most 24 characters

_MARK = re.compile(r'["\\\[\]{}]')  # what decides nesting: quotes, escapes, brackets


class JsonGateError(ValueError):
    """JSON refused before or while parsing; the message says why, in a few words."""


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """The deepest [ or { nesting outside strings, counted only up to `limit` + 1."""
    depth = deepest = 0
    in_string, skip_to = False, 0
    for mark in _MARK.finditer(text):  # the C scanner passes long strings and numbers by
        at, char = mark.start(), mark.group()
        if at < skip_to:
            continue
        if in_string:
            if char == "\\":
                skip_to = at + 2  # the escaped character, a quote or another backslash
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def _bounded_number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise JsonGateError(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(text)
    return parse


def _constant(name: str):
    raise JsonGateError(f"{name} is not JSON (numbers must be finite)")


def loads(text: str, max_depth: int = MAX_DEPTH):
    """`json.loads` within MAX_DEPTH and MAX_NUMBER_CHARS; JsonGateError says what was wrong."""
    if nesting_depth(text, max_depth) > max_depth:
        raise JsonGateError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_int=_bounded_number(int), parse_float=_bounded_number(float),
                          parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise JsonGateError(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:  # unreachable after the depth check; kept so no caller ever sees one
        raise JsonGateError("nested too deeply") from None
