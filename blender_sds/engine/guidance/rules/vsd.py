"""Variational score distillation (ProlificDreamer, Wang et al. 2023) and its ESD option.

SDS's gradient w(t) (eps_pre - eps) subtracts the noise that was added; VSD subtracts instead
what a model of the *current renders* predicts that noise to be, eps_phi(x_t, t, camera), a
network trained alongside the scene (estimators/):

    grad = w(t) (eps_pre - eps_phi),
    eps_pre = eps_uncond + s (eps_prompt - eps_uncond)   (CFG at the kind's normal scale, view prompts)
    eps_phi = eps_phi(no camera) + lambda (eps_phi(camera) - eps_phi(no camera))

with lambda = guidance.estimator.camera_scale (threestudio's guidance_scale_lora: 1 VSD, only
the camera pass is run; 0.5 ESD, Wang et al. 2024's entropic variant, both passes as one batch).
An estimator that knew the noise exactly would give SDS back; one that models the renders
gives the difference between the model's score and theirs, which is why VSD works at normal
CFG where SDS needs 100.

The same step trains the estimator on the detached sample z with its diffusion loss, the camera
dropped with probability camera_dropout; that loss joins GuidanceOutput.loss, so the run's one
backward and Adam step train it (its gradient reaches nothing else), and
`figures["estimator_loss"]` puts it in the run's log. A LoRA trains as threestudio's train_lora
does, at t uniform over the whole schedule with fresh noise. An estimator anchored on the judge
(pixel kinds) needs the judge's prompt eps at its training sample, so it trains at the
gradient's own sample instead (its t from guidance.t_range, its noise), where CFG has
asked for that eps already: a fresh draw would cost one more judge pass, about a fifth of a
pocket step. Its prediction for the gradient is made before the step's update, so the sample
it trains on is not one it has seen. The training draws come from a generator of their own, so
the rule's noise and timesteps are SDS's for the same seed. `figures["predictions"]` counts the
judge's passes per image: CFG's pair, the estimator's one or two, and its training pass (one
forward; its backward costs about two more).

In the shape phase (optim.shape_steps, the pocket's default: SDS's CFG, the colour learning
and restarted from grey at its end: optim.shape_colour) the gradient is SDS's, eps_pre - noise,
and the estimator is neither asked nor trained: it learns from the colour phase's first step.
What it learnt of the shape phase's renders was never read (restarting it at shape_steps left
two white assets' colour error within 0.004, docs/QUALITY.md), and training it cost about a
ninth of a pocket step. An anchored estimator starts as the judge's prompt eps, so
eps_pre - eps_phi would start as CFG's classifier term alone, without SDS's pull towards the
prompt's images that forms the shape; on four pocket assets SDS's gradient there left the
shapes no worse (median Chamfer 3.5% against 3.7%) and the colours nearer the truth (median
colour error 0.08 against 0.13), one estimator pass a step cheaper (docs/QUALITY.md "Saturation").

After the shape phase, with guidance.estimator.density_scale, the step is split (`splits`): the
render's density image (colour held still) takes SDS's gradient at that CFG, made from the same
CFG pair, and its colour image (weights held still) VSD's. Judged at the normal CFG, the last
270 pocket steps left the shape no sharper than the shape phase had made it (cubes 3.6-4.0%
Chamfer, against SDS's 3.3-3.4% at 20 throughout); judged as in the shape phase they keep
sharpening it while the colour stays faithful (docs/QUALITY.md).
"""
from __future__ import annotations

import torch

from ....job import ESTIMATOR
from ..estimators import EstimatorPart, build_estimator, camera_vector
from .base import GuidanceOutput, inject
from .sds import SDS, cfg

TRAIN_SEED_OFFSET = 2  # the estimator's training draws: seed + 2 (the base's noise and t use seed + 1)


class VSD(SDS):
    def __init__(self, settings, predictor):
        super().__init__(settings, predictor)
        options = settings.estimator or ESTIMATOR
        self.camera_scale = float(options["camera_scale"])
        self.camera_dropout = float(options["camera_dropout"])
        self.density_scale = options.get("density_scale")
        self.splitting = False  # this step's gradient comes in two (splits)
        self.density_residual = None  # the density's half of a split step, made beside the colour's
        self.bounds = settings.bounds
        self.estimator = build_estimator(settings, predictor, int(options["rank"]))
        self.part = EstimatorPart(self.estimator, options["lr"])
        self.train_generator = torch.Generator(device=self.device).manual_seed(int(settings.seed) + TRAIN_SEED_OFFSET)
        self.judged = None  # (z, views) of this step's gradient: the estimator's training images
        self.anchor = None  # (t, noise, the judge's prompt eps) of this step's gradient, for an anchored estimator

    def trained_parts(self) -> list:
        return [self.part]

    def splits(self, step: int) -> bool:
        return self.density_scale is not None and step >= self.settings.shape_steps

    def asked(self, views) -> tuple[str, ...]:
        return self.conditions if self.splitting else super().asked(views)

    # -- the gradient ------------------------------------------------------------------------
    def estimate(self, z_t: torch.Tensor, t: torch.Tensor, views, base=None) -> torch.Tensor:
        """eps_phi at (z_t, t): the camera pass, the camera-free one, or both mixed by lambda
        (`base`: the judge's prompt eps at z_t, for an anchored estimator)."""
        camera = camera_vector(views, self.bounds).to(z_t.device)
        free = torch.zeros_like(camera)
        if self.camera_scale in (0.0, 1.0):
            self.predictions += 1
            return self.estimator.predict(z_t, t, camera if self.camera_scale == 1.0 else free, base).to(z_t.dtype)
        self.predictions += 2
        both = self.estimator.predict(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([camera, free]),
                                      None if base is None else torch.cat([base, base]))
        with_camera, without = both.to(z_t.dtype).chunk(2)
        return without + self.camera_scale * (with_camera - without)

    def residual(self, predictions, noise, z_t, t, views, step, total_steps):
        base = None
        if self.estimator.anchored:  # asked already, for CFG; the training pass reuses the sample
            base = predictions["prompt"]
            self.anchor = (t, noise, base)
        if step < self.settings.shape_steps:  # the shape phase: SDS's gradient (the estimator waits)
            return self.combine(predictions, views) - noise
        if self.splitting:  # the density's half: SDS's at density_scale, from the same two predictions
            self.density_residual = cfg(predictions, float(self.density_scale)) - noise
        return self.combine(predictions, views) - self.estimate(z_t, t, views, base)

    def gradient(self, z, views, step, total_steps, noise=None, t=None):
        self.judged = (z.detach(), views)  # the estimator's training sample, read by __call__
        return super().gradient(z, views, step, total_steps, noise=noise, t=t)

    # -- the estimator's training ------------------------------------------------------------
    def estimator_loss(self, z: torch.Tensor, views) -> torch.Tensor:
        """The diffusion loss on detached z, the camera dropped at random: at the gradient's own sample
        for an anchored estimator after a gradient, else at t uniform in [0, T) with fresh noise (and,
        for an anchored estimator, one more judge pass for its base)."""
        g, batch = self.train_generator, z.shape[0]
        if self.anchor is not None:
            (t, noise, base), self.anchor = self.anchor, None
        else:
            t = torch.randint(0, self.num_train_timesteps, (batch,), generator=g, device=self.device)
            noise, base = torch.randn(z.shape, generator=g, device=z.device, dtype=z.dtype), None
            if self.estimator.anchored:
                a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(z.dtype)
                with torch.no_grad():
                    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
                    base = self.predictor.predict(z_t, t, views, ("prompt",))["prompt"].to(z.dtype)
                self.predictions += 1
        keep = torch.rand(batch, generator=g, device=self.device) >= self.camera_dropout
        camera = camera_vector(views, self.bounds).to(z.device) * keep.to(z.device, torch.float32)[:, None]
        return self.estimator.loss(z, t, noise, camera, base)

    def __call__(self, images, views, step, total_steps, noise=None, t=None, split=None):
        self.splitting = self.splits(step)
        if self.splitting:
            if split is None:
                raise ValueError("guidance.estimator.density_scale: this step judges the density and the colour "
                                 "apart, so it needs the render's split images (render(split=True))")
            density_z, colour_z = (self.predictor.encode(x) for x in split)
            grad, t = self.gradient(colour_z, views, step, total_steps, noise=noise, t=t)
            density_grad = self.weighted(self.density_residual, t, step, total_steps)
            self.density_residual, self.splitting = None, False
            out = GuidanceOutput(loss=inject(colour_z, grad) + inject(density_z, density_grad),
                                 figures=self.figures(grad, t))
            out.figures["density_grad_norm"] = density_grad.float().norm()
        else:
            out = super().__call__(images, views, step, total_steps, noise=noise, t=t)
        (z, judged_views), self.judged = self.judged, None
        if step < self.settings.shape_steps:  # nothing reads the estimator yet: it starts learning after
            self.anchor = None
            return out
        trained = self.estimator_loss(z, judged_views)
        out.loss = out.loss + trained
        out.figures["estimator_loss"] = trained.detach()
        out.figures["predictions"] = torch.tensor(float(self.predictions + 1))  # + the training pass
        return out
