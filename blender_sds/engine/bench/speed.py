"""`bench speed`: what one SDS iteration costs, against what the diffusion model alone costs.

An iteration can be no cheaper than its judge: the UNet's classifier-free pair plus the
VAE encoder's forward and backward at the size the preset feeds it. This benchmark times
that floor ("bare guidance") and the engine's real training step (`Run.train_step`, the
loop users run) on the same model, and prints their ratio, the step's phases, throughput,
the projected time per asset and peak memory. Then each score-distillation method's step
(`--methods`, the registry's guidance keys: NFSD and CSD ask three predictions, VSD trains
its estimator too) on the same model and preset, with its ratio to plain SDS's step timed
in the same command: what a method costs beside SDS.

The default model is Stable Diffusion 2.1-base's published architecture with random
weights, built from its configs (models.py): the same layers and shapes, so the
same cost, and nothing to download. It is saved once (fp16 safetensors, about 2.6 GB) to
a cache folder and loaded by the engine's own loader. `--model tiny` is a toy-sized model
of the same family for smoke runs; `--model PATH` times a real model folder or file.

    python -m blender_sds.engine bench speed [--preset draft|standard|high|all ...]
        [--model sd21-shape|tiny|PATH] [--device auto|cpu|cuda] [--iterations N] [--warmup N]
        [--low-vram] [--dtype auto|float16|float32] [--compile] [--hash-grid auto|torch|triton]
        [--cuda-graphs on|off] [--methods sds,nfsd,csd,vsd,esd|none] [--cache DIR] [--prepare] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ... import kinds
from . import models, profiling
from ..scene.field import encode_backend
from ..guidance.predictors import cuda_graphs

# -- models from their published configs (models.py) ---------------------------------------------

SHAPES = {"sd21-shape": models.SD21_BASE, "tiny": models.TINY}
FORMAT = 1  # bump when the configs in models.py change, so a cached folder is rebuilt
PRESET_NAMES = ("draft", "standard", "high")
GUIDANCE_PHASES = ("vae_encode", "unet", "guidance_rest", "backward_guidance")  # what bare guidance does
BASELINE = "sds"  # the method every other method's step is a multiple of
METHODS = (BASELINE, "nfsd", "csd", "vsd", "esd")


def build_model_folder(folder: Path, shape: str, seed: int = 0) -> Path:
    """Write a diffusers Stable Diffusion folder of `shape` with random weights (fp16 for the full size).

    Written beside `folder` and renamed into place: a half-written cache is never used.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        dtype = torch.float16 if shape == "sd21-shape" else torch.float32
        models.build_sd_folder(tmp, SHAPES[shape], seed, dtype)
        (tmp / "BENCH_MODEL.json").write_text(json.dumps({"shape": shape, "format": FORMAT, "seed": seed,
                                                          "weights": "random"}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cache_root() -> Path:
    base = os.environ.get("BLENDER_SDS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blender-sds")
    return Path(base) / "bench-models"


MODEL_LABELS = {"sd21-shape": "SD 2.1-base architecture, random weights", "tiny": "tiny (random weights)"}
CACHE_NAMES = {"sd21-shape": "sd21-base-shape", "tiny": "tiny-shape"}


def resolve_model(model: str, cache: Path | None, workdir: Path) -> tuple[str, str]:
    """(what guidance.model gets, a label): a built shape or the user's own model as given.

    The full-size shape is built once into the cache (2.5 GB); the tiny one into `workdir`
    unless a cache is named, so a CI run leaves nothing behind.
    """
    if model not in SHAPES:
        return model, model
    root = cache or (cache_root() if model == "sd21-shape" else workdir)
    folder = root / f"{CACHE_NAMES[model]}-v{FORMAT}"
    marker = folder / "BENCH_MODEL.json"
    if not (marker.is_file() and json.loads(marker.read_text()).get("format") == FORMAT):
        print(f"building the {MODEL_LABELS[model]} model in {folder} ...", file=sys.stderr, flush=True)
        build_model_folder(folder, model)
    return str(folder), MODEL_LABELS[model]


# -- one preset ---------------------------------------------------------------------------------

def bench_job(model: str, preset: str, *, low_vram: bool, dtype: str, graphs: bool = True,
              guidance: dict | None = None) -> dict:
    """The timed job; `guidance`: a method's keys over it (none: the default method's)."""
    from ...job import merge_overrides, validate_job

    return validate_job(merge_overrides({
        "version": 1, "prompt": "a ceramic teapot", "seed": 0, "preset": preset,
        "bounds": {"center": [0.0, 0.0, 0.0], "size": 2.0},
        "guidance": {"kind": "stable-diffusion", "model": model, "low_vram": low_vram, "dtype": dtype,
                     "cuda_graphs": graphs},
        "cameras": {"mode": "orbit"},
        # Past the albedo warm-up, as 80% of a run is: lit and textureless steps evaluate normals.
        "optim": {"albedo_steps": 0},
    }, {"guidance": dict(guidance or {})}))


def bare_guidance_call(run, views):
    """The floor: encode a render-sized image (upsampled to the model's size), the UNet's CFG pair,
    and the encoder's backward to the image. Nothing of the field, renderer or optimiser."""
    res = int(run.job["render"]["resolution"])
    # Laid out as the renderer's images are (a channels-last view of (B,H,W,3)): convolutions
    # take a different path per layout, and the floor must be the judge's real workload.
    pixels = torch.rand(views.size, res, res, 3, device=run.device, requires_grad=True)
    steps = int(run.job["steps"])
    guidance = run.guidance  # the judge itself, never a probe put in its place later

    def call():
        pixels.grad = None
        guidance(pixels.permute(0, 3, 1, 2), views, steps // 2, steps).loss.backward()

    return call


def graphs_check(guidance, views, total: int) -> dict | None:
    """Largest differences between the judge's graphed replays and its eager modules, on one fresh
    input: the replays must compute what eager PyTorch does before their speed counts."""
    if not cuda_graphs.active(guidance):
        return None
    unet, encoder = guidance.unet, guidance.vae.encoder
    size = guidance.image_size
    x = (torch.rand(views.size, 3, *size, device=guidance.device) * 2 - 1).to(guidance.dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    outputs, grad = [], None
    for forward in (encoder.forward.eager, encoder.forward):
        x.grad = None
        out = forward(x)
        grad = torch.randn_like(out) if grad is None else grad  # one gradient for both
        out.backward(grad)
        outputs.append((out.detach().float(), x.grad.float()))
    z = torch.randn(2 * views.size, guidance.sample_channels, *outputs[0][0].shape[-2:], device=guidance.device)
    t = torch.full((2 * views.size,), total // 2, device=guidance.device, dtype=torch.long)
    hidden = torch.cat([guidance.embeddings.conditional(views), guidance.embeddings.uncond.expand(views.size, -1, -1)])
    with torch.no_grad():
        eager_eps = unet.module(z.to(guidance.dtype), t, encoder_hidden_states=hidden).sample.float()
        graphed_eps = unet(z.to(guidance.dtype), t, encoder_hidden_states=hidden).sample.float()
    (eager_z, eager_g), (graphed_z, graphed_g) = outputs
    return {"encoder_graphed": not encoder.forward.failed,
            "unet_max_diff": float((graphed_eps - eager_eps).abs().max()),
            "unet_max_abs": float(eager_eps.abs().max()),
            "encoder_max_diff": float((graphed_z - eager_z).abs().max()),
            "encoder_grad_max_diff": float((graphed_g - eager_g).abs().max()),
            "encoder_grad_max_abs": float(eager_g.abs().max())}


def attention_kind(unet) -> str:
    try:
        return ",".join(sorted({type(p).__name__ for p in unet.attn_processors.values()})) or "none"
    except AttributeError:
        return "unknown"


def measure_preset(model: str, preset: str, device: torch.device, args) -> dict:
    from ..train.run import Run

    # torch.compile brings its own graphs: compiled parts are never captured a second time.
    job = bench_job(model, preset, low_vram=args.low_vram, dtype=args.dtype,
                    graphs=args.cuda_graphs == "on" and not args.compile)
    profiling.reset_peak_host_rss()
    profiling.reset_peak_gpu(device)
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as out:
        run = Run(job, Path(out), device)
        run.field.encoding.backend = args.hash_grid
        guidance = run.guidance.predictor  # the model the figures are about
        if args.compile:
            guidance.unet = torch.compile(guidance.unet)
            guidance.vae.encoder = torch.compile(guidance.vae.encoder)
        total = int(job["steps"])
        views = run.cameras.sample(int(job["render"]["batch"]))

        bare_call = bare_guidance_call(run, views)
        for _ in range(args.warmup):
            bare_call()
            run.train_step(total)
        loading_peak = profiling.peak_gpu_mb(device)  # loading (text encoder included) and warm-up
        # Interleaved, so a shared machine's changing load falls on both alike and their ratio holds.
        profiling.reset_peak_gpu(device)
        clock, bare_marks = profiling.Clock(device), []
        probe = profiling.PhaseProbe(run).attach()
        try:
            clock.synchronize()
            for _ in range(args.iterations):
                start = clock.mark()
                bare_call()
                bare_marks.append((start, clock.mark()))
                probe.step(total)
            steps = probe.finish()
        finally:
            probe.detach()
        bare = [clock.ms(a, b) for a, b in bare_marks]
        graphs_agree = graphs_check(guidance, views, total)
        # Back to back, as the loop runs: on a GPU the host may queue the next step early.
        stream_ms = None
        if device.type == "cuda":
            stream_ms = profiling.median(profiling.time_calls(lambda: [run.train_step(total) for _ in range(
                args.iterations)], device, 1, 0)) / args.iterations
        steps_peak = profiling.peak_gpu_mb(device)
        occupancy = profiling.time_calls(
            lambda: run.occupancy.update(run.field, 0, run.step_length, run.generator, force=True),
            device, max(1, min(3, args.iterations)), 1)
        preview = profiling.time_calls(run.save_preview, device, 1, 0)
        audit = profiling.audit_step(run, total)
        rss = profiling.peak_host_rss_mb()
        later_peak = profiling.peak_gpu_mb(device)  # steps, occupancy refresh, preview
        gpu = {k: None if later_peak[k] is None else max(loading_peak[k], later_peak[k]) for k in later_peak}
        figures = {
            "preset": preset,
            "steps": total,
            "render_resolution": int(job["render"]["resolution"]),
            "batch": int(job["render"]["batch"]),
            "samples_per_ray": int(job["render"]["samples"]),
            "guidance_image_size": list(guidance.image_size),
            "dtype": str(guidance.dtype).replace("torch.", ""),
            "low_vram": bool(args.low_vram),
            "compiled": bool(args.compile),
            "attention": attention_kind(guidance.unet),
            "channels_last": bool(device.type == "cuda"),
            "hash_grid": encode_backend(run.field.encoding, device),
            "cuda_graphs": cuda_graphs.active(guidance),
            "cuda_graphs_check": graphs_agree,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "ms_bare_guidance": profiling.median(bare),
            "ms_per_iteration": profiling.median(s["total"] for s in steps),
            "ms_per_iteration_stream": stream_ms,
            "overhead_ratio_paired": profiling.median(s["total"] / b for s, b in zip(steps, bare) if b > 0),
            "breakdown_ms": {name: profiling.median(s[name] for s in steps) for name in profiling.PHASES},
            "lit_iterations": sum(s["lit"] for s in steps),
            "ms_occupancy_update": profiling.median(occupancy),
            "ms_occupancy_per_step": profiling.median(occupancy) / run.occupancy.update_every,
            "ms_preview": preview[0],
            "ms_preview_per_step": preview[0] / max(int(job["output"]["preview_every"]), 1),
            "host_reads_per_iteration": audit,
            "peak_gpu_mb": gpu["allocated"],
            "peak_gpu_reserved_mb": gpu["reserved"],
            "peak_gpu_steps_mb": steps_peak["allocated"],
            "peak_host_rss_mb": rss,
        }
        del probe, run, guidance
    ms = figures["ms_per_iteration"]
    figures["overhead_ratio"] = ms / figures["ms_bare_guidance"] if figures["ms_bare_guidance"] else None
    # The same ratio from inside each step (its guidance phases against the whole): no second
    # measurement, so a shared machine's noise between the two cannot move it.
    figures["overhead_ratio_phases"] = profiling.median(
        s["total"] / sum(s[k] for k in GUIDANCE_PHASES) for s in steps if sum(s[k] for k in GUIDANCE_PHASES) > 0)
    figures["iterations_per_second"] = 1000.0 / ms if ms else None
    figures["minutes_per_asset"] = total * ms / 60000.0
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


# -- each method's step beside SDS's ---------------------------------------------------------------

class MethodRun:
    """One method's `Run` on the preset's job (its rule and any trained estimator included) and
    what it holds: peak GPU memory allocated and peak host RSS from its loading through its
    warm-up, above what the process held before it was built."""

    def __init__(self, model: str, preset: str, method: str, device: torch.device, args, out: Path):
        from ..train.run import Run

        self.device = device
        self.job = bench_job(model, preset, low_vram=args.low_vram, dtype=args.dtype,
                             graphs=args.cuda_graphs == "on" and not args.compile,
                             guidance=kinds.method(method).guidance)
        gpu_before = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
        rss_before = profiling.host_rss_mb()
        windowed = profiling.reset_peak_host_rss()
        profiling.reset_peak_gpu(device)
        self.run = Run(self.job, out, device)
        self.run.field.encoding.backend = args.hash_grid
        self.total = int(self.job["steps"])
        for _ in range(args.warmup + 1):  # and one more: the step whose figures say its predictions
            self.run.train_step(self.total)
        self.predictions = float(self.run.last_figures["predictions"])
        gpu_peak, rss_peak = profiling.peak_gpu_mb(device)["allocated"], profiling.peak_host_rss_mb()
        self.peak_gpu_mb = None if gpu_peak is None else gpu_peak - gpu_before
        self.peak_host_rss_mb = rss_peak - rss_before if windowed and None not in (rss_peak, rss_before) else None

    def step_ms(self) -> float:
        return profiling.time_calls(lambda: self.run.train_step(self.total), self.device, 1, 0)[0]

    def row(self, ms: list[float], ratios: list[float]) -> dict:
        return {"rule": self.job["guidance"]["rule"], "ms_per_iteration": profiling.median(ms),
                "ratio_to_sds": profiling.median(ratios), "predictions_per_step": self.predictions,
                "peak_gpu_mb": self.peak_gpu_mb, "peak_host_rss_mb": self.peak_host_rss_mb}


def measure_methods(model: str, preset: str, device: torch.device, args) -> dict:
    """Each of `args.methods` (SDS first) timed step for step against one SDS run kept loaded beside
    it: `args.iterations` pairs, each method step right after an SDS step, so a shared machine's
    changing load falls on both alike. ratio_to_sds is the median of the pairs' ratios; at most two
    models are in memory at once."""
    with tempfile.TemporaryDirectory(prefix="bench-speed-methods-") as out:
        sds = MethodRun(model, preset, BASELINE, device, args, Path(out) / BASELINE)
        sds_ms: list[float] = []
        rows = {}
        for name in args.methods:
            if name == BASELINE:
                continue
            other = MethodRun(model, preset, name, device, args, Path(out) / name)
            pairs = [(sds.step_ms(), other.step_ms()) for _ in range(args.iterations)]
            sds_ms += [a for a, _ in pairs]
            rows[name] = other.row([b for _, b in pairs], [b / a for a, b in pairs if a > 0])
            del other
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if not sds_ms:  # SDS alone was asked for
            sds_ms = [sds.step_ms() for _ in range(args.iterations)]
        rows = {BASELINE: sds.row(sds_ms, [1.0]), **rows}
        del sds
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- the command ---------------------------------------------------------------------------------

def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m blender_sds.engine bench speed",
                                     description="Time the SDS iteration against the bare diffusion model.")
    parser.add_argument("--preset", nargs="+", default=["standard"], choices=PRESET_NAMES + ("all",),
                        help="presets to measure (default standard; 'all' for the three)")
    parser.add_argument("--model", default="sd21-shape",
                        help="sd21-shape (default: SD 2.1-base architecture, random weights), tiny, or a "
                             "model folder / checkpoint / hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 20, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3, 1 on CPU)")
    parser.add_argument("--low-vram", action="store_true", help="guidance.low_vram: offload the UNet")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"))
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and the VAE encoder (experimental; compile time not counted)")
    parser.add_argument("--hash-grid", default="auto", choices=("auto", "torch", "triton"),
                        help="hash-grid encode: auto (fused Triton kernel on CUDA when it is there, else "
                             "plain PyTorch), or force one")
    parser.add_argument("--cuda-graphs", default="on", choices=("on", "off"),
                        help="guidance.cuda_graphs: replay the judge from CUDA graphs (default on, as jobs; "
                             "only on CUDA without --low-vram)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated methods whose step is timed beside {BASELINE}'s (registry: "
                             f"{', '.join(kinds.method_names())}; default {','.join(METHODS)}; 'none' for none)")
    parser.add_argument("--prepare", action="store_true",
                        help="only build (or find) the model and print its folder; time nothing")
    parser.add_argument("--cache", default=None, help="where the sd21-shape model is built (default "
                                                      "$BLENDER_SDS_CACHE or ~/.cache/blender-sds)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    for name in ("iterations", "warmup"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "iterations" else 0):
            parser.error(f"--{name} must be >= {1 if name == 'iterations' else 0}, got {value}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == ["none"]:
        args.methods = []
    else:
        unknown = [m for m in methods if m not in kinds.method_names()]
        if unknown or not methods:
            parser.error(f"--methods: unknown {', '.join(map(repr, unknown)) or 'none given'}; methods: "
                         f"{', '.join(kinds.method_names())}, or 'none'")
        args.methods = list(dict.fromkeys([BASELINE, *methods]))  # the ratios' denominator, measured first
    return args


def report_text(result: dict) -> str:
    lines = [f"bench speed: {result['model']} on {result['device']} ({result['device_name']}), "
             f"commit {result['commit']}, torch {result['torch']}, load average {result['load_average']}"]
    for name, f in result["presets"].items():
        b = f["breakdown_ms"]
        gpu = ("n/a (CPU)" if f["peak_gpu_mb"] is None else
               f"{f['peak_gpu_mb']:.0f} MB (steps alone {f['peak_gpu_steps_mb']:.0f} MB)")
        lines += [
            f"\n[{name}] render {f['render_resolution']}^2 x{f['batch']}, {f['samples_per_ray']} samples/ray -> "
            f"guidance at {f['guidance_image_size'][0]}^2, {f['dtype']}, attention {f['attention']}, "
            f"hash grid {f['hash_grid']}, CUDA graphs {'on' if f['cuda_graphs'] else 'off'}"
            f"{', low-VRAM' if f['low_vram'] else ''}{', compiled' if f['compiled'] else ''}",
            f"  bare guidance (UNet CFG pair + VAE encoder fwd/bwd): {f['ms_bare_guidance']:.1f} ms",
            f"  full iteration: {f['ms_per_iteration']:.1f} ms (median of {f['iterations']}, "
            f"{f['lit_iterations']} lit" + (f"; {f['ms_per_iteration_stream']:.1f} ms back to back)"
                                             if f["ms_per_iteration_stream"] else ")"),
            f"  overhead ratio: {f['overhead_ratio']:.3f} (pairwise {f['overhead_ratio_paired']:.3f}, "
            f"within the step {f['overhead_ratio_phases']:.3f})   "
            f"{f['iterations_per_second']:.3f} it/s   "
            f"{f['minutes_per_asset']:.1f} min per asset ({f['steps']} steps)",
            "  breakdown (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()),
            f"  occupancy refresh {f['ms_occupancy_update']:.1f} ms (every 16 steps), preview "
            f"{f['ms_preview']:.1f} ms (every 250 steps); host reads per step: "
            f"{f['host_reads_per_iteration']['item']} item, {f['host_reads_per_iteration']['nonzero']} nonzero; "
            f"{f['host_reads_per_iteration']['aten_ops']} aten ops",
            f"  peak GPU memory {gpu}; peak host RSS {f['peak_host_rss_mb']:.0f} MB",
        ]
        if f.get("methods"):
            lines.append("  each method's step beside SDS's, pair by pair (peak memory: its own, above what "
                         "was held before it loaded)")
            lines.append(f"  {'method':<8} {'rule':<8} {'ms/step':>9} {'x sds':>6} {'preds':>6} {'peak GPU MB':>12} "
                         f"{'peak RSS MB':>12}")
            for method, m in f["methods"].items():
                gpu_mb = "n/a" if m["peak_gpu_mb"] is None else f"{m['peak_gpu_mb']:.0f}"
                rss_mb = "n/a" if m["peak_host_rss_mb"] is None else f"{m['peak_host_rss_mb']:.0f}"
                lines.append(f"  {method:<8} {m['rule']:<8} {m['ms_per_iteration']:9.1f} {m['ratio_to_sds']:6.2f} "
                             f"{m['predictions_per_step']:6.0f} {gpu_mb:>12} {rss_mb:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = profiling.bench_device(args.device)
    if device is None:
        return 2
    info = profiling.machine(device)  # the commit and load the measured code started from
    on_cpu = device.type == "cpu"
    args.iterations = args.iterations or (3 if on_cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
    presets = list(PRESET_NAMES) if "all" in args.preset else list(dict.fromkeys(args.preset))
    from ...job import JobError
    from ..guidance.predictors.model_source import ModelSourceError

    with tempfile.TemporaryDirectory(prefix="bench-model-") as work:
        try:
            model, label = resolve_model(args.model, Path(args.cache) if args.cache else None, Path(work))
            if args.prepare:
                print(json.dumps({"model": model, "label": label}) if args.json else model)
                return 0
            results = {name: measure_preset(model, name, device, args) for name in presets}
            for name in presets:
                results[name]["methods"] = measure_methods(model, name, device, args) if args.methods else {}
        except (ModelSourceError, JobError) as exc:
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
    result = {"device": str(device), **info, "load_average_end": profiling.machine(device)["load_average"], "model": label,
              "command": "python -m blender_sds.engine bench speed " + " ".join(argv), "presets": results}
    result.update(results[presets[0]])  # top-level copies of the first preset, for one-preset readers
    if args.json:
        print(json.dumps(result))
    else:
        print(report_text(result))
    return 0
