"""Benchmark (not a test): how long the importer takes to bring a 1M-triangle coloured mesh
into Blender. Run it with a Blender-side Python (target: under 1 s on a 2-core machine):

    .venv-bpy45/bin/python tests/addon/bench_import.py [--triangles 1000000] [--repeat 3] [--json]

It writes a grid mesh with per-vertex colours as a result folder (mesh.npz, as the engine
writes it) and times `importer.import_result` on it: reading the file, checking it, and
building the mesh, the `Col` attribute, the material and the object.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def grid_mesh(triangles: int):
    """A wavy (rows x cols) grid with about `triangles` triangles and smooth colours."""
    cols = int(math.sqrt(triangles / 2)) + 1
    rows = max(2, round(triangles / (2 * (cols - 1))) + 1)
    y, x = np.meshgrid(np.linspace(-1, 1, rows, dtype=np.float32), np.linspace(-1, 1, cols, dtype=np.float32),
                       indexing="ij")
    z = 0.1 * np.sin(6 * x) * np.cos(6 * y)
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float32)
    idx = np.arange(rows * cols, dtype=np.int32).reshape(rows, cols)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)]).astype(np.int32)
    colors = np.concatenate([(vertices + 1) / 2, np.ones((len(vertices), 1), np.float32)], axis=1)
    return vertices, faces, colors.astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triangles", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        import bpy
    except ImportError:
        print("bench_import: run this with a Python that has the bpy wheel, e.g. .venv-bpy45/bin/python "
              "(scripts/bpy_envs.sh creates it)", file=sys.stderr)
        return 2
    sys.path.insert(0, REPO)
    from blender_sds.addon import importer

    vertices, faces, colors = grid_mesh(args.triangles)
    with tempfile.TemporaryDirectory() as folder:
        np.savez(os.path.join(folder, "mesh.npz"), vertices=vertices, faces=faces, colors=colors)
        scene = bpy.context.scene
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            ob = importer.import_result(scene, bpy.context.view_layer, folder, name="bench")
            times.append(time.perf_counter() - start)
            me = ob.data
            assert len(me.polygons) == len(faces) and "Col" in me.color_attributes
            bpy.data.objects.remove(ob)
            bpy.data.meshes.remove(me)
    figures = {"blender": bpy.app.version_string, "triangles": int(len(faces)), "vertices": int(len(vertices)),
               "best_seconds": round(min(times), 4), "seconds": [round(t, 4) for t in times]}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"import of {figures['triangles']:,} triangles / {figures['vertices']:,} vertices "
              f"(Blender {figures['blender']}): best {figures['best_seconds']:.3f} s of {args.repeat} "
              f"({', '.join(f'{t:.3f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
