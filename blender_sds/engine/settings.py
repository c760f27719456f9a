"""Each part's own typed section of a normalised job, built once per run.

job.py is the one source of defaults: these dataclasses have no defaults of their own and
only copy what validation filled in, so a part never re-reads a key with a guess, and a
part sees only the section it uses.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..job import preset_table


@dataclass(frozen=True)
class Bounds:
    center: tuple[float, float, float]
    size: float


@dataclass(frozen=True)
class GuidanceSettings:
    """What a judge (noise predictor + rule) needs: `guidance` plus the prompt, seed and image size."""

    kind: str
    rule: str
    model: str | None
    config: str | None
    scale: float | list  # a number, or a [start_step, start, end, end_step] ramp (rules/base.schedule_value)
    t_range: tuple[float, float]
    t_schedule: str
    weighting: str
    grad_clip: float | list | None
    view_dependent: bool
    dtype: str
    low_vram: bool
    cuda_graphs: bool
    views: list
    pose_matched: bool
    perp_neg: dict | None  # Perp-Neg's weight triples by pair of directions (rule perp-neg only)
    front_bias: float | None  # the camera-blind pocket teacher's share of front views
    estimator: dict | None  # the trained estimator's lr, rank, camera_dropout, camera_scale (VSD only)
    shape_steps: int  # optim.shape_steps: the shape phase, which a rule may judge apart (VSD)
    prompt: str
    negative_prompt: str
    seed: int
    resolution: int  # render.resolution: the closed-form teachers' data are drawn at it
    bounds: Bounds


@dataclass(frozen=True)
class CameraSettings:
    mode: str
    rig: list
    elevation: tuple[float, float]
    azimuth: tuple[float, float]
    distance: tuple[float, float]
    fovy: tuple[float, float]
    jitter_position: float
    jitter_rotation: float
    jitter_target: float
    rig_fraction: float
    resolution: int
    bounds: Bounds


@dataclass(frozen=True)
class LossWeights:
    """optim's regulariser weights, by the names the renderer reports them under."""

    orientation: float
    sparsity: float
    opaque: float


@dataclass(frozen=True)
class Settings:
    guidance: GuidanceSettings
    cameras: CameraSettings
    bounds: Bounds
    seed: int
    steps: int
    field_preset: str  # the field size the job's preset names for its guidance kind
    lr: float
    losses: LossWeights
    albedo_steps: int
    shape_steps: int  # the shape phase of a normal-CFG ramp
    shape_colour: str  # the colour in the shape phase: "frozen" or "restart" (at shape_steps)
    keep_shape: float  # with init.mesh: engine/train/start_mesh.py
    keep_shape_schedule: str
    render_batch: int
    render_samples: int
    mesh: dict
    output: dict
    init: dict

    @classmethod
    def from_job(cls, job: dict) -> "Settings":
        bounds = Bounds(tuple(job["bounds"]["center"]), float(job["bounds"]["size"]))
        g, c, optim = job["guidance"], job["cameras"], job["optim"]
        resolution = int(job["render"]["resolution"])
        guidance = GuidanceSettings(
            kind=g["kind"], rule=g["rule"], model=g["model"], config=g["config"], scale=g["scale"],
            t_range=tuple(g["t_range"]), t_schedule=g["t_schedule"], weighting=g["weighting"],
            grad_clip=g["grad_clip"], view_dependent=bool(g["view_dependent"]), dtype=g["dtype"],
            low_vram=bool(g["low_vram"]), cuda_graphs=bool(g["cuda_graphs"]), views=g["views"],
            pose_matched=bool(g["pose_matched"]), perp_neg=g["perp_neg"], front_bias=g["front_bias"],
            estimator=g["estimator"], shape_steps=int(optim["shape_steps"]), prompt=job["prompt"],
            negative_prompt=job["negative_prompt"], seed=int(job["seed"]), resolution=resolution, bounds=bounds)
        cameras = CameraSettings(
            mode=c["mode"], rig=c["rig"], elevation=tuple(c["elevation"]), azimuth=tuple(c["azimuth"]),
            distance=tuple(c["distance"]), fovy=tuple(c["fovy"]), jitter_position=c["jitter"]["position"],
            jitter_rotation=c["jitter"]["rotation"], jitter_target=c["jitter"]["target"],
            rig_fraction=c["rig_fraction"], resolution=resolution, bounds=bounds)
        return cls(guidance=guidance, cameras=cameras, bounds=bounds, seed=int(job["seed"]),
                   steps=int(job["steps"]), field_preset=preset_table(g["kind"])[job["preset"]]["field"],
                   lr=float(optim["lr"]),
                   losses=LossWeights(orientation=optim["orientation"], sparsity=optim["sparsity"],
                                      opaque=optim["opaque"]),
                   albedo_steps=int(optim["albedo_steps"]), shape_steps=int(optim["shape_steps"]),
                   shape_colour=optim["shape_colour"], keep_shape=float(optim["keep_shape"]),
                   keep_shape_schedule=optim["keep_shape_schedule"], render_batch=int(job["render"]["batch"]),
                   render_samples=int(job["render"]["samples"]), mesh=dict(job["mesh"]),
                   output=dict(job["output"]), init=dict(job["init"]))
