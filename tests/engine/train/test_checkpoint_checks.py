"""Damaged and foreign checkpoints are refused with one line naming the file and the key
(issue 17): a real checkpoint from a tiny pocket run, damaged copy by copy, through the CLI
and through run_job in-process; the undamaged one still refines and resumes."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from blender_sds.engine.train.run import Run, run_job
from blender_sds.job import validate_job
from tiny_sd_jobs import engine

STEPS = 4


def pocket_job(**extra) -> dict:
    return {"version": 1, "prompt": "a red cube", "seed": 0, "steps": STEPS, "guidance": {"kind": "pocket"},
            "render": {"resolution": 16, "samples": 16}, "mesh": {"resolution": 16},
            "output": {"preview_every": 0, "checkpoint_every": 0, "progress_every": 2}, **extra}


@pytest.fixture(scope="module")
def made(tmp_path_factory, one_torch_thread):
    """The checkpoint of a real 4-step run, and its state as loaded (read only: damage a deep copy)."""
    out = run_job(validate_job(pocket_job()), tmp_path_factory.mktemp("made") / "out", device="cpu")
    path = out / "checkpoint.pt"
    return path, torch.load(path, weights_only=True)


def damaged(made, tmp_path, change) -> str:
    state = pickle.loads(pickle.dumps(made[1]))  # a deep copy, tensors included
    change(state)
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    return str(path)


def assert_one_line(message: str, path: str, key: str) -> None:
    assert message.startswith(f"init.checkpoint: {path}: "), message
    assert key in message and "\n" not in message and "\x1b" not in message and len(message) <= 300, message


def spoil(state, part, key, value=math.nan):
    state[part][key].view(-1)[0] = value


DAMAGE = {  # what is done to a copy, whether it is resumed, what the message must say
    "missing-table": (lambda s: s["field"].pop("encoding.table"), True, "field.encoding.table is missing"),
    "missing-part": (lambda s: s.pop("background"), False, "background is missing"),
    "shape": (lambda s: s["field"].update({"encoding.table": torch.zeros(8, 2)}), False,
              "field.encoding.table has shape (8, 2), this job's field needs ("),
    "extra-key": (lambda s: s["field"].update({"spare": torch.zeros(1)}), False, "field.spare is not part of"),
    "nan-weights": (lambda s: spoil(s, "field", "density_head.0.weight"), False,
                    "field.density_head.0.weight holds 1 NaN or infinite value"),
    "inf-grid": (lambda s: spoil(s, "occupancy", "density", math.inf), False, "occupancy.density holds 1 NaN"),
    "step-text": (lambda s: s.update(step="ten"), True, "step is a str ('ten'), not a whole number"),
    "step-past-end": (lambda s: s.update(step=STEPS + 90), True, f"step is {STEPS + 90}, outside 0 .. this job's"),
    "empty-optimizer": (lambda s: s.update(optimizer={}), True, "optimizer.param_groups is empty"),
    "empty-moments": (lambda s: s["optimizer"].update(state={}), True, "optimizer.state is empty"),
    "moment-shape": (lambda s: s["optimizer"]["state"][1].update(exp_avg=torch.zeros(3)), True,
                     "optimizer.state.1.exp_avg has shape (3,)"),
    "nan-moment": (lambda s: s["optimizer"]["state"][2]["exp_avg_sq"].fill_(math.nan), True,
                   "optimizer.state.2.exp_avg_sq holds 64 NaN"),
    "nan-lr": (lambda s: s["optimizer"]["param_groups"][0].update(lr=math.nan), True,
               "optimizer.param_groups[0].lr is a float (nan)"),
    "bounds": (lambda s: s["job"]["bounds"].update(center=[0, 0, "up"]), False, "job.bounds.center is a list"),
    "preset": (lambda s: s["field_config"].update(levels=16), False, "field_config was made with another preset"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_the_key(made, tmp_path, case):
    change, resume, words = DAMAGE[case]
    path = damaged(made, tmp_path, change)
    job = validate_job(pocket_job(steps=STEPS + 2, init={"checkpoint": path, "resume": resume}))
    with pytest.raises(ValueError) as refused:
        run_job(job, tmp_path / "out", device="cpu")
    assert_one_line(str(refused.value), path, words)


@pytest.mark.parametrize("case, words", [
    ("missing-table", "field.encoding.table is missing"),
    ("class-pickle", "not a readable blender-sds checkpoint (it holds Python objects"),
])
def test_the_cli_refuses_a_bad_checkpoint_with_exit_2_and_one_plain_line(made, tmp_path, case, words):
    if case == "missing-table":
        path = damaged(made, tmp_path, DAMAGE[case][0])
    else:  # torch's refusal of it is coloured with ANSI escapes and says how to unpickle it anyway
        path = str(tmp_path / "foreign.pt")
        torch.save({"format": "blender-sds-checkpoint", "x": pickle.PickleError()}, path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(pocket_job(steps=STEPS + 2, init={"checkpoint": path, "resume": True})))
    proc = engine("run", str(job), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert_one_line(lines[0][len("error: "):], path, words)
    assert "weights_only" not in proc.stderr and "Warning" not in proc.stderr
    assert not (tmp_path / "out" / "mesh.npz").exists()


def test_foreign_truncated_and_non_torch_files_are_refused_in_process(made, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(made[0].read_bytes()[:1000])
    notes = tmp_path / "notes.pt"
    notes.write_text("hello, not a checkpoint\n")
    for path, words in ((foreign, "is not a blender-sds checkpoint"), (cut, "not a readable blender-sds checkpoint"),
                        (notes, "not a readable blender-sds checkpoint (not a PyTorch file")):
        with pytest.raises(ValueError) as refused:
            run_job(validate_job(pocket_job(init={"checkpoint": str(path)})), tmp_path / "out", device="cpu")
        assert_one_line(str(refused.value), str(path), words)


def test_the_good_checkpoint_resumes_and_an_empty_optimiser_does_not_stop_a_refine(made, tmp_path):
    events = []
    resume = validate_job(pocket_job(steps=STEPS + 2, init={"checkpoint": str(made[0]), "resume": True}))
    run_job(resume, tmp_path / "resume", device="cpu", on_event=events.append)
    assert next(e for e in events if e["type"] == "start")["start_step"] == STEPS
    assert (tmp_path / "resume" / "mesh.npz").is_file()
    # A refine reads neither step nor optimiser: it starts from the field with a fresh optimiser at step 0.
    path = damaged(made, tmp_path, lambda s: s.update(optimizer={}, step="ten"))
    run = Run(validate_job(pocket_job(init={"checkpoint": path})), tmp_path / "refine", torch.device("cpu"))
    assert run.step == 0 and not run.optimizer.state
    assert torch.equal(run.field.encoding.table, made[1]["field"]["encoding.table"])
