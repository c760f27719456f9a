"""scripts/gpu_check.sh, the one prepared command for a lent GPU, must not rot between the
rare sessions that get one: its dry run does every stage on the CPU (tiny model, a few
iterations) and must write the same JSON keys, each stage's figures read back sanely."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
KEYS = ("device", "bench_speed", "bench_speed_methods", "bench_speed_eager", "bench_speed_low_vram", "bench_speed_compile", "asset_seconds", "asset",
        "bench_mesh", "bench_hashgrid", "stages", "commit", "command", "nvidia_smi")


def test_dry_run_writes_every_figure_the_gpu_run_writes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path), "PYTHONPATH": ""}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert set(KEYS) <= set(result), set(KEYS) - set(result)
    assert result["dry_run"] is True and result["commit"]
    stages = result["stages"]
    assert [name for name, s in stages.items() if s["status"] != "ok"] == ["bench_speed_eager", "bench_speed_compile"]
    assert result["device"]["torch"] and result["device"]["diffusers"]
    for key in ("bench_speed", "bench_speed_low_vram"):
        draft = result[key]["presets"]["draft"]
        assert draft["ms_per_iteration"] > 0 and math.isfinite(draft["overhead_ratio"])
        assert draft["hash_grid"] == "torch"  # the plain path stays the CPU default
    assert result["bench_speed_low_vram"]["presets"]["draft"]["low_vram"] is True
    assert not result["bench_speed"]["presets"]["draft"].get("methods")  # the method rows are their own stage
    rows = result["bench_speed_methods"]["presets"]["draft"]["methods"]
    assert {name: row["predictions_per_step"] for name, row in rows.items()} == {"sds": 2, "nfsd": 3, "csd": 3, "vsd": 4,
                                                                         "esd": 5}
    assert result["bench_mesh"]["resolutions"]["32"]["faces"] > 0
    hashgrid = result["bench_hashgrid"]["presets"]["draft"]
    assert hashgrid["torch"]["ms_forward_backward"] > 0
    if hashgrid["triton_available"]:  # checked through Triton's interpreter
        assert hashgrid["check"]["agree"] is True, hashgrid["check"]
    asset = result["asset"]
    assert result["asset_seconds"] > 0 and asset["status"] == "ok" and asset["steps_done"] == asset["steps"] == 3
    assert asset["faces"] > 0 and asset["seconds_mesh"] >= 0 and asset["ms_per_step"] > 0
    assert (out / "asset_preview.png").stat().st_size > 0
    # The reply of a device call carries only the end of the output: the table must be there.
    assert "bench_speed[draft]" in proc.stdout and "asset:" in proc.stdout
