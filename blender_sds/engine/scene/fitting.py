"""Fitting a field to a known shape: Adam on density and albedo at random points of its box.

For measurements that need a field that looks trained (hash tables written by learning,
queries that cost what a real asset's do) without a diffusion model to train it: `bench
mesh` fits the engine's Field to an analytic solid. Seeded: two fits are the same numbers.
"""
from __future__ import annotations

import torch

from .field import Field


def fit_field(field: Field, density_fn, albedo_fn, *, steps: int, seed: int = 0, batch: int = 8192,
              lr: float = 0.02, density_scale: float = 1.0) -> Field:
    """`field` fitted in place to `density_fn` / `albedo_fn` (points (N,3) -> (N,) / (N,3)) for
    `steps` Adam steps, returned in eval mode. The density error is counted in units of
    `density_scale` (the target's own scale), so it weighs like the albedo's."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = field.center.device
    opt = torch.optim.Adam(field.parameter_groups(lr), betas=(0.9, 0.99), eps=1e-15)
    for _ in range(steps):
        points = ((torch.rand(batch, 3, generator=gen) - 0.5) * field.size).to(device) + field.center
        density, albedo = field(points)
        loss = ((density - density_fn(points)) / density_scale).pow(2).mean() + (albedo - albedo_fn(points)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return field.eval()
