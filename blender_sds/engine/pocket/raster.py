"""A small z-buffer rasteriser for triangle meshes, so results can be judged from the same views as the truth.

Triangles are enumerated against the pixel centres in their screen bounding box (at most
TILE x TILE pixels: bigger triangles are split in four until they fit), barycentrics
come from edge functions and are made perspective-correct, and the nearest candidate per
pixel wins through a scatter-min on depth. No anti-aliasing: one sample per pixel
centre, like the analytic renderer with supersample=1.
"""
from __future__ import annotations

import torch

TILE = 4


def _split(corners: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each triangle (T,3,*) into four by its edge midpoints (positions and attributes alike)."""
    def four(x):
        a, b, c = x[:, 0], x[:, 1], x[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        return torch.cat((torch.stack((a, ab, ca), 1), torch.stack((ab, b, bc), 1),
                          torch.stack((ca, bc, c), 1), torch.stack((ab, bc, ca), 1)))
    return four(corners), four(attrs)


def rasterise(vertices: torch.Tensor, faces: torch.Tensor, attributes: torch.Tensor, c2w: torch.Tensor,
              focal: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one view: returns coverage (size,size) bool and interpolated attributes (size,size,C).

    vertices (V,3) and the camera c2w (4,4) in the same frame; a square image of `size`
    pixels with focal length `focal` pixels and a centred principal point.
    """
    dtype = torch.float64
    v = vertices.to(dtype)
    rot, eye = c2w[:3, :3].to(dtype), c2w[:3, 3].to(dtype)
    cam = (v - eye) @ rot  # camera coordinates (rows times R = R^T p)
    corners = cam[faces.long()]  # (T,3,3)
    attrs = attributes.to(dtype)[faces.long()]  # (T,3,C)
    keep = (corners[..., 2] < -1e-6).all(dim=1)  # in front of the camera
    corners, attrs = corners[keep], attrs[keep]
    cover = torch.zeros(size * size, dtype=torch.bool)
    out = torch.zeros(size * size, attributes.shape[1], dtype=dtype)
    zbuf = torch.full((size * size,), float("inf"), dtype=dtype)
    half = size / 2
    pending = [(corners, attrs)]
    winners = []
    while pending:
        corners, attrs = pending.pop()
        if len(corners) == 0:
            continue
        depth = -corners[..., 2]  # (T,3) > 0
        u = half + focal * corners[..., 0] / depth
        w = half - focal * corners[..., 1] / depth
        # Pixel (i, j) has its centre at (j + 0.5, i + 0.5).
        col0 = torch.ceil(u.min(1).values - 0.5).clamp(0, size - 1)
        col1 = torch.floor(u.max(1).values - 0.5).clamp(-1, size - 1)
        row0 = torch.ceil(w.min(1).values - 0.5).clamp(0, size - 1)
        row1 = torch.floor(w.max(1).values - 0.5).clamp(-1, size - 1)
        visible = (col1 >= col0) & (row1 >= row0) & (u.max(1).values > -0.5) & (w.max(1).values > -0.5) \
            & (u.min(1).values < size + 0.5) & (w.min(1).values < size + 0.5)
        big = visible & (((col1 - col0) >= TILE) | ((row1 - row0) >= TILE))
        if big.any():
            pending.append(_split(corners[big], attrs[big]))
        small = visible & ~big
        if small.any():
            winners.append(_candidates(u[small], w[small], depth[small], attrs[small], col0[small], row0[small],
                                       col1[small], row1[small], size))
    if not winners:
        return cover.view(size, size), out.view(size, size, -1)
    pix = torch.cat([c[0] for c in winners])
    z = torch.cat([c[1] for c in winners])
    val = torch.cat([c[2] for c in winners])
    zbuf.scatter_reduce_(0, pix, z, reduce="amin")
    best = z <= zbuf[pix]
    out[pix[best]] = val[best]
    cover[pix[best]] = True
    return cover.view(size, size), out.view(size, size, -1)


def _candidates(u, w, depth, attrs, col0, row0, col1, row1, size):
    """Pixel centres inside each small triangle: flat pixel index, depth, attributes."""
    offsets = torch.arange(TILE, dtype=u.dtype)
    cols = col0[:, None, None] + offsets[None, None, :]  # (T,1,K)
    rows = row0[:, None, None] + offsets[None, :, None]  # (T,K,1)
    cols, rows = torch.broadcast_tensors(cols, rows)
    in_box = (cols <= col1[:, None, None]) & (rows <= row1[:, None, None])
    px, py = cols + 0.5, rows + 0.5
    (u0, u1, u2), (w0, w1, w2) = u.unbind(1), w.unbind(1)

    def edge(ax, ay, bx, by):
        return (bx[:, None, None] - ax[:, None, None]) * (py - ay[:, None, None]) - \
            (by[:, None, None] - ay[:, None, None]) * (px - ax[:, None, None])

    area = ((u1 - u0) * (w2 - w0) - (w1 - w0) * (u2 - u0))[:, None, None]
    safe = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    b0 = edge(u1, w1, u2, w2) / safe
    b1 = edge(u2, w2, u0, w0) / safe
    b2 = edge(u0, w0, u1, w1) / safe
    tol = -1e-9
    inside = in_box & (b0 >= tol) & (b1 >= tol) & (b2 >= tol) & (area.abs() > 1e-12)
    # Perspective-correct weights: screen barycentrics over depth, renormalised.
    p0, p1, p2 = b0 / depth[:, 0, None, None], b1 / depth[:, 1, None, None], b2 / depth[:, 2, None, None]
    norm = p0 + p1 + p2
    z = 1 / norm
    weights = torch.stack((p0, p1, p2), -1) / norm[..., None]  # (T,K,K,3)
    values = torch.einsum("tijk,tkc->tijc", weights, attrs)
    idx = inside.nonzero(as_tuple=True)
    pix = (rows[idx] * size + cols[idx]).long()
    return pix, z[idx], values[idx]
