"""VSD's estimator for Stable Diffusion: a LoRA on the judge's own UNet, camera-conditioned.

One UNet, as threestudio runs VSD when both model paths are the same: the adapter is off for
the pretrained pass (the predictor's `predict` never sees it) and on only inside `active()`,
for the estimator's passes and its training pass. So memory stays near SDS's: rank-r
matrices on every attention projection (to_q, to_k, to_v, to_out.0, through peft as diffusers'
adapter API adds them) and a small camera embedding, against a second UNet in threestudio's
default. peft's "gaussian" init leaves the LoRA's up-projection zero, and the camera
embedding's last layer is zeroed too, so the estimator starts as the pretrained model on the
plain prompt: the renders' score starts at the model's and moves away as it learns them.

The camera (c2w, 16 numbers) goes through diffusers' TimestepEmbedding(16, time_embed_dim),
added to the UNet's time embedding as threestudio does with `unet.class_embedding`. The UNet
is shared, so the embedding is attached only during the estimator's passes and detached after
(a UNet with a class embedding would demand class labels in the pretrained pass). Its text
condition is the plain prompt, view-independent: the camera already says the view.

Dtypes: the UNet keeps its weights' dtype (fp16 on CUDA); the LoRA matrices and the camera
embedding train in float32 (peft upcasts half-precision adapters; checked here), the UNet
casting their outputs back. Low-VRAM offload streams the UNet's weights layer by layer and
cannot train an adapter inside it: refused on CUDA (on the CPU it offloads nothing).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .base import CAMERA_SIZE, NoiseEstimator, copy_into

ADAPTER = "vsd_estimator"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights="gaussian")


class LoraEstimator(NoiseEstimator):
    """eps_phi as the predictor's UNet with a LoRA and a camera embedding; see the module docstring."""

    def __init__(self, predictor, rank: int, seed: int):
        from diffusers.models.embeddings import TimestepEmbedding

        unet = predictor.unet
        if predictor.device.type == "cuda" and predictor.low_vram:
            raise ValueError("guidance.low_vram: rule 'vsd' trains a LoRA inside the UNet, which low_vram's "
                             "layer-by-layer offload cannot hold; set guidance.low_vram to false or use rule 'sds'")
        if not hasattr(unet, "add_adapter"):  # e.g. wrapped by CUDA graphs (registry.py leaves VSD's eager)
            raise ValueError(f"guidance.rule: 'vsd' needs the diffusers UNet itself, got {type(unet).__name__}")
        if unet.class_embedding is not None or unet.config.class_embeddings_concat:
            raise ValueError(f"guidance.model: rule 'vsd' feeds the camera through the UNet's class embedding, "
                             f"which this model already uses (class_embed_type "
                             f"{unet.config.class_embed_type!r}); use rule 'sds'")
        self.predictor = predictor
        self.unet = unet
        self.channels = predictor.sample_channels
        with torch.random.fork_rng(devices=[]):  # the same start for the same seed, the run's stream untouched
            torch.manual_seed(seed)
            unet.add_adapter(lora_config(rank), adapter_name=ADAPTER)
            camera = TimestepEmbedding(CAMERA_SIZE, unet.time_embedding.linear_2.out_features)
        self.lora = {name: p for name, p in unet.named_parameters() if f".{ADAPTER}." in name}
        for param in self.lora.values():  # peft upcasts fp16 adapters; make sure, whatever its version does
            if param.dtype != torch.float32:
                param.data = param.data.float()
        self.camera = camera.to(predictor.device, torch.float32)
        torch.nn.init.zeros_(self.camera.linear_2.weight)
        torch.nn.init.zeros_(self.camera.linear_2.bias)
        self._off()

    def _off(self) -> None:
        self.unet.disable_adapters()
        # peft's disable also clears requires_grad on the adapter, and a leaf that no longer
        # requires grad gets none in backward: the training pass's LoRA gradients would be lost
        # once the pass has left `active()`. The off adapter is unused, so it may keep requiring grad.
        for param in self.lora.values():
            param.requires_grad_(True)

    @contextmanager
    def active(self):
        """The UNet as the estimator: adapter on, camera embedding attached; as the pretrained model after."""
        self.unet.enable_adapters()
        self.unet.class_embedding = self.camera
        try:
            yield self.unet
        finally:
            self.unet.class_embedding = None
            self._off()

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """The UNet's own output (eps, v or x0 by the model's prediction_type), float32."""
        text = self.predictor.embeddings.prompt.expand(z_t.shape[0], -1, -1)
        with self.active() as unet:
            out = unet(z_t.to(self.predictor.dtype), t, encoder_hidden_states=text,
                       class_labels=camera.to(z_t.device, torch.float32)).sample
        return out[:, : self.channels].float()

    def predict(self, z_t, t, camera, base=None):
        return self.predictor.to_epsilon(self.forward(z_t, t, camera), z_t.float(), t)

    def loss(self, z, t, noise, camera, base=None):
        a = self.predictor.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z + (1 - a).sqrt() * noise
        kind = self.predictor.prediction_type  # the target the model was trained on (threestudio's train_lora)
        target = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * z, "sample": z}[kind]
        return F.mse_loss(self.forward(z_t, t, camera), target.float())

    def parameters(self):
        return [*self.lora.values(), *self.camera.parameters()]

    def named(self) -> dict[str, torch.nn.Parameter]:
        return {**{f"lora.{k}": p for k, p in self.lora.items()},
                **{f"camera.{k}": p for k, p in self.camera.named_parameters()}}

    def state_dict(self):
        return {name: p.detach() for name, p in self.named().items()}

    def load_state_dict(self, state):
        copy_into(self.named(), state)
