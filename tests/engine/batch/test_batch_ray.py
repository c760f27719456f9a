"""`python -m blender_sds.engine batch` end to end on a real local Ray cluster (2 CPUs), in three runs.

1. A manifest with an unknown pocket colour on line 8 is refused by line and key, and nothing starts.
   Without that line: 3 tiny Stable Diffusion jobs, 6 pocket jobs and one pocket job whose Ray
   worker is SIGKILLed mid-run (its pid read from its status.json), with `--max-retries 0`.
   The 6 pocket results are bit-identical to `run_job` of the same job on one thread (what `run`
   does), made here while the batch runs; the killed job is recorded failed with the pid in its
   message; the exit code is 1; every worker that ran two SD jobs loaded the weights once.
2. The same command again skips every complete job and starts no cluster (the seconds and the
   ratio to the first run are printed, not asserted: speed is no test).
3. `--retry-failed` runs only the failed job; its worker is killed once more and Ray's own retry
   (the default `--max-retries 1`) completes it: exit code 0.
After each run summary.json matches the folders; at the end the contact sheet holds every preview.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blender_sds.job import merge_overrides, validate_job
from blender_sds.results import read_status, temp_files

pytest.importorskip("ray")

TEMPLATE = {"version": 1, "guidance": {"kind": "pocket"}, "steps": 12,
            "mesh": {"resolution": 32, "target_faces": 1000, "smooth": 5},
            "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 10}}
SD_PROMPTS = ("a teapot", "a chair", "a lamp")
POCKET = [{"prompt": "a red cube"}, {"prompt": "a blue sphere", "seed": 1}, {"prompt": "a green cone"},
          {"prompt": "a yellow torus", "seed": 2}, {"prompt": "a white pyramid"}, {"prompt": "a purple cylinder"}]
KILLED = {"prompt": "a red pyramid", "steps": 40}  # long enough to be killed at step 10
KILL_AT_STEP = 10
INVALID = {"prompt": "a magenta cube"}
FIRST_POCKET = len(SD_PROMPTS)  # job index of POCKET[0]
KILLED_INDEX = FIRST_POCKET + len(POCKET)


def sd_line(prompt, sd_folder):
    return {"prompt": prompt, "preset": "draft", "steps": 1, "render": {"resolution": 16, "samples": 16},
            "guidance": {"kind": "stable-diffusion", "model": str(sd_folder)}}


def batch(args, out_dir: Path, name: str, timeout=600):
    """Start the CLI; its JSON lines go to out_dir/../<name>.jsonl."""
    log = out_dir.parent / f"{name}.jsonl"
    err = out_dir.parent / f"{name}.err"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "blender_sds.engine", "batch", *map(str, args),
                                    "--out", str(out_dir), "--progress", "json"], stdout=stdout, stderr=stderr, env=env)
    return process, log, err


def kill_once_running(folder: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL the process running `folder`'s job (status.json's pid) once it is past KILL_AT_STEP."""
    while not stop.is_set():
        status = read_status(folder)
        if status["state"] == "running" and status.get("pid") not in killed:
            steps = [0]
            try:
                for line in (folder / "log.jsonl").read_text().splitlines():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue  # the line being written
                    if event.get("type") == "progress":
                        steps.append(event["step"])
            except OSError:
                pass
            if max(steps) >= KILL_AT_STEP:
                os.kill(status["pid"], signal.SIGKILL)
                killed.append(status["pid"])
                return
        time.sleep(0.1)


def counts(summary) -> tuple:
    return summary["complete"], summary["failed"], summary["skipped"], summary["ran"]


def check_summary_matches_folders(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["version"] == 1
    assert summary["complete"] + summary["failed"] == len(summary["jobs"])
    assert summary["complete"] == sum(j["status"] in ("complete", "skipped") for j in summary["jobs"])
    for job in summary["jobs"]:
        folder = out / job["folder"]
        assert job["folder"] == f"{job['index']:03d}-{'-'.join(job['prompt'].split())}-seed{job['seed']}"
        listed = sorted(p.name for p in folder.iterdir() if p.is_file() and p not in temp_files(folder))
        assert job["files"] == listed, job
        written = json.loads((folder / "job.json").read_text())
        assert (written["prompt"], written["seed"]) == (job["prompt"], job["seed"])
        state = read_status(folder)["state"]
        assert (state == "complete") == (job["status"] in ("complete", "skipped")), (job, state)
        if job["status"] == "failed":
            assert job["message"] and state == "failed"
    return summary


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line JSON, nothing else


def load_mesh(folder: Path) -> dict:
    with np.load(folder / "mesh.npz") as data:
        return {k: data[k] for k in data.files}


def test_batch_on_a_local_ray_cluster(tmp_path, tiny_sd_folder):
    template = tmp_path / "template.json"
    template.write_text(json.dumps(TEMPLATE))
    lines = [sd_line(p, tiny_sd_folder) for p in SD_PROMPTS] + POCKET + [KILLED]
    manifest = tmp_path / "manifest.jsonl"
    out = tmp_path / "out"
    common = [manifest, "--template", template, "--local", "--num-cpus", "2"]

    # -- a bad line: refused by line and key before anything starts ---------------------------------
    with_invalid = lines[:7] + [INVALID] + lines[7:]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in with_invalid))
    process, log, err = batch(common, out, "refused")
    assert process.wait(timeout=120) == 2
    assert err.read_text().startswith(f"error: {manifest} line 8: prompt: 'a magenta cube' is not in the pocket world")
    assert log.read_text() == "" and not out.exists()

    # -- run 1: the valid jobs, one of them killed mid-run -------------------------------------------
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    killed_folder = out / f"{KILLED_INDEX:03d}-a-red-pyramid-seed0"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_once_running, args=(killed_folder, stop, killed), daemon=True)
    started = time.monotonic()
    process, log, err = batch([*common, "--max-retries", "0"], out, "first")
    watcher.start()
    # Meanwhile, what `run` makes of the same pocket jobs, on one thread as each batch job had.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from blender_sds.engine.train.run import run_job
        for k, line in enumerate(POCKET):
            job = validate_job(merge_overrides(TEMPLATE, line))
            run_job(job, tmp_path / "run" / str(k), device="cpu")
    finally:
        torch.set_num_threads(threads)
    code = process.wait(timeout=600)
    first_seconds = time.monotonic() - started
    stop.set()
    watcher.join()
    print(f"first run: {first_seconds:.1f} s, exit {code}")
    assert code == 1, err.read_text()
    assert len(killed) == 1

    summary = check_summary_matches_folders(out)
    jobs = summary["jobs"]
    assert [j["status"] for j in jobs] == ["complete"] * KILLED_INDEX + ["failed"]
    assert counts(summary) == (KILLED_INDEX, 1, 0, len(lines))
    assert summary["finished"] and summary["cluster"]["CPU"] == 2 and summary["cluster"]["gpus_per_job"] == 0
    message = jobs[KILLED_INDEX]["message"]
    assert f"its Ray worker process (pid {killed[0]}) died while running it" in message and "tried 1 time" in message
    assert read_status(killed_folder)["message"] == message

    for k, line in enumerate(POCKET):  # identical to run: every array, bit for bit, and the same job
        folder = out / jobs[FIRST_POCKET + k]["folder"]
        mine, theirs = load_mesh(folder), load_mesh(tmp_path / "run" / str(k))
        assert mine.keys() == theirs.keys() and all(np.array_equal(mine[a], theirs[a]) for a in mine), folder
        reference = tmp_path / "run" / str(k) / "job.json"
        assert json.loads((folder / "job.json").read_text()) == json.loads(reference.read_text())
        assert jobs[FIRST_POCKET + k]["worker"]["threads"] == 1

    # The judge's weights: once per worker process, however many SD jobs it ran.
    sd_by_worker = {}
    for entry in jobs[:FIRST_POCKET]:
        sd_by_worker.setdefault(entry["worker"]["pid"], []).append(entry["worker"])
    assert max(len(v) for v in sd_by_worker.values()) >= 2, sd_by_worker  # 3 jobs, 2 workers
    for pid, runs in sd_by_worker.items():
        last = max(runs, key=lambda w: w["judge_hits"])
        assert (last["judge_loads"], last["judge_hits"]) == (1, len(runs) - 1), (pid, runs)

    events = read_lines(log)
    assert events[0] == {"type": "batch", "jobs": len(lines), "run": len(lines), "skipped": 0, "failed_before": 0,
                         "out": str(out.resolve())}
    assert sorted(e["index"] for e in events if e["type"] == "job_done") == list(range(len(lines)))
    assert {e["job"] for e in events if e["type"] == "progress"} >= set(range(FIRST_POCKET, KILLED_INDEX + 1))
    assert events[-1]["type"] == "summary" and events[-1]["failed"] == 1

    # -- run 2: the same command skips every complete job ------------------------------------------
    started = time.monotonic()
    process, log, err = batch([*common, "--max-retries", "0"], out, "again")
    code = process.wait(timeout=300)
    again_seconds = time.monotonic() - started
    print(f"rerun: {again_seconds:.2f} s = {again_seconds / first_seconds:.1%} of the first run's "
          f"{first_seconds:.1f} s")
    assert code == 1
    summary = check_summary_matches_folders(out)
    assert counts(summary) == (KILLED_INDEX, 1, KILLED_INDEX, 0)
    assert summary["cluster"] is None  # no Ray started
    assert "failed before; --retry-failed runs it again" in summary["jobs"][KILLED_INDEX]["message"]
    assert read_lines(log)[0]["run"] == 0

    # -- run 3: --retry-failed; killed once more, Ray's own retry finishes it ----------------------
    stop, killed_again = threading.Event(), []
    watcher = threading.Thread(target=kill_once_running, args=(killed_folder, stop, killed_again), daemon=True)
    process, log, err = batch([*common, "--retry-failed"], out, "retry")
    watcher.start()
    code = process.wait(timeout=600)
    stop.set()
    watcher.join()
    assert code == 0, err.read_text()
    summary = check_summary_matches_folders(out)
    assert counts(summary) == (len(lines), 0, KILLED_INDEX, 1)
    retried = summary["jobs"][KILLED_INDEX]
    assert len(killed_again) == 1 and retried["attempts"] == 2 and retried["worker"]["pid"] != killed_again[0]
    assert retried["message"] == (f"complete after 2 attempts: Ray re-ran it when its worker (pid {killed_again[0]}) "
                                  f"was lost")

    # -- the contact sheet: every preview, whole, where the layout says, labelled ------------------
    layout = summary["contact_sheet"]
    sheet = np.asarray(Image.open(out / layout["file"]).convert("RGB"))
    assert [c["index"] for c in layout["cells"]] == list(range(len(lines)))
    for cell, job in zip(layout["cells"], summary["jobs"]):
        x, y, w, h = cell["box"]
        preview = np.asarray(Image.open(out / job["folder"] / "preview.png").convert("RGB"))
        assert cell["preview"] and np.array_equal(sheet[y:y + h, x:x + w], preview), job["folder"]
        assert cell["label"] == [f"{job['index']:03d} {job['prompt']}", f"seed {job['seed']}"]
        label = sheet[y + h:y + h + layout["label_height"], x:x + w]
        assert (label.min(axis=-1) < 128).sum() > 50  # the text is drawn
