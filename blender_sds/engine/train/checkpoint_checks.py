"""Refusing a damaged or foreign checkpoint by name, before any of it is loaded.

`init.checkpoint` is whatever file the artist (or a client of `serve`) points at, so one of
the right format may still be wrong inside: a key missing, a tensor of another shape, NaN
weights, a `step` that is no number, an optimiser state that cannot continue a run. Loaded
as it is, each surfaces as torch's own text (KeyError, "size mismatch") or trains on
garbage. Here everything the restore will read is compared with what this job's freshly
built modules hold, and each problem becomes one ValueError line that names the file and
the key inside it and says what to do. Nothing is loaded until the whole file has passed,
so a refused checkpoint leaves the run untouched.

A refine (no `init.resume`) reads the trained parts, the occupancy grid, `field_config` and
the job's bounds; only a resume reads `step` and `optimizer`, so only a resume checks them.
An empty optimiser state is fine to refine from (a refine starts a fresh optimiser) and to
resume at step 0; resuming a later step from it is refused.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

MAX_MESSAGE = 293  # with the CLI's "error: " in front, at most 300 characters
DAMAGED = ("the file is damaged or was not written by blender-sds; use another checkpoint or start without "
           "init.checkpoint")
OTHER_PRESET = "use the preset it was made with, or start without init.checkpoint"
OTHER_ESTIMATOR = ("use the guidance.estimator.rank and guidance.model it was made with, or start without "
                   "init.checkpoint")
DIVERGED = "the run had diverged when it was saved; use an earlier checkpoint or start without init.checkpoint"
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b.|[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """Text with terminal escape codes and line breaks removed (torch colours some messages)."""
    return " ".join(_ESCAPES.sub(" ", str(text)).split())


def refuse(path, key: str, problem: str, advice: str = DAMAGED) -> ValueError:
    """The one-line error: `init.checkpoint: FILE: KEY PROBLEM; ADVICE`, at most MAX_MESSAGE characters."""
    where = one_line(path)
    where = where if len(where) <= 100 else "..." + where[-97:]
    head = f"{key} {problem}" if key else problem
    message = one_line(f"init.checkpoint: {where}: {head}; {advice}")
    return ValueError(message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 3] + "...")


def describe(value) -> str:
    """A short, escape-free picture of a value found in the file."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = one_line(repr(value))
    return f"a {type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


def name(key) -> str:
    text = one_line(key if isinstance(key, str) else repr(key))
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(tensor: torch.Tensor, path, key: str) -> None:
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise refuse(path, key, f"holds {bad} NaN or infinite value{'s' if bad != 1 else ''}", DIVERGED)


def check_like(actual, expected, path, key: str, owner: str) -> None:
    """`actual` (from the file) has the structure, shapes and dtypes of `expected` (this job's own), all finite."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            raise refuse(path, key, f"is {describe(actual)}, not a tensor")
        if actual.shape != expected.shape:
            if owner == "estimator":  # VSD's network: its size is the job's rank and model, not the preset
                raise refuse(path, key, f"has shape {tuple(actual.shape)}, this job's estimator needs "
                                        f"{tuple(expected.shape)}", OTHER_ESTIMATOR)
            raise refuse(path, key, f"has shape {tuple(actual.shape)}, this job's {owner} needs "
                                    f"{tuple(expected.shape)} (was it made with another preset?)", OTHER_PRESET)
        if actual.dtype != expected.dtype:
            raise refuse(path, key, f"is {actual.dtype}, this job's {owner} needs {expected.dtype}")
        check_finite(actual, path, key)
    elif isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            raise refuse(path, key, f"is {describe(actual)}, not a table of the {owner}'s values")
        for k in expected:
            if k not in actual:
                raise refuse(path, f"{key}.{name(k)}", "is missing")
        for k in actual:
            if k not in expected:
                raise refuse(path, f"{key}.{name(k)}", f"is not part of this job's {owner}")
            check_like(actual[k], expected[k], path, f"{key}.{name(k)}", owner)
    elif is_number(expected):
        if not is_number(actual) or (isinstance(expected, int) and not isinstance(actual, int)):
            kind = "an int" if isinstance(expected, int) else "a number"
            raise refuse(path, key, f"is {describe(actual)}, not {kind}")
        if not math.isfinite(actual):
            raise refuse(path, key, f"is {actual}", DIVERGED)
    elif type(actual) is not type(expected):
        raise refuse(path, key, f"is {describe(actual)}, this job's {owner} has {describe(expected)}")


def check_scene(state: dict, path, expected: dict, parts: list[str], required: list[str]) -> None:
    """What every start from a checkpoint reads: the preset and bounds it was made for, the parts, the grid."""
    config = state.get("field_config")
    if not isinstance(config, Mapping):
        raise refuse(path, "field_config", "is missing" if config is None else f"is {describe(config)}, not a table")
    if dict(config) != expected["field_config"]:
        differ = [f"{k} {name(config.get(k))}, this job's {v}" for k, v in expected["field_config"].items()
                  if config.get(k) != v]
        raise refuse(path, "field_config", f"was made with another preset ({'; '.join(differ) or 'other entries'})",
                     OTHER_PRESET)
    job = state.get("job")
    bounds = job.get("bounds") if isinstance(job, Mapping) else None
    if not isinstance(bounds, Mapping):
        raise refuse(path, "job.bounds", "is missing" if not isinstance(job, Mapping) or "bounds" not in job
                     else f"is {describe(bounds)}, not a table")
    center, size = bounds.get("center"), bounds.get("size")
    if not (isinstance(center, (list, tuple)) and len(center) == 3 and all(is_number(c) for c in center)):
        raise refuse(path, "job.bounds.center", f"is {describe(center)}, not 3 numbers")
    if not is_number(size):
        raise refuse(path, "job.bounds.size", f"is {describe(size)}, not a number")
    want = expected["job"]["bounds"]
    if list(center) != list(want["center"]) or size != want["size"]:
        raise refuse(path, "job.bounds", f"is center {list(center)} size {size}, this job's bounds are center "
                                         f"{list(want['center'])} size {want['size']}",
                     "set bounds to the checkpoint's to continue from it, or start without init.checkpoint")
    for part in parts:
        if part in state:  # a judge's own part starts afresh when refining another rule's run
            check_like(state[part], expected[part], path, part, part)
        elif part in required:
            raise refuse(path, part, "is missing (no state to continue from)")
    if "occupancy" not in state:
        raise refuse(path, "occupancy", "is missing")
    check_like(state["occupancy"], expected["occupancy"], path, "occupancy", "occupancy grid")
    if state["occupancy"]["resolution"] != expected["occupancy"]["resolution"]:
        raise refuse(path, "occupancy.resolution", f"is {state['occupancy']['resolution']}, this engine's grid is "
                                                   f"{expected['occupancy']['resolution']}")


NO_RESUME = "start without init.resume to refine from the field instead"


def check_step(state: dict, path, steps: int) -> int:
    if "step" not in state:
        raise refuse(path, "step", "is missing", NO_RESUME)
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool):
        raise refuse(path, "step", f"is {describe(step)}, not a whole number", NO_RESUME)
    if not 0 <= step <= steps:
        raise refuse(path, "step", f"is {step}, outside 0 .. this job's steps ({steps})",
                     f"set steps above {step} to continue, or {NO_RESUME}" if step > 0 else NO_RESUME)
    return step


def check_groups(saved, path, groups: list[list[torch.Size]]) -> dict:
    """The saved parameter groups match this optimiser's; returns {saved parameter id: its shape here}."""
    if not isinstance(saved, list) or not saved:
        raise refuse(path, "optimizer.param_groups", f"is {'empty' if not saved else describe(saved)}, "
                                                     "so the run cannot continue", NO_RESUME)
    if len(saved) != len(groups):
        raise refuse(path, "optimizer.param_groups", f"has {len(saved)} groups, this job's optimiser has "
                                                     f"{len(groups)} (another guidance rule?)", NO_RESUME)
    shapes = {}
    for i, (group, want) in enumerate(zip(saved, groups)):
        key = f"optimizer.param_groups[{i}]"
        params = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(params, list) or len(params) != len(want) or \
                not all(isinstance(p, int) and not isinstance(p, bool) for p in params):
            raise refuse(path, f"{key}.params", f"is {describe(params)}, this job's group has {len(want)} "
                                                "parameters", NO_RESUME)
        for k in ("lr", "eps", "weight_decay"):  # these are taken from the file, not the job
            if k in group and not (is_number(group[k]) and math.isfinite(group[k]) and group[k] >= 0):
                raise refuse(path, f"{key}.{k}", f"is {describe(group[k])}, not a number >= 0", NO_RESUME)
        betas = group.get("betas", (0.9, 0.99))
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and
                all(is_number(b) and 0 <= b < 1 for b in betas)):
            raise refuse(path, f"{key}.betas", f"is {describe(betas)}, not two numbers in [0, 1)", NO_RESUME)
        shapes.update(zip(params, want))
    if len(shapes) != sum(len(w) for w in groups):
        raise refuse(path, "optimizer.param_groups", "names a parameter twice", NO_RESUME)
    return shapes


def check_moments(saved, path, shapes: dict, step: int) -> None:
    """Each parameter's saved moments have its shape and are finite; none at all only at step 0."""
    if not isinstance(saved, Mapping):
        raise refuse(path, "optimizer.state", "is missing" if saved is None else f"is {describe(saved)}, not a table",
                     NO_RESUME)
    if not saved and step > 0:
        raise refuse(path, "optimizer.state", f"is empty, but the run was at step {step}", NO_RESUME)
    for pid, entry in saved.items():
        key = f"optimizer.state.{name(pid)}"
        if pid not in shapes:
            raise refuse(path, key, "belongs to no parameter in optimizer.param_groups", NO_RESUME)
        if not isinstance(entry, Mapping):
            raise refuse(path, key, f"is {describe(entry)}, not a table", NO_RESUME)
        for k, value in entry.items():
            if not isinstance(value, torch.Tensor):
                if not (is_number(value) and math.isfinite(value)):
                    raise refuse(path, f"{key}.{name(k)}", f"is {describe(value)}, not a number", NO_RESUME)
            elif value.dim() > 0 and value.shape != shapes[pid]:
                raise refuse(path, f"{key}.{name(k)}", f"has shape {tuple(value.shape)}, its parameter has "
                                                       f"{tuple(shapes[pid])}", NO_RESUME)
            else:
                check_finite(value, path, f"{key}.{name(k)}")


def check_resume(state: dict, path, steps: int, groups: list[list[torch.Size]]) -> None:
    """What only a resume reads: the step reached and an optimiser state that fits this job's parameters."""
    step = check_step(state, path, steps)
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, Mapping):
        raise refuse(path, "optimizer", "is missing" if optimizer is None else f"is {describe(optimizer)}, "
                                                                               "not a table", NO_RESUME)
    shapes = check_groups(optimizer.get("param_groups"), path, groups)
    check_moments(optimizer.get("state"), path, shapes, step)


def check_checkpoint(state: dict, path, *, expected: dict, parts: list[str], required: list[str], resume: bool,
                     steps: int, groups: list[list[torch.Size]]) -> None:
    """Raise ValueError naming the file and key for the first problem in `state` (see the module's docstring).

    expected: this job's own `Run.state()`; parts: its trained parts' names, `required` those the file must
    hold; steps: the job's step count; groups: the shapes of the optimiser's parameters, group by group."""
    check_scene(state, path, expected, parts, required)
    if resume:
        check_resume(state, path, steps, groups)
