"""The batch of cameras one optimisation step renders, as every engine part sees it.

Renderer and guidance share this one type so a guidance kind can ask which way a
camera looks (view-dependent prompts), which reference view it is (reference teacher)
and what solid background the render was composited on, without a side channel.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class ViewBatch:
    c2w: torch.Tensor  # (B, 4, 4) camera-to-world, OpenGL convention (-Z forward, +Y up)
    fx: torch.Tensor  # (B,) pixels, at this batch's width/height
    fy: torch.Tensor
    cx: torch.Tensor  # (B,) pixels, top-left origin, y down
    cy: torch.Tensor
    width: int
    height: int
    azimuth: torch.Tensor  # (B,) degrees around the bounds centre; 0 = Blender's Front view
    elevation: torch.Tensor  # (B,) degrees above the bounds centre's horizontal plane
    view_index: torch.Tensor | None = None  # (B,) long: index into the reference views, -1 elsewhere
    background: torch.Tensor | None = None  # (B, 3) sRGB solid background, when one was used

    @property
    def size(self) -> int:
        return self.c2w.shape[0]

    def with_background(self, background: torch.Tensor | None) -> "ViewBatch":
        return replace(self, background=background)

    def to(self, device: torch.device) -> "ViewBatch":
        def move(x):
            return None if x is None else x.to(device)
        return replace(self, c2w=move(self.c2w), fx=move(self.fx), fy=move(self.fy),
                       cx=move(self.cx), cy=move(self.cy), azimuth=move(self.azimuth),
                       elevation=move(self.elevation), view_index=move(self.view_index),
                       background=move(self.background))
