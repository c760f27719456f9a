"""Timing and memory for the benchmarks, without changing what is timed.

On CUDA every mark is an event recorded on the stream and read after one synchronize at
the end of a measured stretch: reading a timer inside the loop would make the host wait
for the GPU and hide the very overlap the loop relies on. On the CPU (and MPS) a mark is
the host clock, which is exact there because CPU kernels run synchronously.

`PhaseProbe` splits one `Run.train_step` into phases by hooking the boundaries the
step already has (the field's forward, the guidance call, the image's gradient, the
parameters' gradients, the optimiser's step hooks), so run.py carries no timing code
and the benchmark times the very loop users run.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class Clock:
    """Marks on one device's timeline; `ms(a, b)` is valid after `synchronize()`."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def ms(self, start, end) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


def median(values) -> float | None:
    values = list(values)
    return float(statistics.median(values)) if values else None


def time_calls(fn, device: torch.device, iterations: int, warmup: int) -> list[float]:
    """Milliseconds of each of `iterations` calls of fn() after `warmup` untimed ones.

    All marks are read after one synchronize, so queued GPU work is never waited on
    between calls; each figure is the stream time between the call's first and last mark.
    """
    clock = Clock(device)
    for _ in range(warmup):
        fn()
    clock.synchronize()
    marks = []
    for _ in range(iterations):
        start = clock.mark()
        fn()
        marks.append((start, clock.mark()))
    clock.synchronize()
    return [clock.ms(a, b) for a, b in marks]


def time_stage(fn, device, repeat: int):
    """Median ms of `repeat` calls and the last result, each call waited for (stages are seconds
    long: no warm-up needed beyond the first call, which is discarded when repeat > 1)."""
    clock = Clock(device)
    times, result = [], None
    for _ in range(repeat + (1 if repeat > 1 else 0)):
        clock.synchronize()
        start = clock.mark()
        result = fn()
        end = clock.mark()
        clock.synchronize()
        times.append(clock.ms(start, end))
    return median(times[1:] if repeat > 1 else times), result


# -- where the figures were taken -------------------------------------------------------------

def git_commit() -> str | None:
    """The short commit of the engine's checkout, for tables that say what was measured.

    A copy without git (the GPU machine gets the working tree only) names it in
    BLENDER_SDS_COMMIT, which scripts/gpu_check.sh passes along.
    """
    if os.environ.get("BLENDER_SDS_COMMIT"):
        return os.environ["BLENDER_SDS_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine(device: torch.device) -> dict:
    """Device name, commit, torch version, threads and load: a CPU figure means little without the load."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"device_name": name, "commit": git_commit(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": load}


def bench_start(parse, argv) -> tuple[list[str], object, torch.device | None]:
    """(the arguments as given, for the figures' command line; them parsed; the --device, or None
    after saying why it cannot be had): what every benchmark's main does first."""
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse(argv)
    return argv, args, bench_device(args.device)


def bench_device(preference: str) -> torch.device | None:
    """The device a benchmark's --device names, or None after saying on stderr why it cannot be had."""
    from ..device import pick_device

    try:
        return pick_device(preference)
    except ValueError as exc:
        print(f"error: --{exc}", file=sys.stderr)
        return None


# -- memory -----------------------------------------------------------------------------------

def reset_peak_host_rss() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A memory line of Linux's /proc/self/status ("VmRSS", "VmHWM") in MiB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def host_rss_mb() -> float | None:
    """The process's resident set now (Linux VmRSS), in MiB; None elsewhere."""
    return _status_mb("VmRSS")


def peak_host_rss_mb() -> float | None:
    """The process's peak resident set since start or the last reset (VmHWM), in MiB."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        return None


def reset_peak_gpu(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: torch.device) -> dict:
    """Peak allocated and reserved GPU memory since the last reset; None off CUDA."""
    if torch.device(device).type != "cuda":
        return {"allocated": None, "reserved": None}
    return {"allocated": torch.cuda.max_memory_allocated(device) / 2**20,
            "reserved": torch.cuda.max_memory_reserved(device) / 2**20}


# -- one training step, in phases --------------------------------------------------------------

PHASES = ("renderer", "field", "vae_encode", "unet", "guidance_rest", "backward_guidance",
          "backward_scene", "step_guard", "optimiser", "other")


class _TimedGuidance:
    """Stands in for the run's guidance: marks the start and end of each call, forwards the rest."""

    def __init__(self, guidance, probe: "PhaseProbe"):
        self._guidance = guidance
        self._probe = probe

    def __getattr__(self, name):
        return getattr(self._guidance, name)

    def __call__(self, images, *args, **kwargs):
        probe = self._probe
        probe._point("guidance_start")
        if images.requires_grad:  # the image's gradient arrives when the encoder's backward is done
            images.register_hook(probe._on_image_grad)
        out = self._guidance(images, *args, **kwargs)
        probe._point("guidance_end")
        return out


class PhaseProbe:
    """Times the phases of `run.train_step` on the device's own timeline.

    Phases (ms, per step): renderer (cameras, rays, compositing: the render call less the
    field), field (hash grid + heads, normals included), vae_encode / unet / guidance_rest
    (the guidance call: encoder forward, the UNet's CFG pair, the SDS arithmetic),
    backward_guidance (from the loss back to the rendered image: the encoder's backward),
    backward_scene (image -> renderer -> field parameters), step_guard (between backward and
    the optimiser: the NaN/inf guard), optimiser (Adam), other (after the optimiser: the
    occupancy refresh every 16 steps). They add up to the whole step.
    """

    def __init__(self, run):
        self.run = run
        self.clock = Clock(run.device)
        self.steps: list[dict] = []
        self._current: dict | None = None
        self._saved: list[tuple[object, str, object]] = []
        self._handles = []

    # -- attaching ------------------------------------------------------------------------
    def attach(self) -> "PhaseProbe":
        run = self.run
        self._wrap(run.field, "forward", "field", only_before="guidance_start")
        self._wrap(run.field, "normals", None, flag="lit")
        guidance = run.guidance
        self._wrap(guidance.predictor, "encode", "vae_encode")
        self._wrap(guidance.predictor, "predict", "unet")
        self._saved.append((run, "guidance", guidance))
        run.guidance = _TimedGuidance(guidance, self)
        opt = run.optimizer
        self._handles.append(opt.register_step_pre_hook(lambda *a: self._point("optimiser_start")))
        self._handles.append(opt.register_step_post_hook(lambda *a: self._point("optimiser_end")))
        for group in opt.param_groups:
            for p in group["params"]:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_param_grad))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for obj, name, original in reversed(self._saved):
            if name == "guidance":
                setattr(obj, name, original)
            else:
                delattr(obj, name)  # the instance attribute goes; the class's method shows again
        self._saved.clear()

    def _wrap(self, obj, name: str, interval: str | None, only_before: str | None = None,
              flag: str | None = None) -> None:
        original = getattr(obj, name)
        probe = self

        def timed(*args, **kwargs):
            step = probe._current
            if step is None or (only_before and only_before in step["points"]):
                return original(*args, **kwargs)
            if flag:
                step["flags"].add(flag)
            if interval is None:
                return original(*args, **kwargs)
            start = probe.clock.mark()
            out = original(*args, **kwargs)
            step["intervals"].append((interval, start, probe.clock.mark()))
            return out

        setattr(obj, name, timed)  # an instance attribute shadows the method for self.x() calls too
        self._saved.append((obj, name, original))

    # -- marks ----------------------------------------------------------------------------
    def _point(self, name: str) -> None:
        if self._current is not None and name not in self._current["points"]:
            self._current["points"][name] = self.clock.mark()

    def _on_image_grad(self, grad):
        self._point("image_grad")
        return grad

    def _on_param_grad(self, param):
        if self._current is not None:
            self._current["points"]["params_grad"] = self.clock.mark()  # the last one wins

    # -- stepping -------------------------------------------------------------------------
    def step(self, total: int):
        """One `run.train_step(total)`, marked; figures are read by `finish()`."""
        self._current = {"points": {}, "intervals": [], "flags": set()}
        self._current["points"]["start"] = self.clock.mark()
        loss = self.run.train_step(total)
        self._current["points"]["end"] = self.clock.mark()
        self.steps.append(self._current)
        self._current = None
        return loss

    def finish(self) -> list[dict]:
        """Synchronise once and turn every recorded step into {phase: ms, "total": ms, "lit": bool}."""
        self.clock.synchronize()
        return [self._phases(s) for s in self.steps]

    def _phases(self, step: dict) -> dict:
        p, ms = step["points"], self.clock.ms
        out = {name: 0.0 for name in PHASES}
        total = ms(p["start"], p["end"])
        sums = {}
        for name, a, b in step["intervals"]:
            sums[name] = sums.get(name, 0.0) + ms(a, b)
        out["field"] = sums.get("field", 0.0)
        out["renderer"] = ms(p["start"], p["guidance_start"]) - out["field"]
        out["vae_encode"] = sums.get("vae_encode", 0.0)
        out["unet"] = sums.get("unet", 0.0)
        out["guidance_rest"] = ms(p["guidance_start"], p["guidance_end"]) - out["vae_encode"] - out["unet"]
        grads_done = p.get("params_grad", p["optimiser_start"])
        image_grad = p.get("image_grad", p["guidance_end"])
        out["backward_guidance"] = ms(p["guidance_end"], image_grad)
        out["backward_scene"] = ms(image_grad, grads_done)
        out["step_guard"] = ms(grads_done, p["optimiser_start"])
        out["optimiser"] = ms(p["optimiser_start"], p["optimiser_end"])
        out["other"] = ms(p["optimiser_end"], p["end"])
        out["total"] = total
        out["lit"] = "lit" in step["flags"]
        return out


# -- host reads inside the loop ----------------------------------------------------------------

HOST_READ_OPS = {"_local_scalar_dense": "item", "nonzero": "nonzero", "masked_select": "nonzero",
                 "unique": "nonzero", "_unique2": "nonzero", "unique_consecutive": "nonzero",
                 "nonzero_numpy": "nonzero"}


MASK_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_mask(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class HostReadAudit(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: reading a value (.item(),
    float(t), bool(t), `if t:`) and data-dependent shapes (nonzero, boolean masks).

    On the CPU they cost nothing, but on CUDA each one drains the queue; counted on any
    device, so a CPU test can hold the loop to its promise. `paused` skips a stretch (the
    optimiser keeps its step count on the host by design).
    """

    def __init__(self):
        super().__init__()
        # aten_ops: ~ kernel launches on a GPU; host_tensors: tensors made from Python data
        # (torch.tensor(...) in the step), which on CUDA is a blocking host-to-device copy.
        self.counts = {"item": 0, "nonzero": 0, "host_tensors": 0, "aten_ops": 0}
        self.paused = False
        self.where: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        kind = HOST_READ_OPS.get(name)
        if name == "lift_fresh" and args and args[0].dim() > 0:
            kind = "host_tensors"  # a scalar (t[i] = 1.0) is filled on the device, not copied
        if name in MASK_INDEX_OPS and _has_mask(args):
            kind = "nonzero"  # t[mask] and t[mask] = v find the mask's True entries on the host
        if not self.paused:
            self.counts["aten_ops"] += 1
        if kind and not self.paused:
            self.counts[kind] += 1
            self.where.append(name if kind != "host_tensors" else f"{name} at {_engine_caller()}")
        return func(*args, **(kwargs or {}))


def _engine_caller() -> str:
    """file:line of the innermost engine frame on the stack: where a host tensor was made."""
    import traceback

    for frame in reversed(traceback.extract_stack()):
        if "blender_sds" in frame.filename and not frame.filename.endswith("profiling.py"):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "outside the engine"


def audit_step(run, total: int) -> dict:
    """Host reads in one `run.train_step(total)`, not counting the optimiser's own host-side step count."""
    audit = HostReadAudit()
    opt = run.optimizer
    handles = [opt.register_step_pre_hook(lambda *a: setattr(audit, "paused", True)),
               opt.register_step_post_hook(lambda *a: setattr(audit, "paused", False))]
    try:
        with audit:
            run.train_step(total)
    finally:
        for h in handles:
            h.remove()
    return dict(audit.counts, ops=sorted(set(audit.where)))
