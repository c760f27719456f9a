"""The pocket world's vocabulary: which prompts it knows (stdlib only).

Both halves need it: the add-on and job validation refuse a prompt the offline teacher
cannot draw before any worker starts, and the engine's world (`engine/pocket/world.py`)
renders exactly these colours and shapes. An object may carry a front mark ("a red cube
with a white front"): a patch of another colour on its -Y side, so it has a front and a
back and a result can show the front where the back should be (the Janus problem).
"""
from __future__ import annotations

import re
from typing import NamedTuple

COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "purple")
SHAPE_NAMES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")
ARTICLES = ("a", "an", "the", "one")
MARK_ARTICLES = ("a", "an", "the")


# Style name -> the phrases that ask for it (lower case, single spaces). Order is the order the
# world applies them in (engine/pocket/styles.py), whatever order the prompt lists them in.
STYLES: dict[str, tuple[str, ...]] = {
    "blurry": ("blurry", "blurred", "blur", "out of focus", "low-resolution", "low resolution", "lowres"),
    "oversaturated": ("oversaturated", "oversaturated color", "oversaturated colour", "oversaturated colors",
                      "oversaturated colours", "oversaturation", "saturated"),
    "dull": ("dull", "low contrast", "low-contrast", "washed out"),
    "dark": ("dark", "gloomy", "underexposed"),
    "noisy": ("noisy", "noise", "grainy"),
}
STYLE_OF: dict[str, str] = {phrase: name for name, phrases in STYLES.items() for phrase in phrases}


class PocketPromptError(ValueError):
    """A prompt outside the world's words; `problem` is the reason without the key in front."""

    def __init__(self, problem: str, key: str = "prompt"):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class PocketObject(NamedTuple):
    colour: str
    shape: str
    mark: str | None = None  # the front mark's colour; None for a plain object


def prompt_for(colour: str, shape: str, mark: str | None = None) -> str:
    return f"a {colour} {shape}" if mark is None else f"a {colour} {shape} with a {mark} front"


def _words(prompt: str) -> list[str]:
    words = re.sub(r"[.!]+$", "", prompt.strip().lower()).split()
    return words[1:] if words and words[0] in ARTICLES else words


def _mark_of(rest: list[str]) -> str | None:
    """The mark's colour from the words after the shape ('with a white front'), or None if they are not that."""
    if len(rest) == 4 and rest[1] in MARK_ARTICLES:
        rest = [rest[0]] + rest[2:]
    if len(rest) == 3 and rest[0] == "with" and rest[1] in COLOUR_NAMES and rest[2] == "front":
        return rest[1]
    return None


def parse_object(prompt: str) -> PocketObject:
    """'a red cube with a white front' -> ('red', 'cube', 'white'); 'a red cube' -> ('red', 'cube', None).

    Case, spacing, the articles and a final full stop are free. Anything else raises
    PocketPromptError (a ValueError) that names the prompt and lists the world's words,
    because the pocket world knows nothing outside them; so does a mark of the body's own
    colour, which would be no mark at all.
    """
    if not isinstance(prompt, str):
        raise PocketPromptError(f"the pocket world needs a text prompt, got {prompt!r}")
    words = _words(prompt)
    if len(words) >= 2 and words[0] in COLOUR_NAMES and words[1] in SHAPE_NAMES:
        colour, shape = words[0], words[1]
        if len(words) == 2:
            return PocketObject(colour, shape)
        mark = _mark_of(words[2:])
        if mark == colour:
            raise PocketPromptError(f"{prompt!r}: the front must differ from the body's colour ({colour}), "
                                    f"or the mark cannot be seen")
        if mark is not None:
            return PocketObject(colour, shape, mark)
    raise PocketPromptError(
        f"{prompt!r} is not in the pocket world; it knows \"a <colour> <shape>\" or \"a <colour> <shape> with a "
        f"<colour> front\" with colour one of {', '.join(COLOUR_NAMES)} and shape one of {', '.join(SHAPE_NAMES)} "
        f"(e.g. \"a red cube\", \"a red cube with a white front\")")


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(body colour, shape) of a plain or marked prompt: 'a red cube' -> ('red', 'cube')."""
    colour, shape, _ = parse_object(prompt)
    return colour, shape


class PocketNegative(NamedTuple):
    """What a negative prompt asks the pocket world for: one object, or the world in some styles."""

    object: PocketObject | None = None  # "a blue sphere": that object's images
    styles: tuple[str, ...] = ()  # names of STYLES, in STYLES order: the world's images so degraded
    ignored: tuple[str, ...] = ()  # phrases beside the styles the world has no picture of ("ugly")


def _phrase(text: str) -> str:
    return " ".join(re.sub(r"[.!]+$", "", text.strip().lower()).split())


def parse_negative(negative: str) -> PocketNegative:
    """'a blue sphere' -> that object; 'blurry, ugly, dark' -> styles ('blurry', 'dark'), 'ugly' ignored;
    '' -> nothing (the world's own data answer). Raises PocketPromptError (key negative_prompt) for a
    list with an object in it, or with no style the world knows."""
    if not isinstance(negative, str):
        raise PocketPromptError(f"the pocket world needs a text negative prompt, got {negative!r}", "negative_prompt")
    if not negative.strip():
        return PocketNegative()
    try:
        return PocketNegative(object=parse_object(negative))
    except PocketPromptError as error:
        words = _words(negative)
        if "," not in negative and len(words) >= 2 and words[0] in COLOUR_NAMES and words[1] in SHAPE_NAMES:
            raise PocketPromptError(error.problem, "negative_prompt") from None  # an object, misspelt after its shape
    echo = negative if len(negative) <= 30 else negative[:27] + "..."  # messages stay one short line
    styles, ignored = set(), []
    for phrase in filter(None, (_phrase(p) for p in negative.split(","))):
        if phrase in STYLE_OF:
            styles.add(STYLE_OF[phrase])
            continue
        try:
            parse_object(phrase)
        except PocketPromptError:
            ignored.append(phrase)
            continue
        raise PocketPromptError(f"{echo!r} lists the object {phrase!r} among other phrases; the pocket world's "
                                f"negative is one object (e.g. \"a blue sphere\") or a list of styles, not both",
                                "negative_prompt")
    if not styles:
        raise PocketPromptError(
            f"{echo!r} is not in the pocket world: its negative is styles ({', '.join(STYLES)}; others are ignored "
            f"beside one) or one \"a <colour> <shape>\" ({', '.join(COLOUR_NAMES)}; {', '.join(SHAPE_NAMES)})",
            "negative_prompt")
    return PocketNegative(styles=tuple(name for name in STYLES if name in styles), ignored=tuple(ignored))
