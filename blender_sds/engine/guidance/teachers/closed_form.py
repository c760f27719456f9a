"""What the closed-form teachers share: SD's noise schedule and the exact denoiser of a finite image set.

For a finite data set {x_i} under the forward process z_t = sqrt(a) x + sqrt(1-a) eps, the
optimal denoiser is the posterior mean
    x0_hat(z_t) = sum_i softmax_i(-|z_t - sqrt(a) x_i|^2 / (2 (1 - a)) + log prior_i) x_i,
and eps_hat = (z_t - sqrt(a) x0_hat) / sqrt(1 - a). Data are premultiplied, so compositing
onto each judged image's background is folded into the distance algebra: with
x_i = Q_i + k, Q_i = 2 P_i - 2 A_i bg, k = 2 bg - 1,
    |z - s x_i|^2 = |y|^2 - 2 s y.Q_i + s^2 |Q_i|^2,   y = z - s k,
so a step costs a few matrix products with the data, whatever the background.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


@dataclass
class ImageSet:
    """N premultiplied images flattened for the posterior mean's matrix products (pocket's ViewSet has
    the same fields and more)."""

    colour: torch.Tensor  # (N, 3*D) premultiplied sRGB, channel-major per image
    alpha: torch.Tensor  # (N, D)
    colour_sq: torch.Tensor  # (N,) |P_i|^2
    colour_alpha: torch.Tensor  # (N,3) P_ic . A_i per channel
    alpha_sq: torch.Tensor  # (N,) |A_i|^2
    log_prior: torch.Tensor  # (N,) log weight of each image (up to a constant)

    @staticmethod
    def from_premultiplied(colour: torch.Tensor, alpha: torch.Tensor) -> "ImageSet":
        """From (N,3,H,W) premultiplied colour and (N,1,H,W) alpha; equal priors."""
        n = colour.shape[0]
        c, a = colour.reshape(n, 3, -1).float(), alpha.reshape(n, -1).float()
        return ImageSet(colour=c.reshape(n, -1).contiguous(), alpha=a.contiguous(),
                        colour_sq=(c.double() ** 2).sum((1, 2)).float(),
                        colour_alpha=(c.double() * a.double()[:, None]).sum(-1).float(),
                        alpha_sq=(a.double() ** 2).sum(-1).float(), log_prior=torch.zeros(n, device=c.device))


def scaled_linear_alphas_cumprod(steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Stable Diffusion's schedule, in diffusers' own float32 arithmetic ("scaled_linear"): the
    closed-form teachers' t, w(t) and t_range then mean exactly what they mean for SD."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def posterior_mean(z_t: torch.Tensor, alpha_bar: torch.Tensor, data: "ImageSet", background: torch.Tensor,
                   mask: torch.Tensor | None = None, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """x0_hat (B,3,H,W) in [-1,1] of noisy samples z_t given data composited on `background` (B,3) sRGB.

    `alpha_bar` is (B,); `mask` (B,N) bool keeps, per sample, the data it may use (None: all);
    each datum weighs in with its `log_prior` (a mixture of objects with equal weights), plus
    `log_weights` (B,N) per sample where given (a blend of direction buckets).
    Computed in z_t's dtype (float64 in tests, float32 in runs), with a log-sum-exp softmax.
    """
    b = z_t.shape[0]
    dtype = z_t.dtype
    d = data.alpha.shape[1]
    colour, alpha = data.colour.to(dtype), data.alpha.to(dtype)
    bg = background.to(dtype).view(b, 3)
    s = alpha_bar.to(dtype).sqrt().view(b, 1)
    k = 2 * bg - 1
    y = z_t.reshape(b, 3, d) - s[:, :, None] * k[:, :, None]  # (B,3,D)
    y_dot_p = y.reshape(b, 3 * d) @ colour.T  # (B,N)
    y_dot_a = (y.reshape(b * 3, d) @ alpha.T).view(b, 3, -1)  # (B,3,N)
    y_dot_q = 2 * y_dot_p - 2 * (bg[:, :, None] * y_dot_a).sum(1)
    q_sq = (4 * data.colour_sq.to(dtype)[None] - 8 * bg @ data.colour_alpha.to(dtype).T
            + 4 * (bg**2).sum(-1, keepdim=True) * data.alpha_sq.to(dtype)[None])
    logits = (2 * s * y_dot_q - s**2 * q_sq) / (2 * (1 - s**2))  # -|y - s Q|^2 / 2(1-a) + const
    logits = logits + data.log_prior.to(dtype)[None]
    if log_weights is not None:
        logits = logits + log_weights.to(dtype)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)  # subtracts the max: the log-sum-exp form
    mean_p = (weights @ colour).view(b, 3, d)
    mean_a = weights @ alpha  # (B,D)
    x0 = 2 * mean_p - 2 * mean_a[:, None, :] * bg[:, :, None] + k[:, :, None]
    return x0.view_as(z_t)


def epsilon(z_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar.to(z_t.dtype).view(-1, 1, 1, 1)
    return (z_t - a.sqrt() * x0) / (1 - a).sqrt()
