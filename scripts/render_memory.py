"""Host memory of one training render, forward and backward, per render point (CPU).

`python scripts/render_memory.py PRESET RESOLUTION SAMPLES` prints the growth of the
process's peak RSS over one lit render of a fresh field (every point evaluated, as in the
first steps, when the occupancy grid still holds every cell) divided by resolution^2 x
samples. engine/train/memory.py sizes its estimate from it (docs/PERFORMANCE.md).
"""
import resource
import sys

import torch

from blender_sds.engine.scene.cameras import fixed_views
from blender_sds.engine.scene.field import Field, FieldConfig
from blender_sds.engine.scene.renderer import render

preset, res, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
field = Field((0, 0, 0), 2.0, FieldConfig.for_preset(preset))
views = fixed_views((0, 0, 0), 2.0, [0.0], 15.0, res)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = render(field, views, samples, shading="lambertian", light=torch.tensor([[0.0, -3.0, 1.0]]),
             background=torch.ones(1, 3), want_orientation=True)
(out.image.sum() + sum(out.regularisers.values())).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
points = res * res * samples
print(f"{preset} {res} px x {samples} samples: {points} points, {(peak - base) * 1024 / points:.0f} bytes a point")
