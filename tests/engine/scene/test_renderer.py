"""Deferred shading: a lit render of an opaque sphere against the analytic shading of that
sphere, and one normal per ray, however many samples a ray has."""
import math

import torch

from blender_sds.engine.scene.cameras import angles_of, look_at, ray_bundle
from blender_sds.engine.scene.field import Field, FieldConfig
from blender_sds.engine.scene.renderer import AMBIENT, DIFFUSE, SHADINGS, Background, render
from blender_sds.engine.scene.views import ViewBatch

SIZE = 2.0
RADIUS = 0.46  # where the blob (blob_radius 0.5, bias -20) turns opaque: r = 0.475 less a sample or so


class CountingField(Field):
    """The real field, remembering how many points each normals call was asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.normal_points = []

    def normals(self, points, eps=None):
        self.normal_points.append(points.shape[0])
        return super().normals(points, eps)


def opaque_sphere() -> CountingField:
    torch.manual_seed(0)
    field = CountingField((0.0, 0.0, 0.0), SIZE, FieldConfig(levels=4, log2_table=12, max_resolution=2048,
                                                            blob_density=400.0))
    with torch.no_grad():  # a radially symmetric density: the table and the head's output weights at zero
        field.encoding.table.zero_()
        field.density_head[-1].weight.zero_()
        field.density_head[-1].bias.fill_(-20.0)  # no density outside the blob
    return field


def front_view(res: int = 48, distance: float = 3.0) -> ViewBatch:
    eye = torch.tensor([[0.4, -distance, 0.6]])
    c2w = look_at(eye, torch.zeros(1, 3))
    focal = torch.tensor([res / (2 * math.tan(math.radians(12)))])
    half = torch.tensor([res / 2])
    azimuth, elevation = angles_of(c2w, torch.zeros(3))
    return ViewBatch(c2w=c2w, fx=focal, fy=focal, cx=half, cy=half, width=res, height=res,
                     azimuth=azimuth, elevation=elevation)


def analytic_shading(views: ViewBatch, light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel: whether its ray hits the sphere well inside the silhouette, and the lit value there."""
    origins, dirs = ray_bundle(views)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    b = (o * d).sum(-1)
    disc = b ** 2 - ((o * o).sum(-1) - RADIUS ** 2)
    t = -b - disc.clamp(min=0).sqrt()
    hit = o + t.unsqueeze(-1) * d
    normal = torch.nn.functional.normalize(hit, dim=-1)
    to_light = torch.nn.functional.normalize(light[0] - hit, dim=-1)
    lit = AMBIENT + DIFFUSE * (normal * to_light).sum(-1).clamp(min=0)
    inside = disc > (0.2 * RADIUS) ** 2  # away from the silhouette, where the shell is thin
    return inside, lit


def test_lit_sphere_matches_analytic_shading_with_one_normal_per_ray():
    field, views = opaque_sphere(), front_view()
    light = torch.tensor([[2.5, -1.0, 2.0]])  # off the camera axis: the terminator crosses the sphere
    samples = 96
    with torch.no_grad():
        out = render(field, views, samples, shading="textureless", light=light, stratified=False)
    opacity = out.opacity.reshape(-1)
    grey = out.foreground[0, 0].reshape(-1)
    inside, lit = analytic_shading(views, light)

    assert inside.sum() > 600, "the sphere must cover a good part of the frame"
    assert (opacity[inside] > 0.99).all(), "the test sphere must be opaque"
    error = (grey[inside] / opacity[inside] - lit[inside]).abs()
    assert error.max() < 0.04, error.max()
    assert error.mean() < 0.01, error.mean()
    # The light's side is bright and the far side has only ambient light.
    assert lit[inside].max() > 0.9 and lit[inside].min() < AMBIENT + 0.05

    # One normal per ray, although every hit ray has dozens of samples inside the bounds.
    rays = views.width * views.height
    assert field.normal_points == [rays]
    assert out.figures["samples_evaluated"] > 10 * rays


def test_orientation_penalises_normals_that_face_away_from_the_camera():
    field, views = opaque_sphere(), front_view(res=24)
    light = views.c2w[:, :3, 3]
    out = render(field, views, 64, shading="lambertian", light=light, stratified=False, want_orientation=True)
    assert float(out.regularisers["orientation"].detach()) < 0.01  # a convex body seen from outside faces the camera
    with torch.no_grad():  # turn it inside out: density grows outwards, so -grad points inwards
        field.cfg.blob_density = -400.0
        field.density_head[-1].bias.fill_(60.0)
    inverted = render(field, views, 64, shading="lambertian", light=light, stratified=False, want_orientation=True)
    assert float(inverted.regularisers["orientation"].detach()) > 0.3


def test_a_view_that_misses_the_bounds_renders_its_background_and_back_propagates():
    """No ray meets the cube (a jittered rig camera at the edge can do this): the render is the
    background, lit or not, and the step's backward pass runs (it once failed to reshape 0 points)."""
    field = opaque_sphere()
    eye = torch.tensor([[0.0, -3.0, 0.0]])
    c2w = look_at(eye, eye + torch.tensor([[0.0, -1.0, 0.0]]))  # looking away from the origin
    res = 8
    focal, half = torch.tensor([res / (2 * math.tan(math.radians(12)))]), torch.tensor([res / 2])
    azimuth, elevation = angles_of(c2w, torch.zeros(3))
    away = ViewBatch(c2w=c2w, fx=focal, fy=focal, cx=half, cy=half, width=res, height=res,
                     azimuth=azimuth, elevation=elevation)
    background = torch.tensor([[0.2, 0.5, 0.9]])
    for shading in ("albedo", "lambertian"):
        out = render(field, away, 16, shading=shading, light=eye, background=background, want_orientation=True)
        assert out.figures["samples_evaluated"] == 0
        assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
        assert torch.allclose(out.image, background.view(1, 3, 1, 1).expand_as(out.image))
        (out.image.sum() + sum(out.regularisers.values())).backward()


def test_a_split_render_gives_the_density_and_the_colour_each_their_own_gradient():
    """render(split=True): the density's image and the colour's equal the image; the density's
    gradient reaches the density head alone (colour and background held still), the colour's the
    albedo head and the background alone, and together they are the image's gradient (float64,
    to within the rounding of the sums: each parameter's gradient is one sum reordered)."""
    field = opaque_sphere().double()
    with torch.no_grad():  # a coloured, uneven sphere, so every head has a gradient to give
        for p in field.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) * 0.05)
    background = Background().double()
    views = front_view(res=12)
    for name in ("c2w", "fx", "fy", "cx", "cy"):
        setattr(views, name, getattr(views, name).double())
    light = views.c2w[:, :3, 3] + torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    heads = [(head, p) for head, module in (("density", field.density_head), ("colour", field.albedo_head),
                                            ("background", background)) for p in module.parameters()]
    params = [p for _, p in heads] + [field.encoding.table]  # the shared table takes both halves' gradients
    for shading in SHADINGS:
        out = render(field, views, 16, shading=shading, light=light, background=background,
                     generator=torch.Generator().manual_seed(0), split=True)
        weight = torch.randn(out.image.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        density_image, colour_image = out.split
        assert torch.equal(density_image, out.image) and torch.equal(colour_image, out.image)

        def grads(image):
            got = torch.autograd.grad((weight * image).sum(), params, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]

        whole, density, colour = grads(out.image), grads(density_image), grads(colour_image)
        for i, (head, _) in enumerate(heads):
            assert (density[i].abs().max() > 0) == (head == "density"), (shading, head)
            painted = head == "background" or (head == "colour" and shading != "textureless")
            assert (colour[i].abs().max() > 0) == painted, (shading, head)
        for w, d, c in zip(whole, density, colour):
            floor = 64 * torch.finfo(torch.float64).eps * float(w.abs().sum() + d.abs().sum() + c.abs().sum() + 1)
            torch.testing.assert_close(d + c, w, rtol=0, atol=floor)
