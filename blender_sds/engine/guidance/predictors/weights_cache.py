"""A judge's loaded weights kept for the life of a process that runs job after job (a batch's Ray worker).

Loading Stable Diffusion reads gigabytes and takes seconds to tens of seconds; a batch of a
hundred prompts with one model would pay that a hundred times. With the cache on (`enable()`,
which only the batch task calls), the parts a loader returns are kept under a key of
everything that decides them: the kind, the model source, its config, the weight dtype and
the device. Off (the default: the add-on's worker and `serve` hold nothing between jobs),
every load is fresh.

What is kept is the frozen parts (UNet, VAE, tokenizer, text encoder, scheduler config),
never a predictor: a predictor holds one job's prompt embeddings and random state. One judge
is kept at a time (a new key drops the old one), so a batch that changes models never holds
two in memory. Low-VRAM loads are not kept: accelerate's offload hooks belong to one run.

A VSD run puts a LoRA into the kept UNet (guidance/estimators/lora.py: one UNet, its adapter
off for the pretrained pass). It is taken out when the parts are handed to the next job, not
when the run ends: a run that fails or is cancelled ends in many places, and the next load is
the one moment every path goes through. So a job never sees the last one's adapter.
"""
from __future__ import annotations

_enabled = False
_kept: dict[tuple, dict] = {}
_counts = {"loads": 0, "hits": 0}


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on
    if not on:
        _kept.clear()


def stats() -> dict:
    """How often this process loaded a judge's weights and how often it reused kept ones."""
    return dict(_counts)


def holds(module) -> bool:
    """Whether `module` is one of the kept parts (the text encoder goes back to the CPU after use)."""
    return any(module is part for parts in _kept.values() for part in parts.values())


def as_loaded(module) -> None:
    """Remove any adapter a run added (diffusers' unload_lora puts the original layers back)."""
    if getattr(module, "_hf_peft_config_loaded", False) and hasattr(module, "unload_lora"):
        module.unload_lora()


def load(key: tuple, loader, *, keep: bool = True) -> dict:
    """The parts `loader()` returns, from the cache when the same `key` was loaded before.

    The caller gets its own dict (it pops parts from it); the modules in it are shared."""
    if _enabled and keep and key in _kept:
        _counts["hits"] += 1
        for part in _kept[key].values():
            as_loaded(part)
        return dict(_kept[key])
    if _enabled and keep:
        _kept.clear()  # one judge at a time: drop the old one before the new one is in memory
    parts = loader()
    _counts["loads"] += 1
    if _enabled and keep:
        _kept[key] = dict(parts)
    return parts
