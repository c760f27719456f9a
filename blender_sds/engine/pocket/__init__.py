"""The pocket world: a tiny offline text-to-image teacher whose 3D truth is known.

`world` (shapes x colours, plain and front-marked, prompts, analytic renders, truth),
`dataset` and `posed` (the renders a teacher remembers), `metrics` (Chamfer, colour error
and R-precision of a result mesh), `janus` (is a result's front mark seen from behind). Its judge, the guidance kind "pocket", lives in guidance/teachers/pocket.py.
See docs/QUALITY.md.
"""
from .world import COLOUR_NAMES, PROMPTS, SHAPE_NAMES, parse_prompt, truth_colour, truth_points

__all__ = ["COLOUR_NAMES", "PROMPTS", "SHAPE_NAMES", "parse_prompt", "truth_colour", "truth_points"]
