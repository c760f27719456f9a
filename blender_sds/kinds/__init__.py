"""The registry of judges: guidance kinds, score-distillation rules and the methods built on them, by name (stdlib only).

Both halves read it. The job contract (job.py) takes a kind's names and defaults from
here and nowhere else; the engine imports the implementation a spec names ("module:Class")
only when it builds a run, so this module never imports torch. A kind or rule is added by
one `register_kind` / `register_rule` call, with no edit elsewhere (builtin.py and pocket.py
register the project's own).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class KindSpec:
    """A noise predictor the engine can judge renders with, and the defaults it brings."""

    name: str
    predictor: str  # "module:Class" of the engine's NoisePredictor; imported by the engine only
    scale: float  # default guidance.scale (CFG strength that kind's images were made at)
    text: bool = True  # judged against the prompt: the prompt is required, view_dependent defaults on
    model: str = "required"  # guidance.model: "required", "optional" or "none"
    single_file: bool = True  # guidance.model may be a .safetensors/.ckpt checkpoint
    views: bool = False  # guidance.views (image + camera pairs) are its data
    own_cameras: bool = False  # cameras.mode rig/mixed may have no rig: the kind brings its cameras
    regularise: bool = True  # optim.orientation and optim.sparsity default on
    pose_matched: bool | None = None  # guidance.pose_matched's default; None: the kind has no such option
    opaque: float = 0.0  # default optim.opaque
    target_jitter: float = 0.05  # default cameras.jitter.target, in bounds sizes
    presets: dict | None = None  # its own preset table (same names as job.PRESETS); None: the shared one
    check_prompt: Callable[[str], str | None] | None = None  # the problem with a prompt it cannot draw, or None
    check_negative: Callable[[str], str | None] | None = None  # the same for negative prompts; None: check_prompt
    front_bias: float | None = None  # guidance.front_bias's default; None: the kind has no such option
    # The CFG its images are sampled at: guidance.scale's default under a rule made for normal CFG
    # (NFSD, CSD, VSD); None: the kind's `scale` whatever the rule.
    sampling_scale: float | None = None
    # Where a kind's normal CFG is too weak to form a shape (the pocket teacher's), such a rule's
    # default instead holds this scale over the run's first half and ramps to sampling_scale by 80%
    # (job.py NORMAL_CFG_RAMP); None: sampling_scale throughout.
    shape_scale: float | None = None
    # guidance.estimator.lr's default (VSD, ESD); None: job.ESTIMATOR's, threestudio's 1e-3 for a LoRA
    # of a pretrained UNet. A judge whose estimator starts from scratch (estimators/pixel.py) needs more.
    estimator_lr: float | None = None


@dataclass(frozen=True)
class RuleSpec:
    """How noise predictions become a gradient on the render (SDS, and its successors)."""

    name: str
    rule: str  # "module:Class" of the engine's rule; imported by the engine only
    summary: str = ""
    view_prompts: bool = False  # needs the direction prompts: text kinds with guidance.view_dependent on
    sampling_cfg: bool = False  # made for the kind's normal CFG: guidance.scale defaults to its sampling_scale
    negative_prompt: str = ""  # the published negative prompt, the job's negative_prompt when it gives none
    weighting: str = "sds"  # guidance.weighting's default under this rule
    estimator: bool = False  # trains an estimator of the renders' own noise (guidance.estimator)


@dataclass(frozen=True)
class MethodSpec:
    """A named remedy an artist picks (the add-on's Method): a rule and the guidance keys it goes with.

    `guidance` holds job keys (docs/JOB.md), so a method is nothing the job cannot say itself.
    """

    name: str
    label: str
    summary: str  # one line: what it does and what it costs (the add-on's tooltip)
    guidance: dict


_KINDS: dict[str, KindSpec] = {}
_RULES: dict[str, RuleSpec] = {}
_METHODS: dict[str, MethodSpec] = {}
DEFAULT_RULE = "sds"
# The method text-prompted jobs and the add-on's Method choice start from: the measured best
# of `bench janus` (docs/QUALITY.md "Janus": no Janus, no cost in shape or colour, SDS's cost).
DEFAULT_METHOD = "view-prompts"


def register_kind(spec: KindSpec) -> KindSpec:
    if spec.model not in ("required", "optional", "none"):
        raise ValueError(f"kind {spec.name!r}: model must be required, optional or none, got {spec.model!r}")
    _KINDS[spec.name] = spec
    return spec


def register_rule(spec: RuleSpec) -> RuleSpec:
    _RULES[spec.name] = spec
    return spec


def register_method(spec: MethodSpec) -> MethodSpec:
    _METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget a kind, rule or method (tests that register their own clean up with this)."""
    _KINDS.pop(name, None)
    _RULES.pop(name, None)
    _METHODS.pop(name, None)


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def rule_names() -> tuple[str, ...]:
    return tuple(_RULES)


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def method(name: str) -> MethodSpec:
    return _METHODS[name]


def kind(name: str) -> KindSpec:
    return _KINDS[name]


def rule(name: str) -> RuleSpec:
    return _RULES[name]


def load(path: str):
    """The object a spec names as "module:attr" (engine side: this may import torch)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


from . import builtin, pocket  # noqa: E402,F401  (they register the project's own kinds and rules)
