"""bench smoothing's figures on shapes whose distances are known: Chamfer's two halves and the
signed offset on moved cubes, the field's surfaces on a ball's shell; its options refused by name."""
import math

import numpy as np
import pytest
import torch

from blender_sds.engine.bench.smoothing import field_surfaces, parse_args, surface_distances
from blender_sds.engine.pocket import shapes, world

BOUNDS = {"center": (0.1, -0.2, 0.3), "size": 2.0}
HALF = shapes.SHAPES["cube"].half  # unit frame


def cube_mesh(scale: float) -> dict:
    """The true cube scaled about its centre, as a triangle soup in world units."""
    triangles = shapes.SHAPES["cube"].triangles.numpy().reshape(-1, 3) * scale
    return {"vertices": world.to_world(triangles, BOUNDS).astype(np.float32),
            "faces": np.arange(len(triangles), dtype=np.int32).reshape(-1, 3)}


# float32 vertices in world units up to ~1.2: each distance is off by a few of their ulps.
EXACT = 1e-6


def test_the_truth_itself_is_at_no_distance():
    d = surface_distances(cube_mesh(1.0), "a red cube", BOUNDS, n=4000)
    for key in ("chamfer", "to_truth", "to_mesh", "offset"):
        assert abs(d[key]) <= EXACT, (key, d)


@pytest.mark.parametrize("grow", [0.02, -0.02])
def test_a_grown_or_shrunk_cube_is_offset_by_its_growth(grow):
    """Every plane moved out by `grow` (a fraction of the bounds). Each point of the inner
    cube is exactly |grow| from the outer one; from the outer cube's points the inner one is
    at least that far, and up to sqrt 3 times it at the rim. The offset has the growth's sign."""
    d = surface_distances(cube_mesh((HALF + grow) / HALF), "a red cube", BOUNDS, n=4000)
    inner, outer = ("to_mesh", "to_truth") if grow > 0 else ("to_truth", "to_mesh")
    assert d[inner] == pytest.approx(abs(grow), abs=EXACT)
    assert abs(grow) - EXACT <= d[outer] <= math.sqrt(3) * abs(grow) + EXACT
    assert d[outer] > abs(grow) + 1e-4  # the rim counts: the mean is not the faces' alone
    assert d["offset"] == pytest.approx(math.copysign(d["to_truth"], grow), abs=EXACT)
    assert d["chamfer"] == pytest.approx(0.5 * (d["to_truth"] + d["to_mesh"]), abs=EXACT)


def test_the_fields_surface_is_found_at_the_level_and_where_renders_see_it():
    """A ball's shell, density 100 sigmoid((R - r) / w) per bounds size with w = 0.01: it
    crosses 10 at R + w ln 9, and its optical depth from outside, 100 w ln(1 + e^((R - r)/w)),
    reaches ln 2 at exactly R. R is the true sphere's radius grown by 0.03."""
    radius, width, grow = shapes.SHAPES["sphere"].radius + 0.03, 0.01, 0.03

    def shell(points):
        r = torch.from_numpy(world.to_unit(points.double().numpy(), BOUNDS)).norm(dim=-1)
        return 100.0 * torch.sigmoid((radius - r) / width)

    samples = 751
    spacing = math.sqrt(3) / 2 / (samples - 1)  # where each ray is sampled; the crossings are read to this
    got = field_surfaces(shell, "a red sphere", BOUNDS, level=10.0, samples=samples)
    assert got["level_offset"] == pytest.approx(grow + width * math.log(9), abs=spacing)
    assert got["rendered_offset"] == pytest.approx(grow, abs=2 * spacing)  # and the depth's sum, off by < 1 sample


def test_bad_options_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--prompt", "a red sphere"])
    assert "--prompt: 'a red sphere' has no flat faces" in capsys.readouterr().err
    for override, said in (("{render", "--override: not JSON"), ("[1]", "--override: must be a JSON object")):
        with pytest.raises(SystemExit):
            parse_args(["--override", override])
        assert said in capsys.readouterr().err
    assert parse_args(["--override", '{"render": {"resolution": 64}}']).override == {"render": {"resolution": 64}}
