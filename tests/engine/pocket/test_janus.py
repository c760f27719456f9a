"""The Janus measure: the truth keeps its one front, a two-faced copy is caught, plain prompts are refused."""
import math

import numpy as np
import pytest

from blender_sds.engine.pocket import janus, world

BOUNDS = {"center": (0.5, -1.0, 2.0), "size": 3.0}
SHAPES = ["cube", "sphere", "pyramid", "torus", "cylinder", "cone"]


def _back_shares(figures):
    return [s for a, s in zip(janus.JANUS_AZIMUTHS, figures["mark_share"]) if a in janus.BACK_AZIMUTHS]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_analytic_truth_shows_its_mark_from_the_front_only(shape):
    figures = janus.truth_figures(f"a red {shape} with a white front")
    assert figures["mark_share"][0] > 6 * janus.SEEN_SHARE  # far above the threshold
    assert _back_shares(figures) == [0.0, 0.0, 0.0]  # exactly none from within 45 degrees of the back
    assert figures["front_kept"] and not figures["janus"]


def test_the_truth_as_a_mesh_is_never_janus():
    figures = [janus.janus_figures(janus.truth_mesh(world.prompt_for("blue", s, "yellow"), BOUNDS, resolution=40),
                                   world.prompt_for("blue", s, "yellow"), BOUNDS) for s in SHAPES]
    for f in figures:
        assert max(_back_shares(f)) < janus.SEEN_SHARE / 5 and f["mark_share"][0] > 0.3, f
    assert janus.janus_rate(figures) == 0.0 and janus.front_kept_rate(figures) == 1.0


def test_a_two_faced_mesh_is_janus():
    figures = []
    for shape in ["cube", "sphere", "pyramid", "torus"]:
        prompt = world.prompt_for("green", shape, "purple")
        f = janus.janus_figures(janus.truth_mesh(prompt, BOUNDS, resolution=40, two_faced=True), prompt, BOUNDS)
        assert f["mark_share"][4] > 3 * janus.SEEN_SHARE, f  # the copy seen from straight behind
        figures.append(f)
    assert janus.janus_rate(figures) == 1.0 and janus.front_kept_rate(figures) == 1.0


def test_a_mesh_turned_round_loses_its_front_and_is_janus():
    prompt = "a white cube with a red front"
    mesh = janus.truth_mesh(prompt, BOUNDS, resolution=32)
    centre = np.asarray(BOUNDS["center"], dtype=np.float32)
    turned = dict(mesh, vertices=(mesh["vertices"] - centre) * np.float32([-1, -1, 1]) + centre)
    f = janus.janus_figures(turned, prompt, BOUNDS)
    assert f["janus"] and not f["front_kept"]


def test_plain_prompts_and_colourless_meshes_are_refused_by_name():
    mesh = janus.truth_mesh("a red cube", BOUNDS, resolution=24)
    with pytest.raises(ValueError, match="janus: 'a red cube' has no front mark"):
        janus.janus_figures(mesh, "a red cube", BOUNDS)
    with pytest.raises(ValueError, match="mesh: has no 'colors'"):
        janus.janus_figures(dict(mesh, colors=None), "a red cube with a white front", BOUNDS)
    assert math.isnan(janus.janus_rate([])) and math.isnan(janus.front_kept_rate([]))
