"""Calling a noise predictor the way the SDS rule does, for tests that check predictions directly."""
from blender_sds.engine.settings import Settings


def guidance_settings(job: dict):
    """The guidance section a predictor is built from, of a normalised job."""
    return Settings.from_job(job).guidance


def cfg_pair(predictor, z_t, t, views):
    """(eps_prompt, eps_uncond): the two predictions classifier-free guidance combines."""
    out = predictor.predict(z_t, t, views, ("prompt", "uncond"))
    return out["prompt"], out["uncond"]


def assert_within_rounding(actual, exact, float32_result, slack: float = 4.0):
    """`actual` (float32, from the engine) equals `exact` (the same computation in float64) to
    within what float32 rounding does to this very computation on this CPU.

    The bound is measured, not guessed: `float32_result` is the reference computed in float32,
    and its distance from `exact` is the rounding these kernels produce here (CFG multiplies it
    by its scale, and CPUs with other vector units round differently, so a fixed tolerance held
    on one machine and failed on another). The engine batches and orders its arithmetic
    differently, so its rounding differs but is of the same size: `slack` times that distance,
    plus a few float32 ulps of the result's size, leaves room for both. A real error (another t,
    another prompt, a missing weight) moves the result by orders more.
    """
    import torch

    exact = exact.double()
    size = float(exact.abs().max())
    rounding = float((float32_result.double() - exact).abs().max())
    assert size > 0 and rounding < 1e-2 * size, (rounding, size)  # float32 is close at all
    error = float((actual.double() - exact).abs().max())
    floor = 8 * torch.finfo(torch.float32).eps * size
    assert error <= slack * rounding + floor, (error, rounding, floor)


def camera_batch(azimuth, elevation=None, size: int = 32):
    """A ViewBatch of `size`-pixel cameras that only says which way each looks (what the judges read)."""
    import torch
    from blender_sds.engine.scene.views import ViewBatch

    b = len(azimuth)
    ones = torch.ones(b)
    elevation = torch.zeros(b) if elevation is None else torch.tensor(elevation, dtype=torch.float32)
    return ViewBatch(c2w=torch.eye(4).expand(b, 4, 4), fx=ones * 40, fy=ones * 40, cx=ones * size / 2,
                     cy=ones * size / 2, width=size, height=size, azimuth=torch.tensor(azimuth), elevation=elevation)
