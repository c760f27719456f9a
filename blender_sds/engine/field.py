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


class _Gather(torch.autograd.Function):
    """Trilinear gather from the table whose backward is one index_add_.

    Autograd's embedding backward is several times slower on the CPU, and neither the
    indices nor the interpolation weights need gradients (normals use finite
    differences), so only the table's gradient is formed.
    """

    @staticmethod
    def forward(ctx, table, index, weights):  # index, weights: (N, L, 8) -> (N, L, F)
        ctx.save_for_backward(index, weights)
        ctx.rows = table.shape[0]
        feats = table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])
        return (feats * weights.unsqueeze(-1)).sum(2)

    @staticmethod
    def backward(ctx, grad_out):
        index, weights = ctx.saved_tensors
        contrib = (weights.unsqueeze(-1) * grad_out.unsqueeze(2)).reshape(-1, grad_out.shape[-1])
        grad = torch.zeros(ctx.rows, grad_out.shape[-1], dtype=grad_out.dtype, device=grad_out.device)
        grad.index_add_(0, index.reshape(-1), contrib)
        return grad, None, None


def trilinear_weights(frac: torch.Tensor) -> torch.Tensor:
    """(N,3) cell fractions -> (N,8) corner weights, corners ordered x-major as in HashGrid.corners."""
    wx, wy, wz = (torch.stack([1 - frac[:, i], frac[:, i]], -1) for i in range(3))
    return (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).reshape(-1, 8)


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
        self.table = nn.Parameter(torch.empty(offsets[-1], cfg.features).uniform_(-1e-4, 1e-4))
        corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES, dtype=torch.long), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0.0, 1.0)
        indices, weights = [], []
        for level, res in enumerate(self.resolutions):
            scaled = x * res
            base = scaled.floor().long().clamp(max=res - 1)
            frac = scaled - base
            grid = base.unsqueeze(1) + self.corners  # (N,8,3)
            if self.dense[level]:
                stride = res + 1
                index = grid[..., 0] + stride * (grid[..., 1] + stride * grid[..., 2])
            else:
                h = grid * self.primes
                index = torch.bitwise_xor(torch.bitwise_xor(h[..., 0], h[..., 1]), h[..., 2])
                index = torch.remainder(index, self.sizes[level])
            indices.append(index + self.offsets[level])
            weights.append(trilinear_weights(frac))
        # One gather and one scatter for all levels: the table's gradient is zeroed once.
        out = _Gather.apply(self.table, torch.stack(indices, 1), torch.stack(weights, 1))
        return out.reshape(x.shape[0], -1)


class Field(nn.Module):
    """Density (softplus, blob-initialised) and albedo (sRGB in [0,1]) over the bounds."""

    def __init__(self, center, size: float, cfg: FieldConfig | None = None):
        super().__init__()
        self.cfg = cfg or FieldConfig()
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).clone())
        self.size = float(size)
        self.encoding = HashGrid(self.cfg)
        h = self.cfg.hidden
        self.density_head = nn.Sequential(nn.Linear(self.encoding.out_dim, h), nn.ReLU(), nn.Linear(h, 1))
        self.albedo_head = nn.Sequential(nn.Linear(self.encoding.out_dim, h), nn.ReLU(), nn.Linear(h, 3))

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> [0,1]^3 over the bounds."""
        return (points - self.center) / self.size + 0.5

    def blob(self, unit: torch.Tensor) -> torch.Tensor:
        r = ((unit - 0.5) * 2).norm(dim=-1)  # 1 at the face centres of the bounds
        return self.cfg.blob_density * (1 - r / self.cfg.blob_radius)

    def forward(self, points: torch.Tensor, with_albedo: bool = True):
        unit = self.normalise(points)
        enc = self.encoding(unit)
        raw = self.density_head(enc).squeeze(-1) + self.blob(unit)
        density = self.cfg.density_scale * F.softplus(raw)
        if not with_albedo:
            return density, None
        return density, torch.sigmoid(self.albedo_head(enc))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.forward(points, with_albedo=False)[0]

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.albedo_head(self.encoding(self.normalise(points))))

    def normals(self, points: torch.Tensor, eps: float | None = None) -> torch.Tensor:
        """Outward unit normals, -grad(density), by a 4-tap tetrahedral finite difference."""
        eps = eps if eps is not None else 0.5 * self.size / self.cfg.max_resolution * 8
        k = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=points.dtype,
                         device=points.device)
        probes = points.unsqueeze(1) + eps * k  # (N,4,3)
        d = self.density(probes.reshape(-1, 3)).view(-1, 4, 1)
        grad = (k * d).sum(1)
        return F.normalize(-grad, dim=-1)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Hash tables learn fast, the small MLPs ten times slower (threestudio's split)."""
        heads = list(self.density_head.parameters()) + list(self.albedo_head.parameters())
        return [{"params": [self.encoding.table], "lr": lr}, {"params": heads, "lr": lr / 10}]
