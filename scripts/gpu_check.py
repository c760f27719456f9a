"""Every GPU figure of the project in one prepared command: run by scripts/gpu_check.sh.

A GPU is lent rarely and for minutes, so the checks cannot be tried twice. Each stage
runs in its own process under its own time limit, inside one overall budget: a stage that
fails or overruns is recorded with its message and the next one still runs, and
gpu_check.json is rewritten (atomically) after every stage, so even a run killed from
outside leaves what it had measured. Every stage's output goes to gpu_check.log.

    python scripts/gpu_check.py [--dry-run] [--out DIR] [--budget SECONDS] [--work DIR]

--dry-run does the same stages on the CPU with the tiny model and a few iterations, so CI
proves the script has not rotted (tests/scripts/test_gpu_check.py); its JSON has the same keys.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = [sys.executable, "-m", "blender_sds.engine"]
METHODS = "sds,nfsd,csd,vsd,esd"  # bench speed's method rows
SUMMARY_KEYS = ("device", "bench_hashgrid", "bench_speed", "bench_speed_methods", "bench_speed_eager", "bench_speed_low_vram",
                "bench_speed_compile", "asset_seconds", "asset", "bench_mesh")
OPTIONAL = "bench_speed_compile"  # gets what the budget leaves; the exit status does not wait on it


@dataclass
class Stage:
    name: str  # also its key in the JSON, where it has one
    command: list[str]
    limit: float  # seconds this stage may take at most (0: planned, not run)
    env: dict = field(default_factory=dict)


def versions() -> dict:
    """What the figures were measured on: run as a stage of its own, so CUDA is initialised
    in a child process and never holds memory in the process that launches the others."""
    import importlib
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "cuda_available": torch.cuda.is_available()}
    for name in ("diffusers", "transformers", "accelerate", "triton", "numpy", "skimage"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as exc:  # a missing package is a figure too
            out[name] = f"missing ({type(exc).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    else:
        out.update(name=f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores")
    return out


def asset_job(model: str, dry_run: bool) -> dict:
    """The standard preset on the Stable Diffusion path, as a user's job (random weights judge
    nothing, but every step costs what a real one does, meshing included)."""
    job = {"version": 1, "prompt": "a ceramic teapot", "seed": 0, "preset": "standard",
           "bounds": {"center": [0.0, 0.0, 0.0], "size": 2.0},
           "guidance": {"kind": "stable-diffusion", "model": model}}
    if dry_run:
        job.update(steps=3, render={"resolution": 32, "samples": 16}, mesh={"resolution": 32},
                   output={"preview_every": 2, "checkpoint_every": 0})
    return job


def plan(args, work: Path) -> list[Stage]:
    models = str(work / "models")
    shape = "tiny" if args.dry_run else "sd21-shape"
    device = "cpu" if args.dry_run else "cuda"
    bench = [*ENGINE, "bench", "speed", "--device", device, "--model", shape, "--cache", models, "--json"]
    # Each rule's step beside SDS's (issue 13) is a stage of its own: a failure there keeps the rest.
    speed, methods = bench + ["--methods", "none"], bench + ["--methods", METHODS]
    if args.dry_run:
        speed += ["--iterations", "1", "--warmup", "0"]
        return [
            Stage("versions", [sys.executable, __file__, "--versions"], 120),
            Stage("model", speed + ["--prepare"], 300),
            # The Triton kernel's agreement is still checked here, through Triton's interpreter.
            Stage("bench_hashgrid", [*ENGINE, "bench", "hashgrid", "--device", device, "--preset", "draft",
                                     "--points", "2048", "--repeat", "1", "--json"], 300,
                  env={"TRITON_INTERPRET": "1"}),
            Stage("bench_speed", speed + ["--preset", "draft"], 300),
            Stage("bench_speed_methods", methods + ["--preset", "draft", "--iterations", "1", "--warmup", "0"], 300),
            # CUDA graphs exist on CUDA only: on the CPU this would repeat bench_speed exactly.
            Stage("bench_speed_eager", [], 0),
            Stage("bench_speed_low_vram", speed + ["--preset", "draft", "--low-vram"], 300),
            Stage("bench_mesh", [*ENGINE, "bench", "mesh", "--device", device, "--resolution", "32",
                                 "--fit-steps", "5", "--json"], 300),
            Stage("asset", [], 300),
            Stage("bench_speed_compile", [], 0),  # compiling takes minutes on a CPU: planned, not run
        ]
    return [
        Stage("versions", [sys.executable, __file__, "--versions"], 60),
        Stage("model", speed + ["--prepare"], 240),
        Stage("bench_hashgrid", [*ENGINE, "bench", "hashgrid", "--device", device, "--preset", "standard", "high",
                                 "--json"], 90),
        Stage("bench_speed", speed + ["--preset", *args.speed_presets, "--iterations", "10", "--warmup", "3"], 180),
        Stage("bench_speed_methods", methods + ["--preset", "draft", "--iterations", "5", "--warmup", "1"], 150),
        # The same judge without CUDA graphs, in the same run: what the graphs save, as a ratio.
        Stage("bench_speed_eager", speed + ["--preset", "standard", "--cuda-graphs", "off", "--iterations", "10",
                                            "--warmup", "3"], 120),
        Stage("bench_speed_low_vram", speed + ["--preset", "standard", "--low-vram", "--iterations", "5",
                                               "--warmup", "1"], 120),
        Stage("bench_mesh", [*ENGINE, "bench", "mesh", "--device", device, "--resolution", "128", "256",
                             "--repeat", "3", "--json"], 90),
        # The longest: whatever the budget leaves; cut short, it still reports its rate and a projection.
        Stage("asset", [], 330),
        Stage("bench_speed_compile", speed + ["--preset", "standard", "--compile", "--iterations", "10",
                                              "--warmup", "3"], 240),
    ]


class Check:
    """Runs the stages and keeps gpu_check.json and gpu_check.log up to date."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        self.log = open(self.out / "gpu_check.log", "w", encoding="utf-8")
        self.result = {"dry_run": args.dry_run, "commit": os.environ.get("BLENDER_SDS_COMMIT"),
                       "command": "bash scripts/gpu_check.sh " + " ".join(args.argv), "budget_seconds": args.budget,
                       "stages": {}, **{key: None for key in SUMMARY_KEYS}}
        self.model = None

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=1))
        os.replace(tmp, path)

    def note(self, text: str) -> None:
        line = f"[gpu_check {time.monotonic() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def launch(self, stage: Stage, limit: float) -> tuple[str, list[tuple[float, str]], float]:
        """Run one stage's process: (status, its stdout lines with arrival times, seconds)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **stage.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log.write(f"\n===== {stage.name}: {' '.join(stage.command)}\n")
        self.log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                text=True, start_new_session=True)
        lines: list[tuple[float, str]] = []

        def read():
            for line in proc.stdout:
                lines.append((time.monotonic() - start, line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout after {limit:.0f} s"
        reader.join(timeout=10)
        seconds = time.monotonic() - start
        self.log.write("".join(text for _, text in lines[-50:]) if status != "ok" else "")
        self.log.flush()
        return status, lines, seconds

    def run_stage(self, stage: Stage) -> None:
        left = self.deadline - time.monotonic()
        record = {"status": "skipped", "seconds": 0.0}
        self.result["stages"][stage.name] = record
        if stage.name == "asset":
            stage = self.asset_stage(stage)
        if not stage.command:
            why = "no model" if stage.name == "asset" else "not run in a dry run" if self.args.dry_run else "no command"
            record["status"] = f"skipped ({why})"
            self.note(f"{stage.name}: {record['status']}")
            return self.save()
        if left < 20:
            record["status"] = f"skipped ({left:.0f} s of the budget left)"
            self.note(f"{stage.name}: {record['status']}")
            return self.save()
        limit = min(stage.limit, left)
        self.note(f"{stage.name}: starting (limit {limit:.0f} s)")
        status, lines, seconds = self.launch(stage, limit)
        record.update(status=status, seconds=round(seconds, 1))
        try:
            self.collect(stage, lines, status)
        except (ValueError, KeyError, IndexError) as exc:
            record["status"] = f"{status}; output unreadable ({type(exc).__name__}: {exc})"
        self.note(f"{stage.name}: {record['status']} in {seconds:.1f} s")
        self.save()

    def asset_stage(self, stage: Stage) -> Stage:
        if not self.model:
            return Stage(stage.name, [], 0)
        job_path = self.work / "asset-job.json"
        job_path.write_text(json.dumps(asset_job(self.model, self.args.dry_run), indent=1))
        out = self.work / "asset"
        shutil.rmtree(out, ignore_errors=True)
        command = [*ENGINE, "run", str(job_path), "--out", str(out), "--progress", "json"]
        if not self.args.dry_run:
            command += ["--device", "cuda"]
        return Stage(stage.name, command, stage.limit)

    def collect(self, stage: Stage, lines: list[tuple[float, str]], status: str) -> None:
        if stage.name == "asset":
            return self.collect_asset(lines, status)
        if status != "ok":
            return
        text = "".join(line for _, line in lines).strip()
        value = json.loads(text.splitlines()[-1])
        if stage.name == "versions":
            self.result["device"] = value
        elif stage.name == "model":
            self.model = value["model"]
            self.result["model"] = value
        else:
            self.result[stage.name] = value
            if stage.name == "bench_hashgrid" and value.get("triton_agrees") is False:
                # A fused kernel that disagrees must not time the steps: the plain path does.
                self.note("bench_hashgrid: the Triton encode DISAGREES with PyTorch; timing with --hash-grid torch")
                for later in self.stages:
                    if later.command and later.name.startswith("bench_speed"):
                        later.command += ["--hash-grid", "torch"]

    def collect_asset(self, lines: list[tuple[float, str]], status: str) -> None:
        """The asset's wall time and where it went, from the run's own events as they arrived."""
        events = []
        for arrived, line in lines:
            try:
                events.append((arrived, json.loads(line)))
            except ValueError:
                continue
        stages = {e["name"]: t for t, e in events if e.get("type") == "stage"}
        progress = [(t, e) for t, e in events if e.get("type") == "progress"]
        finished, done = next(((t, e) for t, e in events if e.get("type") == "done"), (None, None))
        wall = self.result["stages"]["asset"]["seconds"]
        asset = {"status": status, "wall_seconds": wall, "steps": None, "steps_done": None,
                 "seconds_loading": stages.get("optimising"), "seconds_optimising": None,
                 "seconds_mesh": None, "ms_per_step": None, "faces": None, "vertices": None}
        if progress:
            last_t, last = progress[-1]
            asset.update(steps=last["steps"], steps_done=last["step"])
            if "optimising" in stages and last["step"]:
                asset["ms_per_step"] = (last_t - stages["optimising"]) * 1000.0 / last["step"]
        if "writing result" in stages and "optimising" in stages:
            asset["seconds_optimising"] = stages["writing result"] - stages["optimising"]
        if done is not None:
            asset["seconds_mesh"] = finished - stages.get("extracting mesh", finished)
            asset.update(faces=done["faces"], vertices=done["vertices"], run_seconds=done["seconds"])
            self.result["asset_seconds"] = wall
            preview = self.work / "asset" / "preview.png"
            if preview.is_file():
                shutil.copy(preview, self.out / "asset_preview.png")
        elif asset["ms_per_step"] and asset["steps"]:
            # Cut short by its limit: what the whole would take at the rate it ran (meshing not included).
            asset["projected_seconds"] = (asset["seconds_loading"] or 0) + asset["ms_per_step"] * asset["steps"] / 1000
        self.result["asset"] = asset

    def nvidia_smi(self) -> None:
        if not shutil.which("nvidia-smi"):
            self.result["nvidia_smi"] = None
            return
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                                "power.limit,temperature.gpu,pstate", "--format=csv"],
                               capture_output=True, text=True, timeout=60).stdout
        (self.out / "nvidia-smi.txt").write_text(text + "\n" + query)
        self.result["nvidia_smi"] = query.strip()

    def run(self) -> int:
        self.nvidia_smi()
        self.stages = [stage for stage in plan(self.args, self.work)
                       if not self.args.stages or stage.name in self.args.stages]
        for stage in self.stages:
            self.run_stage(stage)
        self.result["seconds_total"] = round(time.monotonic() - self.started, 1)
        self.save()
        self.log.close()
        print(summary(self.result))
        required = [s.name for s in self.stages if s.limit > 0 and s.name != OPTIONAL]
        return 0 if all(self.result["stages"][name]["status"] == "ok" for name in required) else 1


def summary(result: dict) -> str:
    """The table the device call's reply ends with (the reply carries only the end of the output)."""
    lines = [f"gpu_check {'(dry run) ' if result['dry_run'] else ''}commit {result['commit']}, "
             f"{result['seconds_total']} s"]
    device = result.get("device") or {}
    lines.append(f"device: {device.get('name')} torch {device.get('torch')} cuda {device.get('cuda')} "
                 f"diffusers {device.get('diffusers')} triton {device.get('triton')}")
    for name, record in result["stages"].items():
        lines.append(f"  {name:22s} {record['status']} ({record['seconds']} s)")
    for key in ("bench_speed", "bench_speed_eager", "bench_speed_low_vram", "bench_speed_compile"):
        speed = result.get(key)
        for preset, f in ((speed or {}).get("presets") or {}).items():
            lines.append(f"{key}[{preset}]: {f['ms_per_iteration']:.1f} ms/it (stream {f['ms_per_iteration_stream']}), "
                         f"bare {f['ms_bare_guidance']:.1f} ms, ratio {f['overhead_ratio']:.3f}, "
                         f"peak {f['peak_gpu_mb']} MB, hash grid {f['hash_grid']}, graphs {f['cuda_graphs']} "
                         f"{f['cuda_graphs_check']}, "
                         f"{f['minutes_per_asset']:.2f} min/asset")
    for preset, f in (((result.get("bench_speed_methods") or {}).get("presets")) or {}).items():
        lines.append(f"methods[{preset}]: " + ", ".join(
            f"{name} {m['ms_per_iteration']:.1f} ms x{m['ratio_to_sds']:.2f} ({m['predictions_per_step']} preds, "
            f"peak {m['peak_gpu_mb']} MB)" for name, m in (f.get("methods") or {}).items()))
    hashgrid = result.get("bench_hashgrid") or {}
    for preset, p in (hashgrid.get("presets") or {}).items():
        lines.append(f"hashgrid[{preset}]: torch {p['torch']} triton {p.get('triton')} check {p.get('check')}")
    if result.get("asset"):
        lines.append(f"asset: {json.dumps(result['asset'])}")
    for res, m in ((result.get("bench_mesh") or {}).get("resolutions") or {}).items():
        lines.append(f"mesh[{res}]: {m['seconds_total']:.2f} s {json.dumps(m['breakdown_ms'])}")
    return "\n".join(lines)


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh",
                                     description="Measure every GPU figure of the project in one run.")
    parser.add_argument("--dry-run", action="store_true", help="the same stages on the CPU, tiny model, seconds each")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out",
                        help="where gpu_check.json, gpu_check.log and nvidia-smi.txt go (default $OUT)")
    parser.add_argument("--work", default=None, help="scratch folder for models and the asset (default a temp dir)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all stages together (default 500; 900 in a dry run)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run, in their fixed order (default all; see the names in "
                             "docs/PERFORMANCE.md; model is needed by the speed stages and the asset)")
    parser.add_argument("--speed-presets", default="all",
                        help="presets of the bench_speed stage on a GPU (default all; e.g. standard)")
    parser.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)  # the versions stage itself
    args = parser.parse_args(argv)
    args.argv = argv
    args.stages = [name for name in (args.stages or "").split(",") if name]
    names = [stage.name for stage in plan(args, Path("."))]
    unknown = sorted(set(args.stages) - set(names))
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)}; stages: {', '.join(names)}")
    args.speed_presets = args.speed_presets.split(",")
    args.budget = args.budget or (900.0 if args.dry_run else 500.0)
    if args.budget <= 0:
        parser.error(f"--budget must be > 0, got {args.budget}")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.versions:
        print(json.dumps(versions()))
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        args.work = args.work or tmp
        return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
