"""The pocket world's vocabulary: which prompts it knows (stdlib only).

Both halves need it: the add-on and job validation refuse a prompt the offline teacher
cannot draw before any worker starts, and the engine's world (`engine/pocket/world.py`)
renders exactly these colours and shapes.
"""
from __future__ import annotations

import re

COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "purple")
SHAPE_NAMES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
ARTICLES = ("a", "an", "the", "one")


class PocketPromptError(ValueError):
    """A prompt outside the world's words; `problem` is the reason without the key in front."""

    def __init__(self, problem: str, key: str = "prompt"):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def prompt_for(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """'a red cube' -> ('red', 'cube'); case, spacing, an article and a final full stop are free.

    Anything else raises PocketPromptError (a ValueError) that names the prompt and lists the
    world's words, because the pocket world knows nothing outside them.
    """
    if not isinstance(prompt, str):
        raise PocketPromptError(f"the pocket world needs a text prompt, got {prompt!r}")
    words = re.sub(r"[.!]+$", "", prompt.strip().lower()).split()
    if words and words[0] in ARTICLES:
        words = words[1:]
    if len(words) == 2 and words[0] in COLOUR_NAMES and words[1] in SHAPE_NAMES:
        return words[0], words[1]
    raise PocketPromptError(
        f"{prompt!r} is not in the pocket world; it knows \"a <colour> <shape>\" with colour one of "
        f"{', '.join(COLOUR_NAMES)} and shape one of {', '.join(SHAPE_NAMES)} (e.g. \"a red cube\")")
