"""The pocket teacher: the exact (closed-form) diffusion model of the pocket world's renders.

Its denoiser is the posterior mean of a finite data set (closed_form.py): a real diffusion
model of that data that needs no training and, like SDS's 2D judge, sees flat images, not 3D. The
conditional data are renders of the prompt's object (by view direction when prompting is
view-dependent); the unconditional data ("uncond") span the whole world (the prompt's own
renders among them), or are the negative prompt's object, or, for a negative of styles
("blurry, dull, dark"), the world's data in those styles (pocket/styles.py). "null", the empty
prompt whatever the negative (NFSD and CSD weigh both), is always the plain world's data.
Noise, timesteps, weighting and CFG are the rule's (rules/).

Framing: the data's cameras vary in distance and field of view, so the same object appears
at sizes 2.6x apart. A camera-blind closed-form teacher then leaves the object's size free
(any render matches some datum) and SDS settled on objects ~25% too small. So both
branches see only data framed like the judged image (apparent size of the bounds within
+-10%), the way camera-conditioned models (Zero-1-to-3, MVDream) share the camera between
the conditional and unconditional branch.

Camera-blind, a marked object's data ("a red cube with a white front") are drawn with a
photo collection's front bias (`guidance.front_bias`: that share of them from the front view),
which is what makes SDS put the mark on every side (Janus, docs/QUALITY.md). A `Blend` of
direction prompts (Perp-Neg) is the mixture of the direction buckets' data with its weights.

By default (`guidance.pose_matched`) both branches' data are instead rendered at each
judged camera (posed.py), with random lights and shadings: a camera-conditioned teacher.
Direction prompts add nothing to it (every datum already has the judged camera's direction).
Camera-blind, a memorising teacher answers a render with a neighbour in another pose, and
for a 4-fold object the neighbours of a symmetric blob sit at every phase, so pyramids
and cubes came back as bodies of revolution (docs/QUALITY.md). Direction buckets and
framing are then moot: every datum has the judged camera.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ....pocket_words import PocketPromptError, parse_negative, parse_object
from ...pocket import dataset, posed, styles, world
from ...pocket.dataset import ViewSet
from ...scene.directions import DIRECTIONS, direction_index
from ...scene.views import ViewBatch
from ...settings import GuidanceSettings
from ..predictor import Blend, NoisePredictor, condition_name
from .closed_form import epsilon, posterior_mean, scaled_linear_alphas_cumprod

FRAMING_WIDTH = 0.1  # data within +-10% of the judged camera's apparent scale answer it
FRAMING_MINIMUM = (16, 64)  # at least this many (conditional, unconditional) data answer each image


def framing_mask(data: torch.Tensor, judged: torch.Tensor, allowed: torch.Tensor, minimum: int) -> torch.Tensor:
    """(B,N) the allowed data whose framing is within FRAMING_WIDTH of each judged image's, or the nearest `minimum`."""
    gap = (data[None, :] - judged[:, None]).abs().masked_fill(~allowed, float("inf"))
    k = min(minimum, gap.shape[1])
    limit = torch.maximum(gap.kthvalue(k, dim=1).values, torch.full_like(judged, FRAMING_WIDTH))
    return allowed & (gap <= limit[:, None])


class PocketPredictor(NoisePredictor):
    """Pixel-space noise predictor: the closed-form denoiser of the pocket world's renders."""

    needs_solid_background = True
    answers_blends = True
    # The world's images are flat albedo or lit (issue 4); judged against them, textureless
    # (grey) renders pulled shape towards white objects: a red cube came back at 47-69% of
    # its silhouette area with them, 86% without (docs/QUALITY.md).
    shadings = ("albedo", "lambertian")

    def __init__(self, settings: GuidanceSettings, device, *, cond_views: int | None = None,
                 world_views: int | None = None, supersample: int = 2):
        super().__init__(settings, scaled_linear_alphas_cumprod(), device)
        self.prompt = settings.prompt
        parsed = parse_object(self.prompt)
        self.object = world.prompt_for(parsed.colour, parsed.shape, parsed.mark)  # the canonical words
        self.resolution = settings.resolution
        self.center = torch.tensor(settings.bounds.center, dtype=torch.float32, device=self.device)
        self.bounds_size = settings.bounds.size
        self.view_dependent = settings.view_dependent
        self.pose_matched = settings.pose_matched
        r = self.resolution
        try:
            negative = parse_negative(settings.negative_prompt)
        except PocketPromptError as error:
            raise ValueError(f"negative_prompt: {error.problem}") from None
        self.negative = None if negative.object is None else world.prompt_for(*negative.object)  # an object's words
        self.styles = negative.styles  # or the world's own data in these styles
        if self.pose_matched:  # data are rendered per judged camera (posed.py); nothing to cache
            self.pose_generator = torch.Generator().manual_seed(dataset.seed_of("posed", settings.seed))
            return
        cond_views = cond_views or dataset.scaled_count(dataset.COND_VIEWS, r, 96)
        world_views = world_views or dataset.scaled_count(dataset.WORLD_VIEWS_PER_OBJECT, r, 8)
        # Only a marked object has a front to be biased towards; plain ones keep their uniform draw.
        front_bias = settings.front_bias if parsed.mark else None
        self.cond = dataset.object_views(self.object, r, cond_views, 0, supersample,
                                         front_bias=front_bias).to(self.device)
        self.buckets = F.one_hot(self.cond.direction, len(DIRECTIONS)).float()  # (N,4) each datum's direction
        self.world_args = (r, world_views, supersample)
        if self.negative:
            self.uncond = dataset.object_views(self.negative, r, cond_views, 1, supersample).to(self.device)
            self._null = None  # the world's data, made when a rule first asks for "null"
        else:
            self._null = self.world_data()
            self.uncond = styles.restyled(self._null, self.styles)

    def world_data(self) -> ViewSet:
        """The camera-blind data of the empty prompt: the whole world, the prompt's own views among them."""
        r, world_views, supersample = self.world_args
        return dataset.unconditional_views(self.cond, dataset.world_views(r, world_views, 0, supersample)
                                           .to(self.device))

    @property
    def null(self) -> ViewSet:
        """The camera-blind "null" data: the world's (the very "uncond" set when there is no negative)."""
        if self._null is None:
            self._null = self.world_data()
        return self._null

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2 - 1

    def direction_mask(self, views: ViewBatch) -> torch.Tensor:
        """Per judged camera, the conditional views whose direction bucket matches (all if none does)."""
        if not self.view_dependent:
            return torch.ones(views.size, len(self.cond), dtype=torch.bool, device=self.device)
        judged = direction_index(views.azimuth.float(), views.elevation.float()).to(self.device)
        mask = judged[:, None] == self.cond.direction[None, :]
        empty = ~mask.any(dim=-1, keepdim=True)
        return mask | empty

    def judged_framing(self, views: ViewBatch) -> torch.Tensor:
        """(B,) log apparent size of the bounds in each judged image, as `Orbit.framing` measures data."""
        eye = views.c2w[:, :3, 3].to(self.device, torch.float32)
        distance = (eye - self.center).norm(dim=-1) / self.bounds_size
        return torch.log(views.fy.to(self.device, torch.float32) / views.height / distance)

    def cond_mask(self, views: ViewBatch) -> torch.Tensor:
        return framing_mask(self.cond.framing, self.judged_framing(views), self.direction_mask(views),
                            FRAMING_MINIMUM[0])

    def uncond_mask(self, views: ViewBatch, data: ViewSet | None = None) -> torch.Tensor:
        """The unconditional data (`data`: another unconditional set, e.g. the null's) framed like each image."""
        data = self.uncond if data is None else data
        allowed = torch.ones(views.size, len(data), dtype=torch.bool, device=self.device)
        return framing_mask(data.framing, self.judged_framing(views), allowed, FRAMING_MINIMUM[1])

    def blend_weights(self, blend: Blend, views: ViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, log weights) (B,N) over the conditional data: each direction bucket's data share its
        blend weight equally (a mixture of the buckets); a camera whose weighted buckets are empty
        gets all data, as the view-dependent prompt's buckets do."""
        weights = blend.weights.to(self.device, torch.float32)[:, self.cond.direction]  # (B,N)
        allowed = weights > 0
        empty = ~allowed.any(dim=-1, keepdim=True)
        mask = framing_mask(self.cond.framing, self.judged_framing(views), allowed | empty, FRAMING_MINIMUM[0])
        counts = (mask.float() @ self.buckets)[:, self.cond.direction]  # (B,N) kept data of each datum's bucket
        log_w = weights.clamp_min(1e-30).log() - counts.clamp_min(1).log()
        return mask, log_w.masked_fill(~mask | empty, 0.0)

    def posed_data(self, views: ViewBatch) -> tuple[ViewSet, torch.Tensor, ViewSet, torch.Tensor]:
        """(cond, cond_mask, uncond, uncond_mask) rendered at the judged cameras (`guidance.pose_matched`)."""
        sets = self.posed_sets(views)
        return (*sets["prompt"], *sets["uncond"])

    def posed_sets(self, views: ViewBatch, null: bool = False) -> dict[str, tuple[ViewSet, torch.Tensor]]:
        """{"prompt", "uncond" and, when `null`, "null": (data, mask)} rendered at the judged cameras
        (`guidance.pose_matched`). The prompt's and the negative's (or world's) data are drawn first
        and always, so the data's random stream is the same whatever a rule asks; only a rule that
        asks for "null" beside an object negative draws the world after them."""
        orbit = posed.judged_orbit(views, self.center, self.bounds_size)
        g = self.pose_generator

        def placed(drawn):
            data, owner = drawn
            return data.to(self.device), posed.owner_mask(owner, views.size, self.device)

        out = {"prompt": placed(posed.object_views(self.object, orbit, self.resolution, g))}
        if self.negative:
            out["uncond"] = placed(posed.object_views(self.negative, orbit, self.resolution, g))
            if null:
                out["null"] = placed(posed.world_views(orbit, self.resolution, g))
        else:
            world_data, mask = placed(posed.world_views(orbit, self.resolution, g))
            out["null"] = (world_data, mask)
            out["uncond"] = (styles.restyled(world_data, self.styles), mask)
        return out

    def predict(self, z_t, t, views, names):
        self.require_known(names)
        a = self.alphas_cumprod[t]
        bg = views.background if views.background is not None else torch.ones(z_t.shape[0], 3)
        bg = bg.to(self.device, z_t.dtype)
        asks_null = any(condition_name(c) == "null" for c in names)
        if self.pose_matched:  # pose-matched data are all at the judged camera: a blend of directions is the prompt
            data = self.posed_sets(views, null=asks_null)
        else:
            data = {"prompt": (self.cond, None), "uncond": (self.uncond, None)}
            if asks_null:
                data["null"] = (self.null, None)
        out, done = {}, {}
        for condition in names:
            name, log_w = condition_name(condition), None
            branch = name if name in ("uncond", "null") else "prompt"
            images, mask = data[branch]
            if branch != "prompt" and id(images) in done:  # no negative: "null" and "uncond" are one set
                out[name] = done[id(images)]
                continue
            if mask is None and isinstance(condition, Blend):
                mask, log_w = self.blend_weights(condition, views)
            elif mask is None:
                mask = self.cond_mask(views) if branch == "prompt" else self.uncond_mask(views, images)
            out[name] = epsilon(z_t, posterior_mean(z_t, a, images, bg, mask, log_w), a)
            if branch != "prompt":
                done[id(images)] = out[name]
        return out
