"""`bench hashgrid`: the hash-grid encode alone, plain PyTorch against the fused Triton kernel.

The encode (and its backward into the table) is the field's cost in every step; on the
CPU it was ~50% of a pocket step and 21% of a high-preset one. This times forward and
forward + backward of each path at the point counts a step passes, and checks on fresh
random data that the two agree (values and table gradient) before any figure is trusted:
on a GPU the fused kernel is only worth its speed if it computes the same function.

    python -m blender_sds.engine bench hashgrid [--preset standard high] [--points N]
        [--device auto|cpu|cuda] [--repeat N] [--json]

Off CUDA only the PyTorch path is timed; with TRITON_INTERPRET=1 the Triton kernel's
agreement is still checked on the CPU (its interpreter is far too slow to time).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from . import profiling
from ..scene import hashgrid_triton
from ..scene.field import FieldConfig, HashGrid

PRESETS = ("draft", "standard", "high")
CHECK_POINTS = 4096  # agreement is checked on this many fresh points per preset (enough for every level)


def tolerance(reference: torch.Tensor) -> float:
    """What float32 allows between two summation orders of the same terms.

    An output is a sum of 8 weights in [0,1] times table values; a table gradient row a sum of
    many such products. Reordered float32 sums differ by at most ~n * 2^-24 * sum|terms|: the
    bound below uses 2^-20 of the largest magnitude (room for n up to ~16 per rounding step),
    far under what a single wrong corner would move an output (a whole weight * value).
    """
    return float(reference.abs().max()) * 2.0 ** -20 * 64 + 1e-12


def agreement(cfg: FieldConfig, device: torch.device, seed: int = 0) -> dict:
    """Max differences of the Triton path against the PyTorch one on fresh random inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    grid = HashGrid(cfg).to(device)
    with torch.no_grad():
        grid.table.copy_(torch.rand(grid.table.shape, generator=gen) * 2 - 1)
    x = (torch.rand(CHECK_POINTS, 3, generator=gen) * 1.2 - 0.1).to(device)  # some outside: clamped
    x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.9999999, 0.5, 0.0]], device=device)
    grad_out = (torch.rand(CHECK_POINTS, grid.out_dim, generator=gen) * 2 - 1).to(device)
    results = {}
    for backend in ("torch", "triton"):
        grid.backend = backend
        grid.table.grad = None
        out = grid(x)
        out.backward(grad_out)
        results[backend] = (out.detach(), grid.table.grad.detach().clone())
    (ref_out, ref_grad), (out, grad) = results["torch"], results["triton"]
    value_diff = float((out - ref_out).abs().max())
    grad_diff = float((grad - ref_grad).abs().max())
    ok = (value_diff <= tolerance(ref_out) and grad_diff <= tolerance(ref_grad)
          and bool(torch.isfinite(out).all()) and bool(torch.isfinite(grad).all()))
    return {"max_value_diff": value_diff, "max_grad_diff": grad_diff, "value_tolerance": tolerance(ref_out),
            "grad_tolerance": tolerance(ref_grad), "agree": ok}


def timing(cfg: FieldConfig, backend: str, points: int, device: torch.device, repeat: int) -> dict:
    """Median ms of the encode's forward, and of forward + backward, over `points` random points."""
    grid = HashGrid(cfg).to(device)
    grid.backend = backend
    x = torch.rand(points, 3, device=device)
    grad_out = torch.randn(points, grid.out_dim, device=device)

    def forward():
        with torch.no_grad():
            grid(x)

    def train():
        grid.table.grad = None
        grid(x).backward(grad_out)

    warmup = 1 if device.type == "cpu" else 3
    return {"ms_forward": profiling.median(profiling.time_calls(forward, device, repeat, warmup)),
            "ms_forward_backward": profiling.median(profiling.time_calls(train, device, repeat, warmup))}


def measure(preset: str, args, device: torch.device) -> dict:
    cfg = FieldConfig.for_preset(preset)
    triton_here = hashgrid_triton.available(device)
    figures = {"preset": preset, "levels": cfg.levels, "log2_table": cfg.log2_table, "points": args.points,
               "triton_available": triton_here}
    figures["torch"] = timing(cfg, "torch", args.points, device, args.repeat)
    if triton_here:
        figures["check"] = agreement(cfg, device)
        if device.type == "cuda":  # the interpreter on the CPU is for correctness only
            figures["triton"] = timing(cfg, "triton", args.points, device, args.repeat)
            figures["speedup_forward_backward"] = (figures["torch"]["ms_forward_backward"]
                                                   / figures["triton"]["ms_forward_backward"])
    return figures


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m blender_sds.engine bench hashgrid",
                                     description="Time the hash-grid encode, PyTorch against Triton.")
    parser.add_argument("--preset", nargs="+", default=["standard", "high"], choices=PRESETS,
                        help="field sizes to measure (default standard high)")
    parser.add_argument("--points", type=int, default=None,
                        help="points per call (default 262144 on CUDA, 32768 elsewhere)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default 20 on CUDA, 3 elsewhere)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("points", "repeat"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return args


def main(argv=None) -> int:
    argv, args, device = profiling.bench_start(parse, argv)
    if device is None:
        return 2
    on_cuda = device.type == "cuda"
    args.points = args.points or (262144 if on_cuda else 32768)
    args.repeat = args.repeat or (20 if on_cuda else 3)
    info = profiling.machine(device)
    presets = {name: measure(name, args, device) for name in dict.fromkeys(args.preset)}
    checks = [p["check"]["agree"] for p in presets.values() if "check" in p]
    result = {"device": str(device), **info, "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
              "command": "python -m blender_sds.engine bench hashgrid " + " ".join(argv),
              "triton_agrees": all(checks) if checks else None, "presets": presets}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"bench hashgrid on {result['device']} ({result['device_name']}), commit {result['commit']}")
    for name, p in presets.items():
        line = (f"  [{name}] {p['points']} points, {p['levels']} levels: torch fwd {p['torch']['ms_forward']:.2f} ms, "
                f"fwd+bwd {p['torch']['ms_forward_backward']:.2f} ms")
        if "triton" in p:
            line += (f"; triton fwd {p['triton']['ms_forward']:.2f} ms, fwd+bwd "
                     f"{p['triton']['ms_forward_backward']:.2f} ms ({p['speedup_forward_backward']:.2f}x)")
        if "check" in p:
            c = p["check"]
            line += f"; agree {c['agree']} (values {c['max_value_diff']:.2e}, grads {c['max_grad_diff']:.2e})"
        print(line)
    return 0
