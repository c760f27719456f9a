"""What the diffusers kinds share: prompt embeddings made once, and every asked condition in one UNet call.

Latent Stable Diffusion and pixel-space (DeepFloyd-IF-like) models differ only in how an
image becomes a sample (`encode`); the text side and the noise prediction are the same:
the prompts are encoded once at construction and the text encoder is freed (it is the
largest part of IF and a quarter of SD's memory, and SDS never needs it again), and each
step runs the asked conditions (CFG's pair: 2B) as one batch through the UNet.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from ...scene.directions import direction_index
from ...scene.views import ViewBatch
from ...settings import GuidanceSettings
from ..predictor import Blend, NoisePredictor, condition_name
from . import weights_cache
from .prompts import view_prompts

MAX_TOKENS = 77  # CLIP's context; DeepFloyd IF also encodes its T5 prompts at 77 tokens


@dataclass
class PromptEmbeddings:
    """The text encoder's outputs, cached on the UNet's device in the weight dtype."""

    prompt: torch.Tensor  # (1, L, D) the prompt as written
    uncond: torch.Tensor  # (1, L, D) the negative prompt ("" by default): the unconditional branch of CFG
    null: torch.Tensor  # (1, L, D) the empty prompt (the same tensor as uncond when there is no negative)
    views: torch.Tensor | None  # (4, L, D) "<prompt>, <direction> view" in scene.directions.DIRECTIONS order, or None

    def conditional(self, views: ViewBatch) -> torch.Tensor:
        """(B, L, D): each camera's conditional embedding (its direction's prompt when view-dependent)."""
        if self.views is None:
            return self.prompt.expand(views.size, -1, -1)
        index = direction_index(views.azimuth, views.elevation).to(self.views.device)
        return self.views[index]


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """(N, L, D) last hidden states, as the diffusers pipelines condition their UNets."""
    max_length = min(int(tokenizer.model_max_length), MAX_TOKENS)
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    config = text_encoder.config
    # CLIP was trained attending to the padding; T5 (IF) expects the mask, as IFPipeline passes it.
    is_clip = getattr(config, "model_type", "") == "clip_text_model"
    use_mask = bool(getattr(config, "use_attention_mask", False)) or not is_clip
    mask = tokens.attention_mask.to(device) if use_mask and "attention_mask" in tokens else None
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def place_module(module: torch.nn.Module, device: torch.device, low_vram: bool, channels_last: bool = False):
    """Put a frozen module where it runs: on `device`, or, in low-VRAM mode on CUDA, kept on the CPU
    and streamed to the GPU layer by layer during each forward (accelerate's sequential offload)."""
    module.requires_grad_(False)
    module.eval()
    if device.type == "cuda" and channels_last:
        module.to(memory_format=torch.channels_last)  # faster cuDNN convolutions in fp16
    if device.type == "cuda" and low_vram:
        from accelerate import cpu_offload

        cpu_offload(module, execution_device=device)
    else:
        module.to(device)
    return module


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class TextConditionedPredictor(NoisePredictor):
    """A text-conditioned diffusers UNet; kinds add `encode`."""

    graphable = True
    answers_blends = True

    def __init__(self, settings: GuidanceSettings, device: torch.device, unet, scheduler_config, dtype: torch.dtype):
        from diffusers import DDPMScheduler

        # The training noise schedule, whatever sampler the model was saved with.
        scheduler = DDPMScheduler.from_config(scheduler_config)
        super().__init__(settings, scheduler.alphas_cumprod, device)
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"guidance.model: unsupported scheduler prediction_type {self.prediction_type!r}")
        self.dtype = dtype
        self.low_vram = settings.low_vram
        self.view_dependent = settings.view_dependent
        self.unet = place_module(unet, self.device, self.low_vram, channels_last=True)
        self.sample_channels = int(unet.config.in_channels)
        self.embeddings: PromptEmbeddings | None = None

    def cache_embeddings(self, parts: dict) -> PromptEmbeddings:
        """Encode every prompt the run needs, then drop the tokenizer and text encoder from `parts`."""
        tokenizer, text_encoder = parts.pop("tokenizer"), parts.pop("text_encoder")
        place_module(text_encoder, self.device, self.low_vram)
        prompt = self.settings.prompt
        negative = self.settings.negative_prompt
        prompts = [prompt, negative, ""]
        if self.view_dependent:
            prompts += view_prompts(prompt)
        encoded = encode_prompts(tokenizer, text_encoder, prompts, self.device).to(self.device, self.dtype)
        if weights_cache.holds(text_encoder) and not self.low_vram:
            text_encoder.to("cpu")  # kept for the next job's prompts, off the GPU until then
        del tokenizer, text_encoder
        release_memory(self.device)
        self.embeddings = PromptEmbeddings(prompt=encoded[0:1], uncond=encoded[1:2],
                                           null=encoded[1:2] if not negative else encoded[2:3],
                                           views=encoded[3:7] if self.view_dependent else None)
        return self.embeddings

    def condition(self, name, views: ViewBatch) -> torch.Tensor:
        """(B, L, D) the text embedding of one condition for these cameras."""
        if isinstance(name, Blend):
            if self.embeddings.views is None:
                raise ValueError("guidance.view_dependent: blends of the direction prompts need them; set it true")
            mix = name.weights.to(self.embeddings.views.device, self.embeddings.views.dtype)
            return torch.einsum("bd,dlc->blc", mix, self.embeddings.views)
        if name == "prompt":
            return self.embeddings.conditional(views)
        if name == "uncond":
            return self.embeddings.uncond.expand(views.size, -1, -1)
        if name == "null":
            return self.embeddings.null.expand(views.size, -1, -1)
        raise self.unknown([name])

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, views: ViewBatch, names):
        batch = z_t.shape[0]
        if views.size != batch:
            raise ValueError(f"guidance: {batch} samples but {views.size} cameras in the view batch")
        hidden = torch.cat([self.condition(name, views) for name in names])
        k = len(names)
        names = [condition_name(n) for n in names]
        stacked, stacked_t = torch.cat([z_t] * k), torch.cat([t] * k)
        with torch.no_grad():
            out = self.unet(stacked.to(self.dtype), stacked_t, encoder_hidden_states=hidden).sample
        # Learned-variance models (IF) predict [eps, variance]: the noise is the first half.
        eps = self.to_epsilon(out[:, : self.sample_channels].float(), stacked.float(), stacked_t)
        return dict(zip(names, eps.chunk(k)))

    def to_epsilon(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's prediction as noise, from x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0."""
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * z_t
        return (z_t - a.sqrt() * out) / (1 - a).sqrt()  # "sample": the model predicts x0
