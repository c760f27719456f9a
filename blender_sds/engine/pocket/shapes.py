"""The pocket world's primitives, in closed form: exact ray hits, an inside test, exact surface samples.

Everything here lives in *unit* coordinates: the bounds box is centred on the origin with
edge 1 (so it spans [-0.5, 0.5] on each axis) and Z is up, like Blender. Every shape is
centred on the origin and stays within [-EXTENT, EXTENT]^3, the middle 84% of the box: an
asset fills its bounds, and the engine's default cameras (1.5-2.0 bounds sizes away) then
see it as large as DreamFusion's cameras see its objects. The world maps unit coordinates
to a job's bounds as `center + size * p`.

The renderer must not share code with the engine's volume renderer (it is the truth the
engine is measured against), so each shape intersects rays analytically: a quadratic for
sphere, cylinder and cone, half-spaces for the polyhedra, and sphere tracing of the exact
signed distance for the torus, its grazing rays finished by the roots of its quartic.
"""
from __future__ import annotations

import math

import torch

MISS = float("inf")
EXTENT = 0.42  # every shape lies within [-EXTENT, EXTENT]^3


class Shape:
    """One primitive: `intersect` rays, tell `inside` points, `sample` its surface uniformly by area."""

    name = ""

    def intersect(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First hit of rays (N,3) with unit (N,3) directions: t (N,) (inf on a miss), outward normal (N,3)."""
        raise NotImplementedError

    def level(self, points: torch.Tensor) -> torch.Tensor:
        """A function of points (N,3), negative inside, zero exactly on the surface (not always a distance)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n points (n,3) float64 uniformly distributed over the surface area."""
        raise NotImplementedError

    def area(self) -> float:
        raise NotImplementedError

    def surface_normals(self, points: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Outward unit normals (N,3) at surface points: the level's gradient by central differences.

        One rule for every shape, so samples and meshes get their normals without a
        per-shape formula; on an edge (measure zero) it is a blend of the faces' normals.
        """
        p = points.double()
        steps = eps * torch.eye(3, dtype=torch.float64)
        grad = torch.stack([self.level(p + s) - self.level(p - s) for s in steps], -1)
        return _normalise(grad)


# -- helpers ---------------------------------------------------------------------------------

def _first_hit(candidates: list[tuple[torch.Tensor, torch.Tensor]], n: int, like: torch.Tensor):
    """The nearest valid (t > 0, finite) of several candidate hits per ray."""
    t_best = torch.full((n,), MISS, dtype=like.dtype, device=like.device)
    n_best = torch.zeros((n, 3), dtype=like.dtype, device=like.device)
    for t, normal in candidates:
        t = torch.where(torch.isfinite(t) & (t > 0), t, torch.full_like(t, MISS))
        closer = t < t_best
        t_best = torch.where(closer, t, t_best)
        n_best = torch.where(closer[:, None], normal, n_best)
    return t_best, n_best


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _uniform(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _sample_triangles(corners: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform samples over triangles (T,3,3) by area."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    areas = 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=-1)
    which = torch.multinomial(areas, n, replacement=True, generator=generator)
    u, v = _uniform(n, generator), _uniform(n, generator)
    flip = u + v > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    return a[which] + u[:, None] * (b - a)[which] + v[:, None] * (c - a)[which]


def _choose_parts(areas: list[float], n: int, generator: torch.Generator) -> list[int]:
    """How many of n samples fall on each part, drawn in proportion to the parts' areas."""
    which = torch.multinomial(torch.tensor(areas, dtype=torch.float64), n, replacement=True, generator=generator)
    return [int((which == k).sum()) for k in range(len(areas))]


def _disc(n: int, radius: float, z: float, generator: torch.Generator) -> torch.Tensor:
    r = radius * _uniform(n, generator).sqrt()
    theta = 2 * math.pi * _uniform(n, generator)
    return torch.stack((r * theta.cos(), r * theta.sin(), torch.full_like(r, z)), dim=-1)


# -- the shapes ------------------------------------------------------------------------------

class Sphere(Shape):
    name = "sphere"

    def __init__(self, radius: float = EXTENT):
        self.radius = radius

    def intersect(self, origins, dirs):
        b = (origins * dirs).sum(-1)
        c = (origins * origins).sum(-1) - self.radius**2
        disc = b * b - c
        t = -b - disc.clamp_min(0).sqrt()
        t = torch.where(disc >= 0, t, torch.full_like(t, MISS))
        normal = _normalise(origins + t.clamp_max(1e6)[:, None] * dirs)
        return _first_hit([(t, normal)], len(t), origins)

    def level(self, points):
        return points.norm(dim=-1) - self.radius

    def sample(self, n, generator):
        g = torch.randn(n, 3, generator=generator, dtype=torch.float64)
        return self.radius * _normalise(g)

    def area(self):
        return 4 * math.pi * self.radius**2


class Polyhedron(Shape):
    """A convex polyhedron as half-spaces n_k . p <= h_k (Kay-Kajiya slabs), plus its faces for sampling."""

    def __init__(self, normals: torch.Tensor, offsets: torch.Tensor, triangles: torch.Tensor):
        self.normals = _normalise(normals.double())
        self.offsets = offsets.double() / normals.double().norm(dim=-1)
        self.triangles = triangles.double()  # (T,3,3) the boundary, for sampling and area

    def intersect(self, origins, dirs):
        normals = self.normals.to(origins)
        offsets = self.offsets.to(origins)
        denom = dirs @ normals.T  # (N,K)
        num = offsets[None, :] - origins @ normals.T
        safe = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
        t_plane = num / safe
        entering = denom < 0
        t_in = torch.where(entering, t_plane, torch.full_like(t_plane, -MISS))
        t_out = torch.where(denom > 0, t_plane, torch.full_like(t_plane, MISS))
        parallel_outside = (denom.abs() < 1e-12) & (num < 0)
        t_near, face = t_in.max(dim=-1)
        t_far = t_out.min(dim=-1).values
        hit = (t_near <= t_far) & ~parallel_outside.any(dim=-1) & (t_near > 0)
        t = torch.where(hit, t_near, torch.full_like(t_near, MISS))
        return _first_hit([(t, normals[face])], len(t), origins)

    def level(self, points):
        return (points.double() @ self.normals.T - self.offsets).max(dim=-1).values.to(points.dtype)

    def sample(self, n, generator):
        return _sample_triangles(self.triangles, n, generator)

    def area(self):
        t = self.triangles
        return float(0.5 * torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]).norm(dim=-1).sum())


def _quads_to_triangles(quads: list[list[tuple[float, float, float]]]) -> torch.Tensor:
    tris = []
    for q in quads:
        tris.append([q[0], q[1], q[2]])
        if len(q) == 4:
            tris.append([q[0], q[2], q[3]])
    return torch.tensor(tris, dtype=torch.float64)


class Cube(Polyhedron):
    name = "cube"

    def __init__(self, half: float = EXTENT * 5 / 6):
        self.half = half
        normals = torch.cat((torch.eye(3), -torch.eye(3))).double()
        quads = []
        for axis in range(3):
            for sign in (1.0, -1.0):
                u, v = (axis + 1) % 3, (axis + 2) % 3
                corners = []
                for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                    p = [0.0, 0.0, 0.0]
                    p[axis], p[u], p[v] = sign * half, a * half, b * half
                    corners.append(tuple(p))
                quads.append(corners)
        super().__init__(normals, torch.full((6,), half, dtype=torch.float64), _quads_to_triangles(quads))


class Pyramid(Polyhedron):
    """A square pyramid: base (side 2*half) at z = -height/2, apex at z = +height/2."""

    name = "pyramid"

    def __init__(self, half: float = EXTENT * 14 / 15, height: float = 2 * EXTENT):
        self.half, self.height = half, height
        h = height / 2
        normals, offsets = [[0.0, 0.0, -1.0]], [h]
        for nx, ny in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            # The side plane holds the base edge (half along its normal, z = -h) and the apex (0,0,h).
            normal = [nx * height, ny * height, half]
            normals.append(normal)
            offsets.append(normal[2] * h)  # n . apex
        apex = (0.0, 0.0, h)
        base = [(-half, -half, -h), (half, -half, -h), (half, half, -h), (-half, half, -h)]
        faces = [[base[0], base[3], base[2], base[1]]]
        faces += [[base[k], base[(k + 1) % 4], apex] for k in range(4)]
        super().__init__(torch.tensor(normals, dtype=torch.float64), torch.tensor(offsets, dtype=torch.float64),
                         _quads_to_triangles(faces))


class Cylinder(Shape):
    """Axis along Z, capped at z = +-half_height."""

    name = "cylinder"

    def __init__(self, radius: float = EXTENT * 5 / 6, half_height: float = EXTENT):
        self.radius, self.half_height = radius, half_height

    def intersect(self, origins, dirs):
        o, d = origins, dirs
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - self.radius**2
        disc = b * b - a * c
        t_side = (-b - disc.clamp_min(0).sqrt()) / a.clamp_min(1e-12)
        z = o[:, 2] + t_side * d[:, 2]
        t_side = torch.where((disc >= 0) & (a > 1e-12) & (z.abs() <= self.half_height), t_side,
                             torch.full_like(t_side, MISS))
        p = o + t_side.clamp_max(1e6)[:, None] * d
        n_side = _normalise(torch.stack((p[:, 0], p[:, 1], torch.zeros_like(p[:, 0])), -1))
        candidates = [(t_side, n_side)]
        for sign in (1.0, -1.0):
            t_cap = (sign * self.half_height - o[:, 2]) / torch.where(d[:, 2].abs() < 1e-12,
                                                                       torch.full_like(d[:, 2], 1e-12), d[:, 2])
            q = o + t_cap.clamp(-1e6, 1e6)[:, None] * d
            inside = q[:, 0] ** 2 + q[:, 1] ** 2 <= self.radius**2
            t_cap = torch.where(inside, t_cap, torch.full_like(t_cap, MISS))
            n_cap = torch.zeros_like(o)
            n_cap[:, 2] = sign
            candidates.append((t_cap, n_cap))
        return _first_hit(candidates, len(a), origins)

    def level(self, points):
        radial = points[:, :2].norm(dim=-1) - self.radius
        axial = points[:, 2].abs() - self.half_height
        return torch.maximum(radial, axial)

    def sample(self, n, generator):
        r, h = self.radius, self.half_height
        counts = _choose_parts([2 * math.pi * r * 2 * h, math.pi * r * r, math.pi * r * r], n, generator)
        theta = 2 * math.pi * _uniform(counts[0], generator)
        z = h * (2 * _uniform(counts[0], generator) - 1)
        side = torch.stack((r * theta.cos(), r * theta.sin(), z), -1)
        return torch.cat((side, _disc(counts[1], r, h, generator), _disc(counts[2], r, -h, generator)))

    def area(self):
        return 2 * math.pi * self.radius * 2 * self.half_height + 2 * math.pi * self.radius**2


class Cone(Shape):
    """Base (radius `radius`) at z = -half_height, apex at z = +half_height."""

    name = "cone"

    def __init__(self, radius: float = EXTENT, half_height: float = EXTENT):
        self.radius, self.half_height = radius, half_height
        self.k = radius / (2 * half_height)  # radius lost per unit of height

    def intersect(self, origins, dirs):
        o, d, h, k2 = origins, dirs, self.half_height, self.k**2
        # Radius at height z is k (h - z); solve x^2 + y^2 = k^2 (h - z)^2 on the ray.
        w_o, w_d = h - o[:, 2], -d[:, 2]
        a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * w_d**2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] - k2 * w_o * w_d
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * w_o**2
        disc = b * b - a * c
        root = disc.clamp_min(0).sqrt()
        safe_a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
        candidates = []
        for t in ((-b - root) / safe_a, (-b + root) / safe_a):
            z = o[:, 2] + t * d[:, 2]
            valid = (disc >= 0) & (a.abs() >= 1e-12) & (z >= -h) & (z <= h)
            t = torch.where(valid, t, torch.full_like(t, MISS))
            p = o + t.clamp_max(1e6)[:, None] * d
            normal = _normalise(torch.stack((p[:, 0], p[:, 1], k2 * (h - p[:, 2])), -1))
            candidates.append((t, normal))
        t_base = (-h - o[:, 2]) / torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        q = o + t_base.clamp(-1e6, 1e6)[:, None] * d
        t_base = torch.where(q[:, 0] ** 2 + q[:, 1] ** 2 <= self.radius**2, t_base, torch.full_like(t_base, MISS))
        n_base = torch.zeros_like(o)
        n_base[:, 2] = -1
        candidates.append((t_base, n_base))
        return _first_hit(candidates, len(a), origins)

    def level(self, points):
        h = self.half_height
        radial = points[:, :2].norm(dim=-1) - self.k * (h - points[:, 2])
        # Scale the slanted side's excess to a distance so the two parts are comparable.
        slant = radial / math.sqrt(1 + self.k**2)
        return torch.maximum(slant, torch.maximum(points[:, 2] - h, -h - points[:, 2]))

    def sample(self, n, generator):
        r, h = self.radius, self.half_height
        slant = math.hypot(r, 2 * h)
        counts = _choose_parts([math.pi * r * slant, math.pi * r * r], n, generator)
        u = _uniform(counts[0], generator).sqrt()  # fraction of the way from apex to base, area-uniform
        theta = 2 * math.pi * _uniform(counts[0], generator)
        side = torch.stack((r * u * theta.cos(), r * u * theta.sin(), h - 2 * h * u), -1)
        return torch.cat((side, _disc(counts[1], r, -h, generator)))

    def area(self):
        return math.pi * self.radius * math.hypot(self.radius, 2 * self.half_height) + math.pi * self.radius**2


class Torus(Shape):
    """Lying flat: the ring's axis is Z; `major` is the ring radius, `minor` the tube radius."""

    name = "torus"
    TRACE_STEPS = 24  # dense steps before the quartic takes the grazing rays
    HIT_EPSILON = 1e-5

    def __init__(self, major: float = EXTENT * 11 / 15, minor: float = EXTENT * 4 / 15):
        self.major, self.minor = major, minor

    def level(self, points):
        ring = points[:, :2].norm(dim=-1) - self.major
        return torch.stack((ring, points[:, 2]), -1).norm(dim=-1) - self.minor

    def intersect(self, origins, dirs):
        # Sphere-trace the exact distance from the bounding sphere for a few steps, all rays at once:
        # most rays hit or leave in that many. The few left graze the tube, where tracing crawls
        # (it once took ~185 steps a render, most of a pose-matched teacher's call), so they take
        # their first root of the quartic instead.
        radius = self.major + self.minor
        b = (origins * dirs).sum(-1)
        c = (origins * origins).sum(-1) - radius**2
        disc = b * b - c
        t_far = -b + disc.clamp_min(0).sqrt()
        live = (disc > 0).nonzero().squeeze(-1)
        o, d, far = origins[live], dirs[live], t_far[live]
        tt = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)[live]
        dist = torch.zeros_like(tt)
        for _ in range(self.TRACE_STEPS):  # exact distance: a step never passes the first hit
            dist = self.level(o + tt[:, None] * d)
            tt = torch.where(tt <= far, tt + dist, tt)
        hit, left = dist < self.HIT_EPSILON, tt > far
        grazing = ~hit & ~left
        if grazing.any():
            tt[grazing], hit[grazing] = self.first_root(o[grazing], d[grazing], tt[grazing], far[grazing])
        t = torch.full_like(b, MISS)
        t[live[hit]] = tt[hit]
        p = origins + t.clamp_max(1e6)[:, None] * dirs
        ring = _normalise(torch.stack((p[:, 0], p[:, 1], torch.zeros_like(p[:, 0])), -1)) * self.major
        return _first_hit([(t, _normalise(p - ring))], len(t), origins)

    def first_root(self, o, d, start, far):
        """(t, hit) of the first point of the surface on each ray at or past `start` (a lower bound
        of its first hit) and before `far`: the roots of the torus's quartic along the ray, taken
        from `start` for conditioning, as eigenvalues of its companion matrix in float64, then
        polished by Newton. A tangent ray's double root splits into a complex pair; its real part
        is still the ray's closest approach, which counts as a hit within HIT_EPSILON, as tracing
        counted it."""
        o = (o + start[:, None] * d).double()
        d = d.double()
        R2, r2 = self.major**2, self.minor**2
        dd, bb, k = (d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) + R2 - r2
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        bxy = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        cxy = o[:, 0] ** 2 + o[:, 1] ** 2
        # (dd s^2 + 2 bb s + k)^2 = 4 R^2 (a s^2 + 2 bxy s + cxy), s = t - start
        coeffs = torch.stack((4 * dd * bb, 4 * bb**2 + 2 * dd * k - 4 * R2 * a, 4 * bb * k - 8 * R2 * bxy,
                              k**2 - 4 * R2 * cxy), -1) / (dd**2)[:, None]
        companion = torch.zeros(len(o), 4, 4, dtype=torch.float64, device=o.device)
        companion[:, 0, :] = -coeffs
        companion[:, 1:, :3] = torch.eye(3, dtype=torch.float64, device=o.device)
        s = torch.linalg.eigvals(companion).real  # (N, 4)
        c3, c2, c1, c0 = coeffs[:, :1], coeffs[:, 1:2], coeffs[:, 2:3], coeffs[:, 3:]
        for _ in range(2):  # Newton on the monic quartic, where its slope allows
            value = s**4 + c3 * s**3 + c2 * s**2 + c1 * s + c0
            slope = 4 * s**3 + 3 * c3 * s**2 + 2 * c2 * s + c1
            steep = slope.abs() > 1e-12
            s = torch.where(steep, s - value / torch.where(steep, slope, torch.ones_like(slope)), s)
        on = self.level((o[:, None, :] + s[..., None] * d[:, None, :]).reshape(-1, 3)).view(s.shape).abs()
        valid = (s >= -self.HIT_EPSILON) & (s + start[:, None] <= far[:, None]) & (on < self.HIT_EPSILON)
        first = torch.where(valid, s, torch.full_like(s, MISS)).min(-1).values
        hit = torch.isfinite(first)
        return start + torch.where(hit, first.clamp_min(0), torch.zeros_like(first)).to(start.dtype), hit

    def sample(self, n, generator):
        # Area element (R + r cos phi) dphi dtheta: rejection-sample phi.
        R, r = self.major, self.minor
        out = []
        need = n
        while need > 0:
            phi = 2 * math.pi * _uniform(2 * need + 16, generator)
            keep = _uniform(len(phi), generator) * (R + r) <= R + r * phi.cos()
            out.append(phi[keep][:need])
            need -= len(out[-1])
        phi = torch.cat(out)
        theta = 2 * math.pi * _uniform(n, generator)
        rho = R + r * phi.cos()
        return torch.stack((rho * theta.cos(), rho * theta.sin(), r * phi.sin()), -1)

    def area(self):
        return 4 * math.pi**2 * self.major * self.minor


SHAPES: dict[str, Shape] = {s.name: s for s in (Sphere(), Cube(), Cylinder(), Cone(), Torus(), Pyramid())}
