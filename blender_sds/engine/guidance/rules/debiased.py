"""Debiased SDS (Hong et al. 2023), its score half: SDS with an element-wise clamp that loosens over the run.

Early on, when the render is far from anything the judge has seen, the largest gradient
elements are the judge's bias (a face it expects on every side) more than the prompt; a
low clamp keeps them from writing the shape, and raising it linearly lets detail in later.
`guidance.grad_clip` sets the clamp (a number or a [start_step, start, end, end_step] ramp);
left out, it ramps from CLAMP[0] to CLAMP[1] over the whole run, threestudio's README
values over its whole 10k-step run. The paper's prompt half (dropping words a BERT model
links to a view) needs that model's weights, which this project never downloads: not done.
"""
from __future__ import annotations

from .base import schedule_value
from .sds import SDS

CLAMP = (0.5, 2.0)


class DebiasedSDS(SDS):
    def clip_at(self, step: int, total_steps: int) -> float | None:
        if self.settings.grad_clip is not None:
            return schedule_value(self.settings.grad_clip, step)
        return schedule_value([0, CLAMP[0], CLAMP[1], max(total_steps - 1, 1)], step)
