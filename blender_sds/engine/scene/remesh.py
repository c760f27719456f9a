"""The extracted surface -> a mesh an artist can edit: Taubin smoothing, then quadric decimation.

Marching cubes of a trained field gives a dense, uniform triangulation (hundreds of
thousands of faces at 256^3) that carries the optimisation's small bumps on surfaces
meant to be flat. `smooth` removes the bumps without shrinking the object; `decimate`
then brings the face count down to a budget, spending faces where the surface bends.
Both take and return plain arrays (vertices float32 (V,3), faces int32 (F,3)), keep the
winding, and return their input unchanged when there is nothing to do. Vertex colours
are not carried: the caller reads them from the field at the final vertices.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

# Taubin's filter (SIGGRAPH 1995, "A signal processing approach to fair surface design"):
# each step shrinks by LAMBDA, then inflates by MU > LAMBDA. Wavelengths longer than the
# pass band k_PB = 1/LAMBDA - 1/MU keep their size, shorter ones die out. k_PB = 0.01 is
# the low end of his 0.01 .. 0.1: the band just below k_PB is slightly amplified each step,
# which adds up over mesh.smooth's range. On a sphere 10 cells in radius, 1000 steps grow
# the volume 1.7% here; his 0.6307 / 0.6732 (k_PB 0.1) grew it 64%, and trimesh's default
# equal factors 0.5 / 0.5 (k_PB 0) shrank it 2%. LAMBDA 0.6 takes bumps 4 cells wide down
# nearly as fast as his 0.63 and faster than 0.5 (bumpiness x0.39 after 10 steps, x0.37, x0.47).
LAMBDA = 0.6
MU = 1.0 / (1.0 / LAMBDA - 0.01)
DECIMATE_SIZE = 200.0  # the object's largest side while it is decimated (see decimate)


def smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Vertices after `iterations` Taubin steps (one step = a shrink by LAMBDA, then an inflate by MU).

    Plain Laplacian smoothing flattens bumps but shrinks the whole object (a sphere loses
    volume every pass); Taubin's alternating inflate step gives the low frequencies (the
    shape) back while the high ones (bumps a few cells wide) still die out. The umbrella
    (equal-weight) operator suits marching-cubes meshes, whose edges are all about a cell
    long; that is why smoothing runs before decimation. Faces are unchanged.
    """
    vertices, faces = _check(vertices, faces)
    iterations = check_count(iterations, "iterations")
    if iterations == 0 or len(faces) == 0:
        return vertices
    import trimesh
    from trimesh.smoothing import filter_taubin

    mesh = trimesh.Trimesh(vertices=vertices.astype(np.float64), faces=faces, process=False)
    # trimesh counts single passes (shrink, inflate, shrink, ...): two per Taubin step.
    moved = np.asarray(filter_taubin(mesh, lamb=LAMBDA, nu=MU, iterations=2 * iterations).vertices)
    # A vertex no face uses has an empty neighbourhood (its Laplacian row is 0/0): it stays put.
    moved = np.where(np.isfinite(moved), moved, vertices)
    return np.ascontiguousarray(moved, dtype=np.float32)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) with at most `target_faces` faces, by quadric edge collapse.

    Garland-Heckbert quadrics (fast_simplification, a wrapper of sp4cerat's
    Fast-Quadric-Mesh-Simplification) collapse the edges whose removal moves the surface
    least, so flat regions lose their faces first and edges and corners keep theirs. 0, or
    a mesh already within the budget, returns the input. Vertices no face uses are dropped.
    """
    vertices, faces = _check(vertices, faces)
    target_faces = check_count(target_faces, "target_faces")
    if target_faces == 0 or len(faces) <= target_faces:
        return vertices, faces
    import fast_simplification

    # The collapse loop's error threshold grows on a fixed schedule (1e-9 (round + 3)^7), in
    # squared length units: on a small object every collapse is under it from the first
    # round and they go in arbitrary order, on a large one the last round stops short of
    # the target. Decimating in a frame where the object is DECIMATE_SIZE across makes it
    # scale-free (an 82k-face bumpy sphere to 5000 faces: mean error 0.0015 of its radius
    # at size 2, 0.0006 at 200; at 2e5 it stopped at 24788 faces).
    low, high = vertices.min(0).astype(np.float64), vertices.max(0).astype(np.float64)
    centre, scale = (low + high) / 2, DECIMATE_SIZE / max(float((high - low).max()), 1e-30)
    points, triangles = (vertices - centre) * scale, faces
    for _ in range(3):  # a pass can stop a few faces over; another on its result finishes
        points, triangles = fast_simplification.simplify(points, triangles, target_count=target_faces)
        if len(triangles) <= target_faces:
            break
    else:
        raise RuntimeError(f"decimation stopped at {len(triangles)} faces, over the budget of {target_faces}")
    used, triangles = np.unique(triangles, return_inverse=True)
    return (np.ascontiguousarray(points[used] / scale + centre, dtype=np.float32),
            np.ascontiguousarray(triangles.reshape(-1, 3), dtype=np.int32))


def _check(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"vertices must be (V,3) and faces (F,3), got {vertices.shape} and {faces.shape}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces index vertices 0 .. {len(vertices) - 1}, got {faces.min()} .. {faces.max()}")
    return vertices, faces


def check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)
