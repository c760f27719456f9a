"""CUDA graphs for the frozen judge: the UNet's CFG pair, and the VAE encoder forward and backward.

Eager PyTorch launches every kernel from Python, about 4,000 a step, and on an H200 the
host could not keep up: the UNet's CFG pair took 42 ms eager and 10 ms replayed from a
graph (docs/PERFORMANCE.md; the VAE encoder, bound by its own kernels, gained ~10%). A
run's judge sees the same shapes every step (render.batch views, the model's image size),
so each part is captured once and replayed as one launch from then on.

Only on CUDA, never with low-VRAM offload, whose hooks move weights during the forward.
A call of a new shape is captured anew (a run has one); a call without gradients or on
another device runs eagerly, as before.
Inputs are copied into the graph's static buffers and outputs copied out, so a caller
never holds memory that the next replay overwrites. A part that cannot be captured (a
model with host synchronisation inside, say) says so once on stderr and stays eager.
"""
from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import torch

WARMUP = 3  # eager calls on a side stream before capture (cuDNN/cuBLAS pick their kernels there)


def usable(device: torch.device, low_vram: bool) -> bool:
    return torch.device(device).type == "cuda" and not low_vram


def _gave_up(part: str, error: Exception) -> None:
    print(f"warning: guidance.cuda_graphs: the {part} could not be captured ({type(error).__name__}: "
          f"{str(error).splitlines()[0] if str(error) else ''}); it runs eagerly", file=sys.stderr, flush=True)


class GraphedUNet:
    """Stands in for a frozen UNet: `unet(sample, t, encoder_hidden_states=...)` with `.sample` out,
    replayed from a graph captured at the first call's shapes. Attributes pass through."""

    def __init__(self, unet):
        self.module = unet
        self.key = None
        self.graph = None
        self.failed = False

    def __getattr__(self, name):
        if name == "module":  # not set yet (a copy being built): no recursion through ourselves
            raise AttributeError(name)
        return getattr(self.module, name)

    def __call__(self, sample, timestep, encoder_hidden_states):
        args = (sample, timestep, encoder_hidden_states)
        if not sample.is_cuda or self.failed:
            return self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states)
        key = tuple((a.shape, a.dtype, a.device) for a in args)
        if key != self.key:
            try:
                with torch.cuda.device(sample.device):
                    self._capture(args)
            except RuntimeError as error:
                self.failed, self.graph = True, None
                _gave_up("UNet", error)
                return self.module(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            self.key = key
        for static, value in zip(self.inputs, args):
            static.copy_(value)
        with torch.cuda.device(sample.device):
            self.graph.replay()
        return SimpleNamespace(sample=self.output.clone())

    def _capture(self, args) -> None:
        self.graph = None  # free the old graph's pool first
        self.inputs = [a.detach().clone() for a in args]

        def forward():
            s, t, h = self.inputs
            return self.module(s, t, encoder_hidden_states=h).sample

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(WARMUP):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.output = forward()


class GraphedEncoder:
    """Installed as a frozen encoder module's `forward`: forward and backward (to its input) replayed
    from graphs that torch.cuda.make_graphed_callables captures at the first call's shape."""

    def __init__(self, eager_forward):
        self.eager = eager_forward
        self.key = None
        self.graphed = None
        self.failed = False

    def __call__(self, x):
        if self.failed or not (x.is_cuda and torch.is_grad_enabled() and x.requires_grad):
            return self.eager(x)
        key = (x.shape, x.dtype, x.device)
        if key != self.key:
            self.graphed = None
            sample = x.detach().clone().requires_grad_(True)
            try:
                with warnings.catch_warnings():
                    # Capture's own warm-up runs on a side stream; torch notes the stream change once.
                    warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream")
                    self.graphed = torch.cuda.make_graphed_callables(self.eager, (sample,), num_warmup_iters=WARMUP)
            except RuntimeError as error:
                self.failed = True
                _gave_up("VAE encoder", error)
                return self.eager(x)
            self.key = key
        return self.graphed(x).clone()


def active(guidance) -> bool:
    """Whether the judge runs from graphs now (wrapped, and no part gave up)."""
    unet = getattr(guidance, "unet", None)
    return isinstance(unet, GraphedUNet) and not unet.failed


def graph_judge(guidance) -> None:
    """Put graphs in place of `guidance.unet` and its VAE encoder's forward (when it has one)."""
    if not isinstance(guidance.unet, GraphedUNet):
        guidance.unet = GraphedUNet(guidance.unet)
    vae = getattr(guidance, "vae", None)
    if vae is not None and not isinstance(vae.encoder.forward, GraphedEncoder):
        vae.encoder.forward = GraphedEncoder(vae.encoder.forward)
