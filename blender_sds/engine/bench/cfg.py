"""`bench cfg`: the guidance scale at which the pocket teacher's own samples keep their colours.

The rules made for normal CFG (NFSD, CSD, VSD) start from the scale a kind's images are
sampled at (`KindSpec.sampling_scale`): 7.5 for Stable Diffusion, whose pictures look right
there. The pocket teacher is a memoriser, not a photo model, so its number is measured, not
borrowed: DDIM-sample it at each scale from pure noise at fixed cameras and read the mean
HSV saturation and value of the samples over the object's pixels against its truth's albedo.
The largest scale whose samples stay within the saturation tolerance is its normal CFG
(docs/QUALITY.md "Saturation"). Sampled images are lit, so V reads below the albedo truth.

    python -m blender_sds.engine bench cfg [--scales 1,1.5,2,3] [--prompts "a green cube;..."]
        [--steps 40] [--resolution 32] [--json]
"""
from __future__ import annotations

import argparse
import json

import torch

from ...job import validate_job
from ..guidance.teachers.pocket import PocketPredictor
from ..pocket import posed, world
from ..pocket.metrics import saturation_value
from ..scene.cameras import fixed_views
from ..settings import Settings

PROMPTS = ("a green cube", "a blue cone", "a yellow pyramid", "a red cylinder")
SCALES = (1.0, 1.5, 2.0, 3.0, 7.5)
AZIMUTHS = (0.0, 90.0, 200.0, 300.0)
ELEVATION = 20.0


def sample(teacher: PocketPredictor, views, scale: float, steps: int, seed: int) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from noise to an image in [0,1], x0 clamped to [-1,1] at each step."""
    size = views.height
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(views.size, 3, size, size, generator=generator)
    a_all = teacher.alphas_cumprod
    ts = torch.linspace(len(a_all) * 0.98, 0, steps).long()
    x0 = x
    for i, t in enumerate(ts):
        out = teacher.predict(x, torch.full((views.size,), int(t)), views, ("prompt", "uncond"))
        eps = out["uncond"] + scale * (out["prompt"] - out["uncond"])
        a = a_all[t]
        x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        if i + 1 < len(ts):
            a_next = a_all[ts[i + 1]]
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return (x0 + 1) / 2


def measure(prompt: str, scales, steps: int, resolution: int, seed: int = 0) -> list[dict]:
    job = validate_job({"version": 1, "prompt": prompt, "seed": seed, "guidance": {"kind": "pocket"},
                        "render": {"resolution": resolution}})
    settings = Settings.from_job(job).guidance
    teacher = PocketPredictor(settings, "cpu")
    bounds = settings.bounds
    views = fixed_views(bounds.center, bounds.size, AZIMUTHS, ELEVATION, resolution)
    views = views.with_background(torch.ones(views.size, 3))
    orbit = posed.judged_orbit(views, torch.tensor(bounds.center), bounds.size)
    colour, shape = world.parse_prompt(prompt)
    truth = world.render(shape, world.COLOURS[colour], orbit, resolution, "albedo")
    cover = truth[:, 3] > 0.5
    truth_s, truth_v = (float(f.mean()) for f in saturation_value(truth[:, :3].permute(0, 2, 3, 1)[cover]))
    rows = []
    start = teacher.pose_generator.get_state()
    for scale in scales:
        teacher.pose_generator.set_state(start)  # every scale judged by the same lights and data
        image = sample(teacher, views, scale, steps, seed + 1)
        s, v = (float(f.mean()) for f in saturation_value(image.permute(0, 2, 3, 1)[cover]))
        rows.append({"prompt": prompt, "scale": scale, "saturation_difference": s - truth_s,
                     "brightness_difference": v - truth_v, "truth_saturation": truth_s})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blender_sds.engine bench cfg", description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES), help="comma-separated CFG scales")
    p.add_argument("--prompts", default=";".join(PROMPTS), help="';'-separated plain pocket prompts")
    p.add_argument("--steps", type=int, default=40, help="DDIM steps (default 40)")
    p.add_argument("--resolution", type=int, default=32, help="image size (default 32: the standard preset's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        p.error(f"--scales: comma-separated numbers, got {args.scales!r}")
    if not scales or min(scales) <= 0:
        p.error(f"--scales: positive numbers, got {args.scales!r}")
    if args.steps < 2:
        p.error(f"--steps: at least 2, got {args.steps}")
    prompts = [s.strip() for s in args.prompts.split(";") if s.strip()]
    for prompt in prompts:
        try:
            world.parse_prompt(prompt)
        except world.PocketPromptError as error:
            p.error(f"--prompts: {error.problem}")
    rows = []
    for prompt in prompts:
        for row in measure(prompt, scales, args.steps, args.resolution):
            rows.append(row)
            if not args.json:
                print(f"{row['prompt']:<20} scale {row['scale']:5g}  dSat {row['saturation_difference']:+.3f}  "
                      f"dBri {row['brightness_difference']:+.3f}", flush=True)
    worst = {s: max(abs(r["saturation_difference"]) for r in rows if r["scale"] == s) for s in scales}
    if args.json:
        print(json.dumps({"rows": rows, "worst_saturation_difference": {f"{s:g}": w for s, w in worst.items()}}))
    else:
        print("worst |dSat| by scale: " + "  ".join(f"{s:g}: {w:.3f}" for s, w in worst.items()))
    return 0
