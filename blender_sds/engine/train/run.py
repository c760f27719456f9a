"""One job, start to finish: judge renders, step the field, and turn it into a mesh.

This is the only loop: the CLI, the Blender worker and the benchmarks all call
`run_job`. It never synchronises with the GPU inside a step except every
`output.progress_every` steps, when it reports.
"""
from __future__ import annotations

import errno
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import get_total_norm

from . import artifacts, faults, memory, start_mesh
from ..scene.cameras import CameraSampler, fixed_views
from ..device import pick_device
from ..guidance import build_guidance
from ..scene.field import Field, FieldConfig
from ..scene.occupancy import OccupancyGrid
from ..scene.renderer import Background, render
from ..settings import Settings
from .parts import BackgroundPart, FieldPart

from ...results import (CHECKPOINT_FILE, JOB_FILE, LOG_FILE, MESH_FILE, PREVIEW_FILE, PREVIEW_SIZES, STATUS_FILE,
                        temp_files, temp_path)
PREVIEW_DISTANCE = 1.5  # in bounds sizes: the whole box in frame at 45 degrees, the object large
LIT_SHADING = (("albedo", 0.25), ("textureless", 0.375), ("lambertian", 0.375))  # threestudio's mix


class JobCancelled(Exception):
    """The caller asked the run to stop; the last checkpoint is kept, no mesh is written."""


def preview_resolution(settings: Settings) -> int:
    """Twice the judged renders' size (finer only upsamples what was taught): a pocket job (32 px
    renders) previews at 64, a quarter of a 128 px preview's rays, which had been a tenth of a
    pocket run's time (py-spy); Stable Diffusion's 64-128 px jobs keep 128."""
    low, high = PREVIEW_SIZES
    return min(max(2 * settings.cameras.resolution, low), high)


class RunFailed(RuntimeError):
    """The run could not go on (out of memory, a loss that stays NaN, a full disk); the
    message says what to do. The result folder is marked failed and keeps its last checkpoint."""


OOM_ADVICE = ("set guidance.low_vram to true (the add-on's Low VRAM preference), use preset draft, "
              "or lower render.resolution / render.batch")


class Run:
    """Everything one job optimises, and how it reports."""

    def __init__(self, job: dict, out_dir: Path, device: torch.device, on_event=None):
        self.job = job
        self.settings = settings = Settings.from_job(job)
        self.out = out_dir
        self.device = device
        self.on_event = on_event
        self.seed = settings.seed
        torch.manual_seed(self.seed)
        self.rng = random.Random(self.seed)
        self.generator = torch.Generator(device=device).manual_seed(self.seed)
        init = settings.init  # a file that is no checkpoint is refused before the model loads
        checkpoint = artifacts.load_checkpoint(init["checkpoint"]) if init["checkpoint"] else None
        bounds = settings.bounds
        self.field = Field(list(bounds.center), bounds.size, FieldConfig.for_preset(settings.field_preset)).to(device)
        self.background = Background().to(device)
        # A bad start mesh is refused, and the fit done, before the model loads.
        self.keep_shape = self.start_from_mesh(init) if init["mesh"] else None
        # steps 0 (fit init.mesh and stop) judges nothing: no model is loaded for it.
        self.guidance = None
        if settings.steps > 0:
            self.emit({"type": "stage", "name": "loading guidance"})
            self.guidance = build_guidance(settings.guidance, device)
        self.occupancy = OccupancyGrid(list(bounds.center), bounds.size, device=device)
        # Every trained part brings its groups, losses and state; the judge may bring its own.
        self.parts = [FieldPart(self.field, settings.lr, settings.losses), BackgroundPart(self.background),
                      *(self.guidance.trained_parts() if self.guidance else ())]
        # Fused: one kernel a step for all tensors, on every device the engine runs on (torch's
        # default is per-tensor steps on the CPU: VSD's estimator brings ~150 tensors, which cost
        # a CPU step ~9 ms more; its foreach form still took 3x the fused one's time).
        self.optimizer = torch.optim.Adam([g for part in self.parts for g in part.parameter_groups()],
                                          betas=(0.9, 0.99), eps=1e-15, fused=True)
        rig = self.guidance.rig if self.guidance else None  # a kind that judges only its own cameras brings them, unjittered
        self.cameras = CameraSampler(settings.cameras, device, self.generator, rig=rig, jitter=rig is None)
        self.step = 0
        self.nonfinite = torch.zeros((), dtype=torch.int32, device=device)
        self.samples = settings.render_samples
        self.step_length = math.sqrt(3) / self.samples  # one render step, in units of bounds.size
        self.occupancy.update(self.field, 0, self.step_length, self.generator, force=True)
        if checkpoint is not None:
            self.restore(checkpoint, resume=init["resume"], path=init["checkpoint"])

    def start_from_mesh(self, init: dict) -> "start_mesh.KeepShape | None":
        """Fit the field to init.mesh (not when resuming: the checkpoint holds the fitted field and
        more) and return what optim.keep_shape needs, or None when its weight is 0."""
        settings = self.settings
        bounds = settings.bounds
        self.emit({"type": "stage", "name": "reading init.mesh"})
        solid = start_mesh.load_solid(init["mesh"], list(bounds.center), bounds.size)
        generator = torch.Generator().manual_seed(self.seed)  # on the CPU: the mesh's grids are sampled there
        if not init["resume"]:
            self.emit({"type": "stage", "name": "fitting the field to init.mesh"})
            report = start_mesh.fit_field_to_mesh(self.field, solid, generator)
            self.emit({"type": "fit", **report})
        if settings.keep_shape <= 0:
            return None
        return start_mesh.KeepShape(solid, settings.keep_shape, settings.keep_shape_schedule, generator)

    # -- reporting ---------------------------------------------------------------------------
    def emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        """Each part's state under its name ("field", "background", a judge's own), and the loop's."""
        parts = {part.name: part.state_dict() for part in self.parts}
        return {**parts, "field_config": self.field.cfg.to_dict(), "occupancy": self.occupancy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "job": json.loads(json.dumps(self.job))}

    def restore(self, state: dict, resume: bool, path="the checkpoint") -> None:
        """Load a checkpoint into the parts (and, to resume, the optimiser and step), once
        checkpoint_checks has found nothing wrong in it: a refused file loads nothing."""
        from .checkpoint_checks import check_checkpoint
        names = [part.name for part in self.parts]
        check_checkpoint(state, path, expected=self.state(), parts=names, resume=resume, steps=self.settings.steps,
                         required=[n for n in names if n in ("field", "background") or resume],
                         groups=[[p.shape for p in group["params"]] for group in self.optimizer.param_groups])
        for part in self.parts:
            if part.name in state:  # a judge's own part starts afresh when refining another rule's run
                part.load_state_dict(state[part.name])
        self.occupancy.load_state_dict(state["occupancy"])
        if resume:
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = state["step"]

    def save_checkpoint(self) -> Path:
        faults.at_write("checkpoint")
        path = self.out / CHECKPOINT_FILE
        artifacts.save_checkpoint(path, self.state())
        self.emit({"type": "checkpoint", "step": self.step, "path": str(path)})
        return path

    # -- one step ----------------------------------------------------------------------------
    def shading_for(self, step: int) -> str:
        """Albedo first, then threestudio's mix, restricted to the shadings the judge knows."""
        allowed = [(name, p) for name, p in LIT_SHADING if name in self.guidance.shadings]
        if step < self.settings.albedo_steps or [name for name, _ in allowed] == ["albedo"]:
            return "albedo"
        r = self.rng.random() * sum(p for _, p in allowed)
        for name, p in allowed:
            if r < p:
                return name
            r -= p
        return allowed[-1][0]

    def light_for(self, views) -> torch.Tensor:
        center = self.field.center
        offset = views.c2w[:, :3, 3] - center
        dist = offset.norm(dim=-1, keepdim=True)
        noise = torch.randn(offset.shape, generator=self.generator, device=self.device) * 0.5 * dist
        scale = 0.8 + 0.7 * torch.rand(dist.shape, generator=self.generator, device=self.device)
        return center + torch.nn.functional.normalize(offset + noise, dim=-1) * dist * scale

    def shape_phase_colour(self, step: int) -> None:
        """optim.shape_colour: "frozen" keeps the colour still until shape_steps; "restart" lets
        it learn with the shape (a coloured object is easier to judge) and, at exactly
        shape_steps (so a resumed run does it once), sends it back to grey with fresh Adam
        moments, so the shape phase's high-CFG colours do not carry into the result."""
        settings = self.settings
        if settings.shape_colour == "frozen":
            self.field.colour_learns = step >= settings.shape_steps
        elif step == settings.shape_steps > 0:
            for param in self.field.restart_colour():
                self.optimizer.state.pop(param, None)

    def train_step(self, total: int) -> torch.Tensor:
        views = self.cameras.sample(self.settings.render_batch)
        if self.guidance.needs_solid_background or self.rng.random() < 0.5:
            solid = torch.rand(views.size, 3, generator=self.generator, device=self.device)
            views, background = views.with_background(solid), solid
        else:
            background = self.background
        shading = self.shading_for(self.step)
        self.shape_phase_colour(self.step)
        light = self.light_for(views) if shading != "albedo" else None
        out = render(self.field, views, self.samples, occupancy=self.occupancy, shading=shading, light=light,
                     background=background, generator=self.generator,
                     want_orientation=self.settings.losses.orientation > 0 and shading != "albedo",
                     split=self.guidance.splits(self.step))
        judged = self.guidance(out.image, views, self.step, total, split=out.split)
        loss = faults.at_step(self.step, judged.loss)
        for part in self.parts:
            for weighted in part.losses(out).values():
                loss = loss + weighted
        if self.keep_shape is not None:
            kept = self.keep_shape.loss(self.field, self.step, total, views, out.opacity)
            loss = loss if kept is None else loss + kept
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A NaN/inf step is skipped (its gradients zeroed) without a host sync; the count is
        # read when progress is reported. The largest magnitude of all (one foreach call) is inf
        # or NaN exactly where a gradient holds one.
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.isfinite(loss) & get_total_norm(grads, float("inf"), foreach=True).isfinite()
        for g in grads:
            torch.where(finite, g, torch.zeros((), device=g.device, dtype=g.dtype), out=g)
        self.nonfinite += (~finite).int()
        self.optimizer.step()
        self.step += 1
        self.occupancy.update(self.field, self.step, self.step_length, self.generator)
        self.last_figures = judged.figures
        return torch.where(finite, loss.detach(), torch.zeros((), device=loss.device))

    # -- outputs -----------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self) -> np.ndarray:
        """Front and back, lit from the camera, on white: what the artist checks at a glance."""
        bounds = self.settings.bounds
        views = fixed_views(list(bounds.center), bounds.size, (0.0, 180.0), 15.0, preview_resolution(self.settings),
                            distance=PREVIEW_DISTANCE, device=self.device)
        light = views.c2w[:, :3, 3]
        white = torch.ones(views.size, 3, device=self.device)
        out = render(self.field, views, self.samples, occupancy=self.occupancy, shading="lambertian",
                     light=light, background=white, stratified=False)
        img = out.image.permute(0, 2, 3, 1).cpu().numpy()
        return np.concatenate(list(img), axis=1)

    def save_preview(self) -> Path:
        path = self.out / PREVIEW_FILE
        artifacts.save_png(path, self.preview())
        self.emit({"type": "preview", "step": self.step, "path": str(path)})
        return path

    @torch.no_grad()
    def extract_mesh(self) -> dict:
        from ..scene.isosurface import extract_mesh
        bounds, mesh = self.settings.bounds, self.settings.mesh
        return extract_mesh(self.field.density, self.field.albedo, list(bounds.center), bounds.size,
                            resolution=mesh["resolution"], threshold=mesh["threshold"],
                            min_component=mesh["min_component"], device=self.device,
                            smooth=mesh["smooth"], target_faces=mesh["target_faces"])


# How each device says it ran out: CUDA and MPS ("MPS backend out of memory"), and the CPU
# allocator ("DefaultCPUAllocator: can't allocate memory: you tried to allocate ...").
OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, OSError)) and any(words in text for words in OOM_WORDS)


def out_of_memory_message(device, step: int) -> str:
    where = "GPU memory" if torch.device(device).type in ("cuda", "mps") else "memory (RAM)"
    return f"out of {where} at step {step}: {OOM_ADVICE}"


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = temp_path(out / "write-test")  # a temp file's name: a kill here leaves nothing the next run keeps
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out: cannot write to {out}: {exc.strerror or exc}") from None


def run_job(job: dict, out_dir, *, on_event=None, should_stop=None, device=None) -> Path:
    """Run a normalised job into `out_dir`; see docs/JOB.md and docs/ARCHITECTURE.md "Result files" for the files.

    `status.json` says what the folder holds: running, complete, cancelled or failed
    (with the message); `results.read_status` also tells a run killed on the way
    (`interrupted`). `mesh.npz` appears only once status says complete (see artifacts).
    """
    started = time.monotonic()
    out = Path(out_dir).resolve()
    check_writable(out)
    for leftover in temp_files(out):  # half-written files of a killed run: none outlives this one
        leftover.unlink(missing_ok=True)
    (out / MESH_FILE).unlink(missing_ok=True)  # an old result must not pass for this one
    device = pick_device(device)
    resume = bool(job["init"]["resume"])
    status = {"state": "running", "pid": os.getpid(), "steps": int(job["steps"])}
    log = run = None
    finished = False  # the result is whole and status says complete: nothing after may unsay it

    def emit(event: dict) -> None:
        log.write(json.dumps(event) + "\n")
        log.flush()
        if on_event is not None:
            on_event(event)

    def mark(state: str, message: str) -> None:
        try:
            artifacts.save_json(out / STATUS_FILE, {**status, "state": state, "message": message})
        except OSError:
            pass  # the disk may be the problem; mesh.npz is absent either way

    try:
        artifacts.save_json(out / STATUS_FILE, status)
        log = open(out / LOG_FILE, "a" if resume else "w", encoding="utf-8")
        artifacts.save_json(out / JOB_FILE, job)
        memory.check_render_fits(job, device)  # the first step is the largest: refuse it here, by key
        run = Run(job, out, device, on_event=emit)
        total = run.settings.steps
        output = run.settings.output
        emit({"type": "start", "steps": total, "start_step": run.step, "device": str(device)})
        emit({"type": "stage", "name": "optimising"})
        loss_sum = torch.zeros((), device=device)
        loss_count = 0
        skipped_before = 0
        step_seconds = None
        last = time.monotonic()
        while run.step < total:
            if should_stop is not None and should_stop():
                run.save_checkpoint()
                raise JobCancelled(f"cancelled at step {run.step} of {total}")
            loss_sum += run.train_step(total)
            loss_count += 1
            step = run.step
            if step % output["progress_every"] == 0 or step == total:
                skipped = int(run.nonfinite)  # the one host sync, on progress steps only
                if skipped - skipped_before == loss_count and loss_count >= 5:
                    raise RunFailed(f"the loss was NaN or infinite for {loss_count} steps in a row "
                                    f"(up to step {step}); lower guidance.scale or optim.lr, or set "
                                    f"guidance.grad_clip")
                good = max(loss_count - (skipped - skipped_before), 1)
                skipped_before = skipped
                now = time.monotonic()
                per_step = (now - last) / loss_count
                step_seconds = per_step if step_seconds is None else 0.7 * step_seconds + 0.3 * per_step
                last = now
                figures = {k: float(v) for k, v in run.last_figures.items()}
                figures["occupied"] = run.occupancy.fraction
                figures["skipped_steps"] = skipped
                emit({"type": "progress", "step": step, "steps": total, "loss": float(loss_sum) / good,
                      "elapsed": round(now - started, 3), "seconds_left": round(step_seconds * (total - step), 1),
                      "figures": figures})
                loss_sum.zero_()
                loss_count = 0
            if output["preview_every"] and step % output["preview_every"] == 0 and step < total:
                run.save_preview()
            if output["checkpoint_every"] and step % output["checkpoint_every"] == 0 and step < total:
                run.save_checkpoint()
        emit({"type": "stage", "name": "writing result"})
        run.save_preview()
        run.save_checkpoint()
        emit({"type": "stage", "name": "extracting mesh"})
        mesh = run.extract_mesh()
        complete = {**status, "state": "complete", "mesh": MESH_FILE}
        artifacts.save_mesh(out / MESH_FILE, mesh,  # status complete first, then mesh.npz takes its name
                            before_replace=lambda: artifacts.save_json(out / STATUS_FILE, complete))
        finished = True
        emit({"type": "done", "out": str(out), "vertices": int(len(mesh["vertices"])),
              "faces": int(len(mesh["faces"])), "threshold": float(mesh["threshold"]),
              "seconds": round(time.monotonic() - started, 2)})
        return out
    except (JobCancelled, KeyboardInterrupt) as exc:
        if not finished:
            mark("cancelled", str(exc) or "interrupted")
        raise
    except BaseException as exc:
        if finished:
            raise  # e.g. the done event could not be sent: the result is still whole and complete
        if is_out_of_memory(exc):
            step = run.step if run is not None else 0
            exc = RunFailed(out_of_memory_message(device, step))
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", None)):
            checkpoint = out / CHECKPOINT_FILE  # advise resuming only from one that is there
            then = (f"continue with init.resume from {checkpoint}" if checkpoint.is_file()
                    else "run the job again (no checkpoint was written)")
            exc = RunFailed(f"the disk holding {out} is full (writing {exc.filename or out}); free space and {then}")
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark("failed", message)
        if isinstance(exc, RunFailed):
            raise exc from None
        raise
    finally:
        if log is not None:
            log.close()
