"""Command line: `python -m blender_sds.engine run JOB.json --out DIR`, `batch MANIFEST --out DIR`,
`worker`, `serve`, `bench NAME`.

Bad input (the job, its files, the model source) exits with code 2 and one line on
stderr that names the key or file; `--debug` shows the traceback too. A cancelled run
(Ctrl-C) exits 130 with its last checkpoint kept.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

# Libraries' own chatter (e.g. transformers' torchvision notice) would break the promise
# of one line on stderr for bad input; warnings that matter reach the user as errors.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130


class ProgressBar:
    """tqdm on a terminal; the events themselves, as JSON lines, when piped."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None

    def __call__(self, event: dict) -> None:
        if self.mode == "json":
            print(json.dumps(event), flush=True)
        elif self.mode == "bar":
            self._bar(event)

    def _bar(self, event: dict) -> None:
        from tqdm import tqdm
        kind = event.get("type")
        if kind == "start":
            self.bar = tqdm(total=event["steps"], initial=event["start_step"], unit="step", dynamic_ncols=True)
        elif kind == "progress" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4g}")
        elif kind == "stage" and event["name"] != "optimising":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            print(f"{event['name']}...", file=sys.stderr, flush=True)
        elif kind == "done":
            print(f"done: {event['vertices']} vertices, {event['faces']} faces in {event['seconds']} s "
                  f"-> {event['out']}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_run(args) -> int:
    from ..job import JobError, load_job, with_steps
    try:
        job = load_job(args.job)
        if args.steps is not None:
            job = with_steps(job, args.steps)
    except JobError as exc:
        return bad_input(str(exc))
    from .guidance.predictors.model_source import ModelSourceError
    from .scene.isosurface import MeshError
    from .train.run import JobCancelled, RunFailed, run_job
    mode = args.progress or ("bar" if sys.stderr.isatty() else "json")
    progress = ProgressBar(mode)
    try:
        run_job(job, args.out, on_event=progress, device=args.device)
    except KeyboardInterrupt:
        print("cancelled; the last checkpoint is kept", file=sys.stderr)
        return EXIT_CANCELLED
    except JobCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except (ModelSourceError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            traceback.print_exc()
        return bad_input(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except (RunFailed, MeshError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.close()
    return 0


def cmd_batch(args) -> int:
    from .batch import cli
    return cli.main(args)


def cmd_worker(args) -> int:
    from .service.worker import main
    return main() or 0


def cmd_serve(args) -> int:
    from .service import serve
    return serve.main(args)


BENCHMARKS = ("quality", "janus", "saturation", "blockout", "edits", "smoothing", "speed", "mesh", "hashgrid", "cfg")  # modules of engine/bench that print figures


def cmd_bench(args, rest: list[str]) -> int:
    if args.name is None:  # "bench --help", or no name: the list; "bench NAME --help" is NAME's own
        asked = bool({"-h", "--help"} & set(rest))
        print(f"usage: python -m blender_sds.engine bench NAME [options]   ('bench NAME --help': NAME's options)\n"
              f"benchmarks: {', '.join(BENCHMARKS)}", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else EXIT_BAD_INPUT
    if args.name not in BENCHMARKS:
        return bad_input(f"bench: unknown benchmark {args.name!r}; benchmarks: {', '.join(BENCHMARKS)}")
    module = importlib.import_module(f"blender_sds.engine.bench.{args.name}")
    return module.main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blender_sds.engine",
                                     description="blender-sds engine: job file in, coloured mesh out.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one job file into a result folder")
    run.add_argument("job", help="the job file (JSON, see docs/JOB.md)")
    run.add_argument("--out", required=True, help="result folder (created)")
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    run.add_argument("--steps", type=int, default=None, help="override the job's step count")
    run.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                     help="bar on a terminal, JSON lines when piped (default)")
    run.add_argument("--debug", action="store_true", help="show tracebacks")
    from .batch.cli import add_arguments as batch_arguments
    batch_arguments(sub.add_parser("batch", help="run many jobs on a Ray cluster (docs/SCALING.md)"))
    sub.add_parser("worker", help="speak the add-on protocol over stdin/stdout")
    from .service.serve import add_arguments as serve_arguments
    serve_arguments(sub.add_parser("serve", help="speak the add-on protocol over TCP (a remote worker)",
                                   allow_abbrev=False))  # "--token SECRET" must not pass for --token-file
    bench = sub.add_parser("bench", add_help=False,  # --help after NAME reaches the benchmark's own parser
                           help=f"print figures: bench {'|'.join(BENCHMARKS)} [--json]")
    bench.add_argument("name", nargs="?")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return cmd_bench(args, rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "batch":
            return cmd_batch(args)
        return cmd_worker(args)
    except Exception:
        if args.debug:
            raise
        exc = sys.exc_info()[1]
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
