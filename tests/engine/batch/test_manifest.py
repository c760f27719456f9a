"""A batch's manifest is read and every job validated before anything runs; each refusal is one
line naming the file and line (or the flag) and the key. Fast: no engine, no Ray."""
import json
import socket

import pytest

from blender_sds.engine.__main__ import main
from blender_sds.engine.batch.manifest import MAX_SEED, ManifestError, parse_seeds, read_manifest

TEMPLATE = {"version": 1, "guidance": {"kind": "pocket"}, "steps": 30, "mesh": {"resolution": 32}}


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    return path


def refusal(path, **kw) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_json_lines_of_whole_jobs(tmp_path):
    manifest = write(tmp_path / "m.jsonl", [
        "# two pocket jobs", json.dumps({**TEMPLATE, "prompt": "a red cube", "seed": 4}), "",
        json.dumps({**TEMPLATE, "prompt": "a blue sphere"})])
    entries = read_manifest(manifest)
    assert [(e.line, e.job["prompt"], e.job["seed"], e.job["steps"]) for e in entries] == [
        (2, "a red cube", 4, 30), (4, "a blue sphere", 0, 30)]
    assert entries[0].job["mesh"]["resolution"] == 32 and entries[0].job["render"]["resolution"] == 32  # normalised


def test_overrides_on_a_template_times_seeds_and_steps(tmp_path, template):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube", "seed": 9}', '"a green torus"',
                                            '{"prompt": "a blue cone", "mesh": {"smooth": 3}}'])
    entries = read_manifest(manifest, template=template, seeds=[0, 7], steps=12)
    assert [(e.line, e.job["prompt"], e.job["seed"]) for e in entries] == [
        (1, "a red cube", 0), (1, "a red cube", 7), (2, "a green torus", 0), (2, "a green torus", 7),
        (3, "a blue cone", 0), (3, "a blue cone", 7)]
    assert {e.job["steps"] for e in entries} == {12}
    assert entries[4].job["mesh"]["smooth"] == 3 and entries[0].job["mesh"]["resolution"] == 32  # merged


def test_a_plain_list_of_prompts_runs_in_the_template(tmp_path, template):
    manifest = write(tmp_path / "prompts.txt", ["a red cube", "# not this one", "  a white pyramid  "])
    entries = read_manifest(manifest, template=template)
    assert [(e.line, e.job["prompt"]) for e in entries] == [(1, "a red cube"), (3, "a white pyramid")]
    assert "needs --template" in refusal(manifest)


def test_not_json_names_the_line(tmp_path, template):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}', '{"prompt": "a blue cube",}'])
    message = refusal(manifest, template=template)
    assert message.startswith(f"{manifest} line 2: not JSON") and "column" in message


def test_an_invalid_job_names_the_line_and_the_key(tmp_path, template):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}', '{"prompt": "a magenta cube"}'])
    message = refusal(manifest, template=template)
    assert message.startswith(f"{manifest} line 2: prompt: 'a magenta cube' is not in the pocket world"), message


def test_an_unknown_key_names_the_line_and_the_key(tmp_path, template):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}', "",
                                            '{"prompt": "a red cube", "colour": "red"}'])
    assert refusal(manifest, template=template).startswith(f"{manifest} line 3: colour: unknown key")
    nested = write(tmp_path / "n.jsonl", ['{"prompt": "a red cube", "mesh": {"faces": 10}}'])
    assert refusal(nested, template=template).startswith(f"{nested} line 1: mesh.faces: unknown key")


def test_a_bad_key_from_the_template_is_blamed_on_the_template(tmp_path):
    template = tmp_path / "t.json"
    template.write_text(json.dumps({**TEMPLATE, "optim": {"lr": 5}}), encoding="utf-8")
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}'])
    message = refusal(manifest, template=template)
    assert message.startswith(f"--template {template} (in the job of {manifest} line 1): optim.lr:"), message


def test_other_refusals(tmp_path, template):
    assert refusal(tmp_path / "missing.jsonl").endswith("no such file")
    assert "is a folder" in refusal(tmp_path)
    assert "holds no jobs" in refusal(write(tmp_path / "empty.jsonl", ["", "# nothing"]))
    assert "line 1: must be a JSON object" in refusal(write(tmp_path / "list.jsonl", ["[1, 2]"]), template=template)
    assert "line 1: version: missing" in refusal(write(tmp_path / "bare.jsonl", ['{"prompt": "a red cube"}']))
    assert refusal(write(tmp_path / "s.jsonl", ['"a red cube"']), template=template, steps=0).startswith(
        "--steps 0: steps: must be")
    bad_template = write(tmp_path / "bad.json", ["{not json"])
    assert refusal(write(tmp_path / "ok.jsonl", ['"a red cube"']), template=bad_template).startswith(
        f"--template {bad_template}: not valid JSON")


@pytest.mark.parametrize("text, problem", [("0,x", "'x' is not a seed"), ("1,1", "1 is given twice"),
                                           ("-1", "'-1' is not a seed"), (str(MAX_SEED + 1), "is not a seed")])
def test_seeds_are_checked(text, problem):
    with pytest.raises(ManifestError, match=problem):
        parse_seeds(text)
    assert parse_seeds(" 0, 2,1") == [0, 2, 1]


def test_the_command_refuses_a_bad_manifest_before_anything_starts(tmp_path, template, capsys):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}', '{"prompt": "a magenta cube"}'])
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--template", str(template), "--out", str(out), "--local"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {manifest} line 2: prompt: 'a magenta cube'"), err
    assert not out.exists()  # nothing made, no Ray started
    assert main(["batch", str(manifest), "--out", str(out), "--seeds", "0,0"]) == 2
    assert capsys.readouterr().err == "error: --seeds: 0 is given twice\n"


def test_flags_and_an_address_nothing_answers_at_are_refused(tmp_path, template, capsys):
    manifest = write(tmp_path / "m.jsonl", ['{"prompt": "a red cube"}'])
    base = ["batch", str(manifest), "--template", str(template), "--out", str(tmp_path / "out"), "--progress", "none"]
    for flags, message in [(["--cpus-per-job", "0"], "--cpus-per-job: must be more than 0"),
                           (["--ray", "auto", "--num-cpus", "2"], "--num-cpus: only for a local cluster"),
                           (["--max-retries", "-1"], "--max-retries: must be 0 .. 100")]:
        assert main(base + flags) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(base + ["--ray", f"127.0.0.1:{port}"]) == 2  # at once: ray.init alone would retry for minutes
    assert capsys.readouterr().err.startswith(f"error: --ray 127.0.0.1:{port}: nothing answers there")
