"""View-dependent prompting: which way a camera looks (scene/directions.py) decides the prompt suffix."""
from __future__ import annotations

from ...scene.directions import DIRECTIONS


def view_prompts(prompt: str) -> list[str]:
    """The four prompts, in DIRECTIONS order."""
    return [f"{prompt}, {d} view" for d in DIRECTIONS]
