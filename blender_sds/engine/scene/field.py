"""The 3D field SDS optimises: a multi-resolution hash grid feeding density and albedo heads.

Plain PyTorch (gather + trilinear weights), so it runs on CUDA, Apple MPS and the CPU
with nothing to compile. Coarse levels that fit the table are indexed densely (no
collisions), finer ones are spatially hashed, as in Instant-NGP. The density starts as
a blob in the middle of the bounds so the first renders show an object to sculpt.

Units: positions enter in world units and are normalised to the bounds; density is in
units of 1/bounds.size (opacity over a world length L is 1 - exp(-sigma L / size)), so
mesh thresholds do not depend on the scene's scale.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


PRIMES = (1, 2654435761, 805459861)
# Points per field query when nothing needs gradients (previews, occupancy, meshing): the
# encoding's working set is ~2 KB a point, so an unchunked 2-view preview took gigabytes.
NO_GRAD_CHUNK = 1 << 17
# Points per call above which the encoding keeps only positions and works in chunks of
# NO_GRAD_CHUNK (standard-preset calls stay below it and keep the faster path).
RECOMPUTE_ABOVE = 1 << 19


class _Encode(torch.autograd.Function):
    """Trilinear hash-grid lookup whose backward is one index_add_ into the table.

    The forward is one fused weighted gather (embedding_bag: 2-3x faster on the CPU than
    gather, multiply and sum, and one kernel instead of three on a GPU). Autograd's
    embedding backward is several times slower on the CPU, and neither the positions
    nor the interpolation weights need gradients (normals use finite differences), so
    only the table's gradient is formed.

    Corner indices and weights take ~1 KB a point (16 levels) and their working set
    twice that; for big calls (the high preset's lit steps pass millions of points) only
    the positions are kept, and forward and backward go chunk by chunk, recomputing the
    corners: the same gradient bit for bit, a bounded working set, ~1.5x the field time.
    """

    @staticmethod
    def forward(ctx, table, x, grid):  # x: (N,3) in [0,1] -> (N, L, F)
        ctx.grid, ctx.rows = grid, table.shape[0]
        ctx.recompute = x.shape[0] > grid.recompute_above
        if not ctx.recompute:
            index, weights = grid.corners(x)
            ctx.save_for_backward(index, weights)
            return _weighted_gather(table, index, weights)
        ctx.save_for_backward(x)
        out = torch.empty(x.shape[0], grid.levels, table.shape[1], dtype=table.dtype, device=x.device)
        for start in range(0, x.shape[0], grid.recompute_chunk):
            part = x[start:start + grid.recompute_chunk]
            out[start:start + len(part)] = _weighted_gather(table, *grid.corners(part))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad = torch.zeros(ctx.rows, grad_out.shape[-1], dtype=grad_out.dtype, device=grad_out.device)
        if not ctx.recompute:
            _scatter_grad(grad, *ctx.saved_tensors, grad_out)
            return grad, None, None
        (x,) = ctx.saved_tensors
        step = ctx.grid.recompute_chunk
        for start in range(0, x.shape[0], step):
            _scatter_grad(grad, *ctx.grid.corners(x[start:start + step]), grad_out[start:start + step])
        return grad, None, None


XY_SIDES = ((0, 0), (0, 1), (1, 0), (1, 1))  # a cell corner's low/high side in x and y; z varies fastest


def _weighted_gather(table, index, weights):
    """(N, L, F) features from level-major corners (HashGrid.corners); a transposed view."""
    levels, n, corners = index.shape
    out = F.embedding_bag(index.view(-1, corners), table, mode="sum",
                          per_sample_weights=weights.view(-1, corners).to(table.dtype))
    return out.view(levels, n, table.shape[1]).transpose(0, 1)


def _scatter_grad(grad, index, weights, grad_out):
    """grad_out (N, L, F) into the table's rows (index_add_ takes int64 rows: int32 ran 6x slower)."""
    contrib = (weights.unsqueeze(-1) * grad_out.transpose(0, 1).unsqueeze(2)).reshape(-1, grad_out.shape[-1])
    grad.index_add_(0, index.reshape(-1).long(), contrib)


@dataclass
class FieldConfig:
    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    hidden: int = 64
    blob_density: float = 10.0  # pre-activation bias at the centre (threestudio magic3d blob)
    blob_radius: float = 0.5  # where the bias crosses zero, in half-sizes of the bounds
    density_scale: float = 10.0

    @classmethod
    def for_preset(cls, preset: str) -> "FieldConfig":
        if preset == "pocket":  # 32 px renders resolve nothing finer; finer levels only hold noise
            return cls(levels=8, log2_table=17, max_resolution=128)
        if preset == "draft":
            return cls(levels=10, log2_table=17, max_resolution=256)
        if preset == "high":
            return cls(levels=16, log2_table=19, max_resolution=4096)
        return cls(levels=16, log2_table=19, max_resolution=2048)

    def to_dict(self) -> dict:
        return asdict(self)


class HashGrid(nn.Module):
    """Maps points in [0,1]^3 to concatenated per-level trilinear features."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.levels = cfg.levels
        self.features = cfg.features
        self.table_size = 2 ** cfg.log2_table
        growth = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / max(cfg.levels - 1, 1))
        resolutions, sizes, dense = [], [], []
        for level in range(cfg.levels):
            res = int(math.floor(cfg.base_resolution * growth ** level))
            cells = (res + 1) ** 3
            resolutions.append(res)
            dense.append(cells <= self.table_size)
            sizes.append(min(cells, self.table_size))
        self.resolutions = resolutions
        self.dense = dense
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.sizes = sizes
        self.offsets = offsets
        if offsets[-1] >= 2 ** 31:
            raise ValueError(f"a hash grid of {offsets[-1]} rows: corners index rows in int32, fewer than 2^31")
        self.table = nn.Parameter(torch.empty(offsets[-1], cfg.features).uniform_(-1e-4, 1e-4))
        # Per-level constants for the all-levels-at-once forward (none is saved in checkpoints).
        # A corner's index is built from one term per axis: dense levels add x + s*y + s^2*z
        # (s = res + 1), hashed levels xor x*1 ^ y*p1 ^ z*p2 masked to the power-of-two table,
        # which equals the hash's remainder; dense terms are below the table size, so one
        # mask serves every level.
        multipliers = [(1, r + 1, (r + 1) ** 2) if d else PRIMES for r, d in zip(resolutions, dense)]
        self.register_buffer("level_scale", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("level_last", torch.tensor([r - 1 for r in resolutions]), persistent=False)
        self.register_buffer("level_multipliers", torch.tensor(multipliers, dtype=torch.long), persistent=False)
        self.register_buffer("level_offsets", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.runs = _runs(dense)
        self.recompute_above = RECOMPUTE_ABOVE
        self.recompute_chunk = NO_GRAD_CHUNK
        # "auto": the fused Triton kernels on CUDA when triton imports, else the plain path;
        # "torch" / "triton" force one (the CPU runs "triton" only under TRITON_INTERPRET=1).
        self.backend = "auto"

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def corners(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows (int32) and trilinear weights of every point's 8 cell corners at every level,
        (L,N,8) each: level-major, corners x-major (z fastest).

        Level-major because every op then runs over one long row of points per level and
        corner, where a points-major (N,L,3,2) broadcast ran tiny inner loops of two, and
        each level's lookups stay within its own part of the table: on one CPU thread the
        corners took 0.55x the time and the gather 0.5x. Products and hashes are formed per
        axis in int64 (a prime times a coordinate overflows int32) and masked below the table
        size, which the rows' int32 holds. A fixed number of ops per run of dense or hashed
        levels, whatever the level count.
        """
        scaled = x.clamp(0.0, 1.0).t().unsqueeze(1) * self.level_scale.view(1, -1, 1)  # (3,L,N)
        base = torch.minimum(scaled.floor(), self.level_last.view(1, -1, 1).to(scaled.dtype))
        frac = scaled - base
        multipliers = self.level_multipliers.t().unsqueeze(-1)  # (3,L,1)
        low = base.long() * multipliers
        mask = self.table_size - 1
        ends = (torch.bitwise_and(low, mask).int(), torch.bitwise_and(low + multipliers, mask).int())
        offsets = self.level_offsets.int().view(-1, 1)
        index = torch.empty(8, self.levels, x.shape[0], dtype=torch.int32, device=x.device)
        for start, stop, dense in self.runs:
            at = slice(start, stop)
            for i, j in XY_SIDES:
                xy = ends[i][0, at] + ends[j][1, at] + offsets[at] if dense else ends[i][0, at] ^ ends[j][1, at]
                for k in (0, 1):
                    corner = index[i * 4 + j * 2 + k, at]
                    if dense:
                        torch.add(xy, ends[k][2, at], out=corner)
                    else:
                        torch.bitwise_xor(xy, ends[k][2, at], out=corner)
                        corner += offsets[at]
        sides = (1 - frac, frac)
        weights = torch.empty(8, self.levels, x.shape[0], dtype=x.dtype, device=x.device)
        for i, j in XY_SIDES:
            wxy = sides[i][0] * sides[j][1]
            for k in (0, 1):
                torch.mul(wxy, sides[k][2], out=weights[i * 4 + j * 2 + k])
        return index.permute(1, 2, 0).contiguous(), weights.permute(1, 2, 0).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if encode_backend(self, x.device) == "triton":
            from . import hashgrid_triton  # lazily: the engine imports without triton
            encoded = hashgrid_triton.TritonEncode.apply(self.table, x.detach(), self)
            return encoded.reshape(x.shape[0], self.out_dim)
        # One gather and one scatter for all levels: the table's gradient is zeroed once. The
        # width is named, not -1: a view that misses the bounds brings no points at all.
        return _Encode.apply(self.table, x.detach(), self).reshape(x.shape[0], self.out_dim)


def encode_backend(grid: HashGrid, device) -> str:
    """Which encoding a call of `grid` on `device` runs, "torch" or "triton" (benchmarks report it).

    "auto" takes Triton only on CUDA, so the CPU and MPS keep the plain path even where
    triton is installed; only an explicit "triton" uses the CPU interpreter.
    """
    if grid.backend not in ("auto", "torch", "triton"):
        raise ValueError(f"HashGrid.backend must be 'auto', 'torch' or 'triton', not {grid.backend!r}")
    if grid.backend != "auto":
        return grid.backend
    device = torch.device(device)
    if device.type != "cuda":
        return "torch"
    from . import hashgrid_triton
    return "triton" if hashgrid_triton.available(device) else "torch"


def _runs(flags: list[bool]) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal flags as (start, stop, flag): the dense levels, then the hashed ones."""
    runs = []
    for i, flag in enumerate(flags):
        if runs and runs[-1][2] == flag:
            runs[-1] = (runs[-1][0], i + 1, flag)
        else:
            runs.append((i, i + 1, flag))
    return runs


class Field(nn.Module):
    """Density (softplus, blob-initialised) and albedo (sRGB in [0,1]) over the bounds."""

    def __init__(self, center, size: float, cfg: FieldConfig | None = None):
        super().__init__()
        self.cfg = cfg or FieldConfig()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).clone())
        self.register_buffer("tetrahedron", torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]],
                                                         dtype=torch.float32), persistent=False)
        self.size = float(size)
        self.encoding = HashGrid(self.cfg)
        h = self.cfg.hidden
        self.density_head = nn.Sequential(nn.Linear(self.encoding.out_dim, h), nn.ReLU(), nn.Linear(h, 1))
        self.albedo_head = nn.Sequential(nn.Linear(self.encoding.out_dim, h), nn.ReLU(), nn.Linear(h, 3))
        # False while a run trains the shape alone (optim.shape_colour "frozen"): the albedo is
        # read but passes no gradient, to its head or through it to the shared encoding.
        self.colour_learns = True

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> [0,1]^3 over the bounds."""
        return (points - self.center) / self.size + 0.5

    def blob(self, unit: torch.Tensor) -> torch.Tensor:
        r = ((unit - 0.5) * 2).norm(dim=-1)  # 1 at the face centres of the bounds
        return self.cfg.blob_density * (1 - r / self.cfg.blob_radius)

    def forward(self, points: torch.Tensor, with_albedo: bool = True):
        if not torch.is_grad_enabled() and points.shape[0] > NO_GRAD_CHUNK:
            parts = [self.forward(chunk, with_albedo) for chunk in points.split(NO_GRAD_CHUNK)]
            density = torch.cat([d for d, _ in parts])
            return density, torch.cat([a for _, a in parts]) if with_albedo else None
        unit = self.normalise(points)
        enc = self.encoding(unit)
        raw = self.density_head(enc).squeeze(-1) + self.blob(unit)
        density = self.cfg.density_scale * F.softplus(raw)
        if not with_albedo:
            return density, None
        albedo = torch.sigmoid(self.albedo_head(enc))
        return density, albedo if self.colour_learns else albedo.detach()

    @torch.no_grad()
    def restart_colour(self) -> list[nn.Parameter]:
        """Albedo back to an even grey (0.5, the sigmoid of 0) everywhere; the shape and the
        shared encoding are kept. Returns the parameters reset, whose optimiser state is stale."""
        last = self.albedo_head[-1]
        last.weight.zero_()
        last.bias.zero_()
        return [last.weight, last.bias]

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward(points, with_albedo=False)[0]

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and points.shape[0] > NO_GRAD_CHUNK:
            return torch.cat([self.albedo(chunk) for chunk in points.split(NO_GRAD_CHUNK)])
        return torch.sigmoid(self.albedo_head(self.encoding(self.normalise(points))))

    def normals(self, points: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Outward unit normals, -grad(density), by a 4-tap tetrahedral finite difference."""
        eps = eps if eps is not None else 0.5 * self.size / self.cfg.max_resolution * 8
        k = self.tetrahedron.to(points.dtype)  # a buffer: a per-call host tensor would sync with the GPU
        probes = points.unsqueeze(1) + eps * k  # (N,4,3)
        d = self.density(probes.reshape(-1, 3)).view(-1, 4, 1)
        grad = (k * d).sum(1)
        return F.normalize(-grad, dim=-1)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Hash tables learn fast, the small MLPs ten times slower (threestudio's split)."""
        heads = list(self.density_head.parameters()) + list(self.albedo_head.parameters())
        return [{"params": [self.encoding.table], "lr": lr}, {"params": heads, "lr": lr / 10}]
