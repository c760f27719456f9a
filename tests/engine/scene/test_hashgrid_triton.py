"""The fused Triton hash-grid encoding (engine.hashgrid_triton) against the plain PyTorch one.

No GPU here: the kernels run under Triton's CPU interpreter. TRITON_INTERPRET must be set
before triton defines the kernels, and another test may have imported triton already, so
the Triton side runs in a subprocess that gets the inputs from, and writes its outputs
to, a file; the comparison happens here against HashGrid's torch path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from blender_sds.engine.scene import hashgrid_triton
from blender_sds.engine.scene.field import FieldConfig, HashGrid, encode_backend

ROOT = Path(__file__).parents[3]
EPS = torch.finfo(torch.float32).eps  # 2^-23

CONFIGS = {
    "draft": FieldConfig.for_preset("draft"),  # dense coarse levels, hashed fine ones
    "high-small-table": FieldConfig(levels=16, log2_table=13, max_resolution=4096),
    "dense-only-3-features": FieldConfig(levels=4, base_resolution=4, max_resolution=16, log2_table=14, features=3),
    "hashed-only": FieldConfig(levels=4, base_resolution=32, max_resolution=256, log2_table=12),
    "shrinking": FieldConfig(levels=4, base_resolution=64, max_resolution=8, log2_table=12),  # dense levels last
}

# Runs the Triton path through HashGrid (backend "triton") on the CPU interpreter.
TRITON_SIDE = """
import sys, torch
from blender_sds.engine.scene import hashgrid_triton
from blender_sds.engine.scene.field import FieldConfig, HashGrid, encode_backend
assert hashgrid_triton.INTERPRETED
results = {}
for name, case in torch.load(sys.argv[1]).items():
    grid = HashGrid(FieldConfig(**case["cfg"]))
    grid.backend = "triton"
    assert encode_backend(grid, "cpu") == "triton"
    grid.table.data.copy_(case["table"])
    out = grid(case["x"])
    (grad,) = torch.autograd.grad(out, grid.table, case["grad_out"])
    results[name] = {"out": out.detach(), "grad": grad}
torch.save(results, sys.argv[2])
"""


def subprocess_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)


def make_case(cfg: FieldConfig, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grid = HashGrid(cfg)
    table = torch.rand(grid.table.shape, generator=gen) * 2 - 1
    # 1500 points: two interpreter blocks of 1024, the second partly masked off.
    x = torch.rand(1500, 3, generator=gen) * 1.2 - 0.1  # some outside [0,1]: clamped
    x[:6] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 1.0, 0.0], [0.9999999, 0.25, 0.75],
                          [1e-8, 0.9999999, 1.0], [-3.0, 2.0, 0.125]])
    grad_out = torch.randn(1500, grid.out_dim, generator=gen)
    return {"cfg": asdict(cfg), "table": table, "x": x, "grad_out": grad_out}


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory):
    pytest.importorskip("triton")
    folder = tmp_path_factory.mktemp("triton")
    cases = {name: make_case(cfg, seed) for seed, (name, cfg) in enumerate(CONFIGS.items())}
    torch.save(cases, folder / "inputs.pt")
    proc = subprocess.run([sys.executable, "-c", TRITON_SIDE, str(folder / "inputs.pt"), str(folder / "outputs.pt")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=subprocess_env(TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, torch.load(folder / "outputs.pt")


def torch_encoding(cfg: FieldConfig, table: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor):
    """HashGrid's plain path: the encoding and the table's gradient for grad_out."""
    grid = HashGrid(cfg)
    grid.backend = "torch"
    grid.table.data.copy_(table)
    out = grid(x)
    (grad,) = torch.autograd.grad(out, grid.table, grad_out)
    return out.detach(), grad, grid


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_encoding_and_table_gradient_match_the_torch_path(triton_run, name):
    cases, results = triton_run
    case, got = cases[name], results[name]
    cfg = CONFIGS[name]
    want, want_grad, grid = torch_encoding(cfg, case["table"], case["x"], case["grad_out"])
    if name == "dense-only-3-features":
        assert all(grid.dense)
    if name == "hashed-only":
        assert not any(grid.dense)
    if name == "shrinking":
        assert grid.dense[-1] and not grid.dense[0]
    assert got["out"].shape == want.shape and got["out"].dtype == want.dtype

    # Each output is sum_k w_k v_k over 8 corners (w in [0,1]): per side, 2 roundings in
    # the weight, 1 in each product and 7 in the sum, each relative to at most
    # S = sum_k w_k |v_k|, so the two sides differ by at most ~20 eps S whatever their
    # summation order or FMA use. The torch path on |table| gives S exactly (w >= 0).
    # A wrong table row would be off by w |v_a - v_b|, ~0.1 here, not ~1e-6.
    s, _, _ = torch_encoding(cfg, case["table"].abs(), case["x"], case["grad_out"])
    assert ((got["out"] - want).abs() <= 24 * EPS * s).all(), (got["out"] - want).abs().max()

    # A row's gradient sums n_row contributions w * g, by atomic adds in any order here and
    # index_add_ there: at most (n_row + 2) eps A_row per side, A_row = sum |w g|, which
    # the torch path's gradient for |grad_out| gives; n_row counts the row's corners.
    _, a, _ = torch_encoding(cfg, case["table"], case["x"], case["grad_out"].abs())
    index, _ = grid.corners(case["x"])
    n_row = torch.bincount(index.reshape(-1), minlength=grid.table.shape[0]).unsqueeze(1)
    assert got["grad"].shape == want_grad.shape
    err = (got["grad"] - want_grad).abs()
    assert (err <= 2 * (n_row + 3) * EPS * a).all(), err.max()
    assert (got["grad"][n_row.squeeze(1) == 0] == 0).all()  # rows no corner touched stay zero


def test_auto_backend_keeps_the_plain_path_off_cuda(monkeypatch):
    grid = HashGrid(FieldConfig.for_preset("pocket"))
    assert grid.backend == "auto"
    monkeypatch.setattr(hashgrid_triton, "INTERPRETED", hashgrid_triton.triton is not None)  # even if it could run
    for device in ("cpu", "mps", torch.device("cpu")):
        assert encode_backend(grid, device) == "torch"
    # Only names the path: touches no GPU.
    assert encode_backend(grid, "cuda") == ("triton" if hashgrid_triton.triton is not None else "torch")

    def fail(*args):
        raise AssertionError("the Triton path ran on the CPU")

    monkeypatch.setattr(hashgrid_triton.TritonEncode, "apply", fail)
    x = torch.rand(50, 3)
    assert grid(x).shape == (50, grid.out_dim)
    grid.backend = "torch"
    assert encode_backend(grid, "cuda") == "torch"
    grid.backend = "cuda"
    with pytest.raises(ValueError, match="backend"):
        grid(x)


# Hides triton from the import system, as where it is not installed.
WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None
import torch
from blender_sds.engine.scene import hashgrid_triton
from blender_sds.engine.scene.field import Field, FieldConfig, encode_backend
assert hashgrid_triton.triton is None
assert not hashgrid_triton.available("cuda") and not hashgrid_triton.available("cpu")
field = Field([0.0, 0.0, 0.0], 2.0, FieldConfig.for_preset("pocket"))
assert encode_backend(field.encoding, "cuda") == "torch"
density, albedo = field(torch.rand(100, 3) * 2 - 1)
(density.sum() + albedo.sum()).backward()
assert field.encoding.table.grad.abs().sum() > 0
field.encoding.backend = "triton"
try:
    field(torch.rand(10, 3))
except RuntimeError as e:
    assert "triton" in str(e), e
else:
    raise SystemExit("backend 'triton' ran without triton")
print("ok")
"""


def test_the_engine_works_without_triton():
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=subprocess_env(TRITON_INTERPRET="1"))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
