"""Where a diffusion model's weights come from: a hub id, a local folder or one checkpoint file.

Every way of naming a model is resolved here to something on this disk before a model
class sees it, so a missing download, an offline machine or a wrong folder becomes one
`ModelSourceError` that names `guidance.model` and says what to do, instead of a deep
traceback from huggingface_hub in the middle of a run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ....job import HUB_ID, SINGLE_FILE_SUFFIXES
_TRUE = {"1", "true", "yes", "on"}
# What a pipeline's config-only snapshot needs: model_index.json, every component's
# config, tokenizer vocabularies (CLIP json/txt, T5 sentencepiece).
_CONFIG_PATTERNS = ["*.json", "*/*.json", "*/*.txt", "*/*.model"]


try:  # huggingface_hub's errors are OSErrors; raw transport errors from httpx are not
    import httpx
    HUB_ERRORS: tuple[type[BaseException], ...] = (OSError, httpx.TransportError)
except ImportError:  # pragma: no cover - older huggingface_hub uses requests (OSErrors)
    HUB_ERRORS = (OSError,)


class ModelSourceError(ValueError):
    """The model named by the job cannot be used as given; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder", "single_file" or "hub"
    location: str  # absolute path for folder/single_file, "org/name" for hub

    def __str__(self) -> str:
        return self.location


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it only once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def classify(model: str, key: str = "guidance.model") -> ModelSource:
    """Decide what `model` names without touching the network."""
    if not isinstance(model, str) or not model.strip():
        raise ModelSourceError(f"{key}: must name a hub id (org/name), a local diffusers folder "
                               f"or a single-file .safetensors/.ckpt checkpoint, got {model!r}")
    text = model.strip()
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelSourceError(f"{key}: {text!r} is a file but not a .safetensors/.ckpt/.pt checkpoint")
        return ModelSource("single_file", str(path.resolve()))
    looks_like_path = (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
                       or path.suffix.lower() in SINGLE_FILE_SUFFIXES or path.is_absolute())
    if looks_like_path or not HUB_ID.match(text):
        raise ModelSourceError(f"{key}: no such file or folder {text!r} (and it is not a hub id of the "
                               f"form org/name)")
    return ModelSource("hub", text)


def fetch_pipeline_folder(repo_id: str, skip: tuple[str, ...] = (), key: str = "guidance.model",
                          single_file_ok: bool = True) -> Path:
    """A hub pipeline repo as a local snapshot folder (from the cache when offline).

    `skip` names components the engine never uses (safety checker, feature extractor,
    watermarker) so their weights are not downloaded.
    """
    local = "a local diffusers folder" + (" or a single-file .safetensors/.ckpt checkpoint" if single_file_ok else "")
    from diffusers import DiffusionPipeline

    offline = hub_offline()
    try:
        return Path(DiffusionPipeline.download(repo_id, local_files_only=offline, **{name: None for name in skip}))
    except HUB_ERRORS as error:
        if offline:
            raise ModelSourceError(f"{key}: {repo_id!r} is not in the local Hugging Face cache and downloads "
                                   f"are off (HF_HUB_OFFLINE=1). Run once with network access (unset "
                                   f"HF_HUB_OFFLINE) to download it, or set {key} to {local}") from error
        raise ModelSourceError(f"{key}: could not download {repo_id!r} from the Hugging Face Hub "
                               f"({type(error).__name__}: {error}). Check the id and the network, or set "
                               f"{key} to {local}") from error


def fetch_config_folder(repo_id: str, key: str = "guidance.config") -> Path:
    """Only the configs and tokenizer files of a hub pipeline (what a single file lacks)."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_CONFIG_PATTERNS, local_files_only=offline))
    except HUB_ERRORS as error:
        if offline:
            raise ModelSourceError(
                f"{key}: the configs of {repo_id!r} are not in the local Hugging Face cache and downloads "
                f"are off (HF_HUB_OFFLINE=1). Run once with network access, or set {key} to a local "
                f"diffusers folder of the same model family") from error
        raise ModelSourceError(f"{key}: could not download the configs of {repo_id!r} "
                               f"({type(error).__name__}: {error})") from error


def diffusers_dtype(dtype) -> dict:
    """The weight-dtype keyword for diffusers' loaders: `dtype` where it exists (torch_dtype is
    deprecated there), `torch_dtype` on releases that would silently ignore `dtype`."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (marks the rename)
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def require_parts(folder: Path, parts: tuple[str, ...], what: str, key: str = "guidance.model") -> None:
    """Refuse a folder that lacks the files a model of this kind must have, naming them."""
    missing = [part for part in parts if not (folder / part).exists()]
    if missing:
        raise ModelSourceError(f"{key}: {str(folder)!r} is not {what}: missing {', '.join(missing)}")


def single_file_keys(path: Path) -> set[str] | None:
    """Tensor names of a .safetensors file (cheap: the header only); None for pickled .ckpt."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except Exception as error:  # safetensors raises its own SafetensorError for a bad header
        raise ModelSourceError(f"guidance.model: {str(path)!r} is not a readable .safetensors file "
                               f"({error})") from error
