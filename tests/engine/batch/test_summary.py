"""summary.json's counts and contact_sheet.png's cells: each preview pasted whole where the layout
says, a blank cell for a job without one, text under every cell. Fast: previews made here."""
import numpy as np
from PIL import Image

from blender_sds.engine.batch.plan import Planned
import json

from blender_sds.engine.batch.summary import LABEL_HEIGHT, Ledger, build, contact_sheet, job_entry


def planned(index, prompt, seed=0):
    return Planned(index, index + 1, {"prompt": prompt, "seed": seed}, f"{index:03d}-x-seed{seed}", "run")


def test_summary_counts_and_contact_sheet(tmp_path):
    rng = np.random.default_rng(0)
    previews = {}
    entries = []
    for i, status in enumerate(["complete", "skipped", "failed", "complete", "complete"]):
        item = planned(i, f"a prompt number {i}", seed=i)
        folder = tmp_path / item.folder
        folder.mkdir()
        if status != "failed":
            size = (64, 128) if i == 3 else (128, 256)  # a pocket job's preview beside Stable Diffusion's
            previews[i] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(previews[i]).save(folder / "preview.png")
        (folder / ".mesh.npz.tmp-99999").write_bytes(b"a killed write")  # never listed as a file
        entries.append(job_entry(item, tmp_path, status, seconds=1.5, message="boom" if status == "failed" else ""))
    assert entries[0]["files"] == ["preview.png"] and entries[2]["files"] == []
    summary = build(entries)
    assert (summary["version"], summary["complete"], summary["failed"], summary["skipped"]) == (1, 4, 1, 1)
    assert [e["index"] for e in summary["jobs"]] == [0, 1, 2, 3, 4]

    layout = contact_sheet(tmp_path, entries)
    sheet = np.asarray(Image.open(tmp_path / layout["file"]).convert("RGB"))
    assert [c["index"] for c in layout["cells"]] == [0, 1, 2, 3, 4]
    for cell in layout["cells"]:
        x, y, w, h = cell["box"]
        image = sheet[y:y + h, x:x + w]
        if cell["index"] in previews:
            preview = Image.fromarray(previews[cell["index"]])  # a smaller one is scaled up to the cell
            expected = np.asarray(preview.resize((w, h), Image.Resampling.LANCZOS) if preview.size != (w, h) else preview)
            assert (w, h) == (256, 128) and cell["preview"] and np.array_equal(image, expected)
        else:
            assert not cell["preview"] and (image == 225).all()  # the blank of a failed job
        label = sheet[y + h:y + h + LABEL_HEIGHT, x:x + w]
        assert (label.min(axis=-1) < 128).sum() > 50  # text drawn under it
        assert cell["label"] == [f"{cell['index']:03d} a prompt number {cell['index']}",
                                 f"seed {cell['index']}" + ("  FAILED" if cell["index"] == 2 else "")]
    boxes = {tuple(c["box"][:2]) for c in layout["cells"]}
    assert len(boxes) == 5  # no two cells on top of each other


def test_the_summary_is_written_as_the_batch_goes(tmp_path):
    ledger = Ledger(tmp_path, manifest="m.jsonl", ran=2, cluster=None)
    first, second = planned(0, "a red cube"), planned(1, "a blue cube")
    ledger.add(job_entry(first, tmp_path, "complete"))  # the first end is written at once
    written = json.loads((tmp_path / "summary.json").read_text())
    assert (written["finished"], [j["index"] for j in written["jobs"]], written["complete"]) == (False, [0], 1)
    assert "contact_sheet" not in written
    ledger.add(job_entry(second, tmp_path, "failed", message="boom"))  # within SAVE_EVERY: not yet
    assert len(json.loads((tmp_path / "summary.json").read_text())["jobs"]) == 1
    summary, path = ledger.save(final=True)
    assert json.loads(path.read_text()) == summary
    assert (summary["finished"], summary["complete"], summary["failed"], summary["manifest"]) == (True, 1, 1, "m.jsonl")
    assert [c["index"] for c in summary["contact_sheet"]["cells"]] == [0, 1]
