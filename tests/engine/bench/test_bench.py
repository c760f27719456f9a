"""Benchmarks and the speed work behind them: the CLIs run end to end on toy sizes and
report sane figures (never timing thresholds: this machine is shared), the all-levels
hash grid equals a plain per-level one, and a training step reads nothing back from the
device except the renderer's one compaction."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blender_sds import kinds
from blender_sds.engine.scene import field as field_module
from blender_sds.engine.bench import profiling, speed
from blender_sds.engine.scene.field import Field, FieldConfig, HashGrid
from blender_sds.job import validate_job
from blender_sds.engine.bench.tiny_models import make_tiny_sd

ROOT = Path(__file__).parents[3]


def engine(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "blender_sds.engine", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT), "HOME": str(ROOT / ".pytest_cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_speed_cli_reports_the_iteration_against_bare_guidance():
    out = engine("bench", "speed", "--model", "tiny", "--preset", "draft", "--iterations", "2", "--warmup", "1",
                 "--cuda-graphs", "off", "--hash-grid", "torch", "--methods", "nfsd,esd", "--json")
    assert out["device"] == "cpu" and out["preset"] == "draft"
    draft = out["presets"]["draft"]
    for key in ("ms_per_iteration", "ms_bare_guidance", "overhead_ratio", "peak_gpu_mb"):
        assert out[key] == draft[key], key  # top-level copies of the first preset
    for key in ("ms_per_iteration", "ms_bare_guidance", "overhead_ratio", "overhead_ratio_paired",
                "overhead_ratio_phases", "iterations_per_second",
                "minutes_per_asset", "ms_occupancy_update", "ms_preview", "peak_host_rss_mb"):
        assert positive(draft[key]), (key, draft[key])
    assert draft["peak_gpu_mb"] is None and draft["peak_gpu_steps_mb"] is None  # no GPU memory on the CPU
    assert draft["iterations"] == 2 and draft["steps"] == 1500 and draft["guidance_image_size"] == [32, 32]
    assert draft["minutes_per_asset"] == pytest.approx(1500 * draft["ms_per_iteration"] / 60000)
    assert draft["overhead_ratio"] == pytest.approx(draft["ms_per_iteration"] / draft["ms_bare_guidance"])
    # The phases are read off one timeline in step order: none negative, together the step.
    phases = draft["breakdown_ms"]
    assert set(phases) == set(profiling.PHASES)
    assert all(v >= 0 for v in phases.values()), phases
    for name in ("field", "vae_encode", "unet", "backward_scene", "optimiser"):
        assert phases[name] > 0, (name, phases)
    assert sum(phases.values()) == pytest.approx(draft["ms_per_iteration"], rel=0.5)
    assert draft["host_reads_per_iteration"]["item"] == 0
    assert draft["hash_grid"] == "torch" and draft["cuda_graphs"] is False and draft["cuda_graphs_check"] is None
    assert out["commit"] and out["command"].startswith("python -m blender_sds.engine bench speed")

    # Each method's step beside SDS's (measured first, as every ratio's denominator), on the same model.
    methods = draft["methods"]
    assert list(methods) == ["sds", "nfsd", "esd"] and out["methods"] == methods
    for name, row in methods.items():
        assert row["rule"] == kinds.method(name).guidance["rule"], name
        assert row["predictions_per_step"] == METHOD_PREDICTIONS[name], (name, row)
        assert positive(row["ms_per_iteration"]) and positive(row["ratio_to_sds"]), (name, row)
        assert row["peak_gpu_mb"] is None and row["peak_host_rss_mb"] >= 0, (name, row)
    assert methods["sds"]["ratio_to_sds"] == 1.0


# The judge's evaluations a step (rules/): CFG's pair; NFSD adds the empty prompt beside its published
# negative; ESD adds its estimator's camera and camera-free passes and its training pass.
METHOD_PREDICTIONS = {"sds": 2, "nfsd": 3, "esd": 5}


@pytest.mark.parametrize("methods, expected", [("nfsd,esd", ["sds", "nfsd", "esd"]), ("esd,sds,esd", ["sds", "esd"]),
                                               ("none", [])])
def test_bench_speed_times_sds_first_beside_the_methods_asked_for(methods, expected):
    assert speed.parse(["--methods", methods]).methods == expected
    assert speed.parse([]).methods == list(speed.METHODS) == ["sds", "nfsd", "csd", "vsd", "esd"]


def test_bench_speed_refuses_an_unknown_method_with_the_known_ones(capsys):
    with pytest.raises(SystemExit) as stopped:
        speed.parse(["--methods", "nfsd,magic"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "--methods: unknown 'magic'" in err
    assert all(name in err for name in kinds.method_names())


def test_bench_mesh_cli_meshes_a_fitted_field():
    out = engine("bench", "mesh", "--resolution", "32", "--fit-steps", "20", "--json")
    run = out["resolutions"]["32"]
    assert out["device"] == "cpu" and run["resolution"] == 32 and run["threshold"] == 10.0
    assert run["vertices"] > 100 and run["faces"] > 100
    assert positive(run["ms_total"]) and run["seconds_total"] == pytest.approx(run["ms_total"] / 1000)
    assert set(run["breakdown_ms"]) == {"density_grid", "floaters", "cavities", "marching_cubes", "colours"}
    assert all(v >= 0 for v in run["breakdown_ms"].values()) and positive(run["breakdown_ms"]["density_grid"])
    assert run["peak_gpu_mb"] is None


def test_bench_rejects_bad_arguments_with_the_flag_named():
    proc = subprocess.run([sys.executable, "-m", "blender_sds.engine", "bench", "speed", "--iterations", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--iterations" in proc.stderr


def test_bench_help_lists_the_benchmarks_and_a_benchmarks_help_is_its_own():
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "blender_sds.engine", "bench", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    listed = bench("--help")
    assert listed.returncode == 0 and "smoothing" in listed.stdout and "janus" in listed.stdout
    own = bench("smoothing", "--help")
    assert own.returncode == 0 and "--target-faces" in own.stdout
    missing = bench()
    assert missing.returncode == 2 and "benchmarks:" in missing.stderr


def reference_encoding(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written plainly, one level and one corner at a time."""
    x = x.clamp(0, 1)
    table_rows = grid.table.shape[0]
    levels = []
    for level, res in enumerate(grid.resolutions):
        scaled = x * res
        base = scaled.floor().long().clamp(max=res - 1)
        frac = scaled - base
        feature = 0
        for corner in range(8):
            bits = torch.tensor([corner >> 2 & 1, corner >> 1 & 1, corner & 1])
            c = base + bits
            if grid.dense[level]:
                index = c[:, 0] + (res + 1) * c[:, 1] + (res + 1) ** 2 * c[:, 2]
            else:
                index = (c[:, 0] ^ (c[:, 1] * field_module.PRIMES[1]) ^ (c[:, 2] * field_module.PRIMES[2]))
                index = index % grid.sizes[level]
            index = index + grid.offsets[level]
            assert int(index.max()) < table_rows
            weight = torch.where(bits.bool(), frac, 1 - frac).prod(-1, keepdim=True)
            feature = feature + weight * grid.table[index]
        levels.append(feature)
    return torch.cat(levels, -1)


@pytest.mark.parametrize("cfg", [FieldConfig.for_preset("draft"),
                                 FieldConfig(levels=16, log2_table=13, max_resolution=4096),
                                 FieldConfig(levels=4, base_resolution=64, max_resolution=8, log2_table=12)],
                         ids=["draft", "high-small-table", "shrinking"])
def test_all_levels_hash_grid_equals_the_per_level_reference(cfg):
    torch.manual_seed(0)
    grid = HashGrid(cfg)
    grid.table.data.uniform_(-1, 1)
    x = torch.rand(3000, 3) * 1.2 - 0.1  # some outside [0,1]: clamped
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 1.0, 0.0], [0.9999999, 0.25, 0.75]])
    got = grid(x)
    want = reference_encoding(grid, x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    (table_grad,) = torch.autograd.grad(got, grid.table, g)
    (want_grad,) = torch.autograd.grad(want, grid.table, g)
    assert torch.allclose(table_grad, want_grad, atol=1e-4, rtol=1e-4)


def test_no_grad_field_queries_come_in_chunks_with_the_same_values(monkeypatch):
    torch.manual_seed(0)
    field = Field([0.0, 0.0, 0.0], 2.0, FieldConfig.for_preset("draft"))
    points = torch.rand(2500, 3) * 2 - 1
    with torch.enable_grad():
        density, albedo = (t.detach() for t in field(points))
    monkeypatch.setattr(field_module, "NO_GRAD_CHUNK", 1000)
    seen = []
    original = field.encoding.forward
    field.encoding.forward = lambda x: seen.append(len(x)) or original(x)
    with torch.no_grad():
        chunked_density, chunked_albedo = field(points)
        chunked_albedo_only = field.albedo(points)
        normals = field.normals(points)
    assert seen[:3] == [1000, 1000, 500]
    assert max(seen) <= 1000 and normals.shape == (2500, 3)
    assert torch.allclose(chunked_density, density, atol=1e-5) and torch.allclose(chunked_albedo, albedo, atol=1e-6)
    assert torch.allclose(chunked_albedo_only, albedo, atol=1e-6)


def test_host_read_audit_sees_item_and_masks():
    t = torch.arange(5.0)
    with profiling.HostReadAudit() as audit:
        float(t.sum())
        _ = t[t > 2]
        _ = t * 2
        _ = torch.tensor([0.0, 1.0])  # host data: a blocking copy when made on a GPU
        t[0] = 1.0  # a scalar is filled on the device: no copy
    assert audit.counts["item"] == 1 and audit.counts["nonzero"] == 1 and audit.counts["aten_ops"] >= 4
    assert audit.counts["host_tensors"] == 1 and any(w.startswith("lift_fresh") for w in audit.where), audit.where


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from blender_sds.engine.train.run import Run

    model = make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")
    job = validate_job({"version": 1, "prompt": "a ceramic teapot", "preset": "draft", "steps": 20,
                        "render": {"resolution": 32, "samples": 24}, "optim": {"albedo_steps": 0},
                        "guidance": {"kind": "stable-diffusion", "model": str(model)}})
    return Run(job, tmp_path_factory.mktemp("out"), torch.device("cpu"))


def test_a_training_step_reads_nothing_back_but_the_renderers_compaction(tiny_run):
    tiny_run.step = tiny_run.occupancy.update_every - 1  # this step ends with an occupancy refresh
    audit = profiling.audit_step(tiny_run, 20)
    assert audit["item"] == 0, audit
    assert audit["nonzero"] == 1, audit  # the renderer keeps occupied samples only (see docs/PERFORMANCE.md)
    assert audit["host_tensors"] == 0, audit  # constants made per step are blocking copies on CUDA


def test_phase_probe_leaves_the_run_as_it_found_it(tiny_run):
    guidance, forward = tiny_run.guidance, type(tiny_run.field).forward
    probe = profiling.PhaseProbe(tiny_run).attach()
    try:
        probe.step(20)
        probe.step(20)
    finally:
        probe.detach()
    phases = probe.finish()
    assert len(phases) == 2 and all(p["total"] > 0 and p["unet"] > 0 for p in phases)
    assert all(p["total"] == pytest.approx(sum(p[k] for k in profiling.PHASES), rel=1e-6) for p in phases)
    assert tiny_run.guidance is guidance and "forward" not in vars(tiny_run.field)
    assert type(tiny_run.field).forward is forward and "encode" not in vars(guidance)
    assert not tiny_run.optimizer._optimizer_step_pre_hooks


def test_big_calls_recompute_corners_in_chunks_with_the_same_gradient():
    torch.manual_seed(0)
    field = Field([0.0, 0.0, 0.0], 2.0, FieldConfig.for_preset("draft"))
    field.encoding.recompute_chunk = 777  # uneven chunks
    points = torch.rand(3000, 3) * 2 - 1
    results = []
    for above in (10**9, 0):  # corners kept, corners recomputed
        field.encoding.recompute_above = above
        field.zero_grad()
        density, albedo = field(points)
        normals = field.normals(points)
        (density.sum() + albedo.sum() + normals.sum()).backward()
        results.append((field.encoding.table.grad.clone(), density.detach(), albedo.detach(), normals.detach()))
    assert all(torch.equal(kept, recomputed) for kept, recomputed in zip(*results))
    assert results[0][0].abs().sum() > 0
