"""The job file: the one contract between the Blender add-on and the engine (docs/JOB.md).

Standard library only, because both halves import it: the add-on validates the job it
is about to send, the engine validates the job it is about to run. Validation returns a
*normalised* job (every key present, defaults filled in, paths absolute) so no other
module ever guesses a default, and every bad input is a `JobError` whose message starts
with the dotted key path, says what was wanted and shows what was found.
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import os
import re
import stat

from . import json_gate, kinds

SCHEMA_VERSION = 1
PRESETS: dict[str, dict] = {
    "draft": {"steps": 1500, "render": {"resolution": 64, "batch": 1, "samples": 96}, "mesh_resolution": 128,
              "field": "draft"},
    "standard": {"steps": 5000, "render": {"resolution": 64, "batch": 1, "samples": 128}, "mesh_resolution": 192,
                 "field": "standard"},
    "high": {"steps": 10000, "render": {"resolution": 128, "batch": 2, "samples": 192}, "mesh_resolution": 256,
             "field": "high"},
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CAMERA_TYPES = ("PERSP", "ORTHO", "PANO")
_UNSUPPORTED_CAMERAS = {"ORTHO": "orthographic", "PANO": "panoramic"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")  # org/name
_ROTATION_TOLERANCE = 1e-4
_MISSING = object()

_TOP_KEYS = ("version", "prompt", "negative_prompt", "seed", "preset", "steps", "bounds", "guidance",
             "cameras", "render", "optim", "init", "mesh", "output")
_GUIDANCE_KEYS = ("kind", "rule", "model", "config", "scale", "t_range", "t_schedule", "weighting", "grad_clip",
                  "view_dependent", "dtype", "low_vram", "cuda_graphs", "views", "pose_matched", "perp_neg", "estimator",
                  "front_bias")
# Perp-Neg's negative weights w = -(a exp(-b r) + c) per pair of directions (threestudio's defaults):
# front-side, side-front, side-back and front-side-back, r the camera's place between the two.
PERP_NEG_WEIGHTS = {"f_fs": [4.0, 0.5, -2.426], "f_sf": [4.0, 0.5, -2.426], "f_sb": [1.0, 0.5, -0.606],
                    "f_fsb": [1.0, 0.5, 0.967]}
# A kind with a shape_scale: under a normal-CFG rule its default scale is held until this share of
# the run (the shape phase: optim.shape_steps, optim.shape_colour) and reaches the sampling scale
# soon after (docs/QUALITY.md "Saturation").
NORMAL_CFG_RAMP = (0.7, 0.75)
# VSD's estimator (threestudio's stable_diffusion_vsd_guidance): its learning rate, LoRA rank, the
# share of its training steps without the camera, and lambda mixing its camera-conditioned and
# camera-free predictions (guidance_scale_lora: 1.0 VSD, 0.5 ESD).
ESTIMATOR = {"lr": 1e-3, "rank": 4, "camera_dropout": 0.1, "camera_scale": 1.0, "density_scale": None}
_CAMERA_KEYS = ("c2w", "width", "height", "fx", "fy", "cx", "cy", "type", "name")
MAX_JOB_BYTES = 16 * 1024 * 1024  # a job with a 1,000-camera rig is under 1 MB
MAX_MESSAGE = 293  # characters of one error line: with the CLI's "error: " in front, at most 300
MAX_KEY_ECHO = 60  # characters of an unknown key name shown back
# Physical sense, past what a finite-number check lets through (docs/JOB.md "Limits").
BOUNDS_SIZE = (1e-3, 1e4)  # a millimetre to ten kilometres, in Blender units (metres)
MAX_COORDINATE = 1e6  # bounds centre and camera positions
MAX_RENDER_POINTS = 2**31  # render resolution^2 x batch x samples: past int32 indexing, and ~TBs of memory
MESH_SUFFIXES = (".npz", ".obj", ".ply", ".glb", ".gltf", ".stl", ".off")  # init.mesh: ours, or through trimesh
SHAPE_COLOURS = ("frozen", "restart")  # optim.shape_colour: the colour in the shape phase
KEEP_SHAPE_SCHEDULES = ("constant", "linear")  # linear: falls to zero at the last step
DEFAULT_KEEP_SHAPE = 10.0  # with init.mesh; docs/QUALITY.md "Starting from a mesh" measures the choices
DEFAULT_TARGET_FACES = 30000  # an editable mesh; 0 keeps every marching-cubes face
DEFAULT_SMOOTH = 40  # Taubin steps on the extracted surface; docs/QUALITY.md "Smoothing" measures the choice


def preset_table(kind: str) -> dict[str, dict]:
    """The presets of a guidance kind: its own where the registry gives one (the pocket world's, sized
    for a CPU), else the shared ones."""
    return kinds.kind(kind).presets or PRESETS


class JobError(ValueError):
    """A bad job: `key` is the dotted path of the offending value, `problem` what was wrong."""

    def __init__(self, key: str, problem: str):
        key, problem = _clip(key, MAX_KEY_ECHO * 2), _clip(problem, MAX_MESSAGE - min(len(key), MAX_KEY_ECHO * 2) - 2)
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _clip(text: str, limit: int) -> str:
    """One line of at most `limit` characters: whatever the input echoed, the message stays readable."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


# -- reading one value ------------------------------------------------------------------------

def _describe(value) -> str:
    """A value as the job's author wrote it (JSON spelling), short enough for one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, numbers.Real):
        text = repr(float(value)) if isinstance(value, float) else str(value)
    else:
        try:
            text = json.dumps(value, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
        if isinstance(value, dict):
            text = "an object " + text
    return text if len(text) <= 80 else text[:77] + "..."


def _join(key: str, name) -> str:
    name = _clip(repr(name) if not isinstance(name, str) else name, MAX_KEY_ECHO)
    return f"{key}.{name}" if key else name


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _object(raw, key: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(raw, dict):
        raise JobError(key, f"must be an object, got {_describe(raw)}")
    for name in raw:
        if name not in allowed:
            raise JobError(_join(key, name), f"unknown key; allowed keys: {', '.join(allowed)}")
    return raw


def _int(value, key: str, lo: int, hi: int | None = None) -> int:
    span = f"{lo} .. {hi}" if hi is not None else f">= {lo}"
    if not _is_int(value):
        raise JobError(key, f"must be an int {span}, got {_describe(value)}")
    if value < lo or (hi is not None and value > hi):
        raise JobError(key, f"must be an int {span}, got {_describe(value)}")
    return int(value)


def _number(value, key: str, *, gt: float | None = None, ge: float | None = None,
            le: float | None = None) -> float:
    bounds = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else "",
              f"<= {le:g}" if le is not None else ""]
    wanted = "a number " + " and ".join(b for b in bounds if b) if any(bounds) else "a finite number"
    if not _is_number(value):
        raise JobError(key, f"must be {wanted}, got {_describe(value)}")
    if not _finite(value):
        raise JobError(key, f"must be a finite number, got {_describe(value)}")
    x = float(value)
    if (gt is not None and not x > gt) or (ge is not None and not x >= ge) or (le is not None and not x <= le):
        raise JobError(key, f"must be {wanted}, got {_describe(value)}")
    return x


def _str(value, key: str) -> str:
    if not isinstance(value, str):
        raise JobError(key, f"must be a string, got {_describe(value)}")
    return value


def _bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise JobError(key, f"must be true or false, got {_describe(value)}")
    return value


def _choice(value, key: str, choices, what: str) -> str:
    if not isinstance(value, str):
        raise JobError(key, f"must be a string, one of {', '.join(choices)}; got {_describe(value)}")
    if value not in choices:
        raise JobError(key, f"unknown {what} {_describe(value)}; {what}s: {', '.join(choices)}")
    return value


def _list(value, key: str, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise JobError(key, f"must be {what}, got {_describe(value)}")
    return list(value)


def _numbers(value, key: str, count: int) -> list[float]:
    """A fixed-length list of finite numbers, as floats."""
    wanted = f"a list of {count} finite numbers"
    items = _list(value, key, wanted)
    if len(items) != count or not all(_is_number(x) for x in items):
        raise JobError(key, f"must be {wanted}, got {_describe(value)}")
    if not all(_finite(x) for x in items):
        raise JobError(key, f"must be {wanted} (no NaN or infinity), got {_describe(value)}")
    return [float(x) for x in items]


def _range(value, key: str, *, lo: float | None = None, hi: float | None = None,
           positive: bool = False) -> list[float]:
    """A [lo, hi] pair with lo <= hi, inside [lo, hi] limits when given."""
    a, b = _numbers(value, key, 2)
    if a > b:
        raise JobError(key, f"must be [lo, hi] with lo <= hi, got {_describe(value)}")
    if positive and a <= 0:
        raise JobError(key, f"must be [lo, hi] with 0 < lo <= hi, got {_describe(value)}")
    if (lo is not None and a < lo) or (hi is not None and b > hi):
        raise JobError(key, f"must lie within {lo:g} .. {hi:g}, got {_describe(value)}")
    return [a, b]


def _resolve(path: str, base_dir) -> str:
    """An absolute path: relative paths are read against the job file's folder (or cwd)."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(os.fspath(base_dir) if base_dir is not None else os.getcwd(), path)
    return os.path.abspath(path)


def _existing_file(value, key: str, base_dir) -> str:
    text = _str(value, key)
    if not text.strip():
        raise JobError(key, "must be a file path, got an empty string")
    path = _resolve(text, base_dir)
    if not os.path.isfile(path):
        problem = "is a folder, not a file" if os.path.isdir(path) else "no such file"
        raise JobError(key, f"{problem}: {path!r} (from {text!r})")
    return path


# -- cameras ----------------------------------------------------------------------------------

def _c2w(value, key: str) -> list[list[float]]:
    wanted = "a 4x4 matrix (4 rows of 4 numbers)"
    rows = _list(value, key, wanted)
    if len(rows) != 4 or not all(isinstance(r, (list, tuple)) and len(r) == 4 for r in rows):
        raise JobError(key, f"must be {wanted}, got {_describe(value)}")
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            if not _is_number(x):
                raise JobError(key, f"must be {wanted}; row {i}, column {j} is {_describe(x)}")
            if not _finite(x):
                raise JobError(key, f"must be finite; row {i}, column {j} is {_describe(x)}")
    m = [[float(x) for x in row] for row in rows]
    if any(abs(m[3][j] - (0.0, 0.0, 0.0, 1.0)[j]) > 1e-6 for j in range(4)):
        raise JobError(key, f"last row must be [0, 0, 0, 1], got {_describe(rows[3])}")
    cols = [[m[i][j] for i in range(3)] for j in range(3)]
    norms = [math.sqrt(sum(c * c for c in col)) for col in cols]
    if any(abs(n - 1.0) > _ROTATION_TOLERANCE for n in norms):
        lengths = ", ".join(f"{n:.4g}" for n in norms)
        raise JobError(key, f"rotation part is scaled (column lengths {lengths}); "
                            "give matrix_world with the scale removed")
    for a, b in ((0, 1), (0, 2), (1, 2)):
        dot = sum(x * y for x, y in zip(cols[a], cols[b]))
        if abs(dot) > _ROTATION_TOLERANCE:
            raise JobError(key, f"rotation part is sheared (columns {a} and {b} have dot product {dot:.4g}, "
                                "not 0)")
    (a, b, c), (d, e, f), (g, h, k) = (m[0][:3], m[1][:3], m[2][:3])
    det = a * (e * k - f * h) - b * (d * k - f * g) + c * (d * h - e * g)
    if det < 0:
        raise JobError(key, f"rotation part is a reflection (determinant {det:.4g}, must be +1)")
    return m


def validate_camera(raw, key: str) -> dict:
    """One camera record (docs/JOB.md "Camera record"), normalised: every key present."""
    cam = _object(raw, key, _CAMERA_KEYS)
    for name in ("c2w", "width", "height", "fx", "fy", "cx", "cy"):
        if name not in cam:
            raise JobError(_join(key, name), "missing (every camera record needs c2w, width, height, fx, fy, cx, cy)")
    kind = cam.get("type", "PERSP")
    kind = _choice(kind, _join(key, "type"), CAMERA_TYPES, "camera type")
    if kind in _UNSUPPORTED_CAMERAS:
        raise JobError(_join(key, "type"), f"{_UNSUPPORTED_CAMERAS[kind]} cameras are not supported yet "
                                           f"(got {kind!r}); use a perspective camera")
    name = cam.get("name")
    if name is not None:
        name = _str(name, _join(key, "name"))
    c2w = _c2w(cam["c2w"], _join(key, "c2w"))
    if any(abs(c2w[i][3]) > MAX_COORDINATE for i in range(3)):
        raise JobError(_join(key, "c2w"), f"the camera stands over {MAX_COORDINATE:g} units from the origin "
                                          f"({_describe([row[3] for row in c2w[:3]])}); move it near the object")
    width = _int(cam["width"], _join(key, "width"), 1, 8192)
    height = _int(cam["height"], _join(key, "height"), 1, 8192)
    out = {"c2w": c2w, "width": width, "height": height, "type": kind, "name": name}
    # Focal lengths from a 0.0006-degree telephoto to a 179.8-degree wide angle; the principal
    # point within ten frames of the frame's centre (Blender's lens shift goes to 2 frames).
    for axis, side in (("x", width), ("y", height)):
        focal = _number(cam[f"f{axis}"], _join(key, f"f{axis}"), gt=0)
        if not 1e-3 * side <= focal <= 1e5 * side:
            raise JobError(_join(key, f"f{axis}"), f"must be between {1e-3:g} and {1e5:g} times the frame "
                                                   f"({side} px), got {_describe(cam[f'f{axis}'])}")
        centre = _number(cam[f"c{axis}"], _join(key, f"c{axis}"))
        if abs(centre - side / 2) > 10 * side:
            raise JobError(_join(key, f"c{axis}"), f"the principal point must lie within 10 frames of the frame's "
                                                   f"centre ({side / 2:g} px), got {_describe(cam[f'c{axis}'])}")
        out[f"f{axis}"], out[f"c{axis}"] = focal, centre
    return {k: out[k] for k in ("c2w", "width", "height", "fx", "fy", "cx", "cy", "type", "name")}


def sees_bounds(camera: dict, bounds: dict) -> bool:
    """Whether any of the bounds cube can be inside the centre square of the camera's frame (what
    training renders; cameras.square_crop). Generous: a camera inside the cube, or with the cube
    reaching behind it, sees it; else the box of the corners' projections must meet the square.
    A camera refused here sees nothing of the object."""
    m, half = camera["c2w"], bounds["size"] / 2
    eye = [m[i][3] for i in range(3)]
    if all(abs(eye[i] - bounds["center"][i]) <= half for i in range(3)):
        return True
    us, vs, behind = [], [], 0
    for corner in range(8):
        p = [bounds["center"][i] + (half if corner >> i & 1 else -half) - eye[i] for i in range(3)]
        x, y, z = (sum(m[r][c] * p[r] for r in range(3)) for c in range(3))  # world -> camera: R^T p
        if z >= 0:  # at or behind the camera (it looks down -z)
            behind += 1
            continue
        us.append(camera["cx"] + camera["fx"] * x / -z)
        vs.append(camera["cy"] - camera["fy"] * y / -z)
    if behind:  # all behind: it looks away; some: the cube reaches round beside the camera
        return behind < 8
    side = min(camera["width"], camera["height"])
    left, top = (camera["width"] - side) / 2, (camera["height"] - side) / 2
    return max(us) >= left and min(us) <= left + side and max(vs) >= top and min(vs) <= top + side


def _check_cameras_see(cameras: list[tuple[str, dict]], bounds: dict) -> None:
    for key, camera in cameras:
        if not sees_bounds(camera, bounds):
            name = f" ({_describe(camera['name'])})" if camera.get("name") else ""
            raise JobError(key, f"camera{name} does not see the bounds (centre "
                                          f"{_describe(bounds['center'])}, size {bounds['size']:g}); aim it at the "
                                          "object, or pick another camera")


# -- sections ---------------------------------------------------------------------------------

def _bounds(raw) -> dict:
    b = _object(raw, "bounds", ("center", "size"))
    center = _numbers(b.get("center", [0.0, 0.0, 0.0]), "bounds.center", 3)
    if any(abs(x) > MAX_COORDINATE for x in center):
        raise JobError("bounds.center", f"each coordinate must be within +-{MAX_COORDINATE:g}, got {_describe(center)}")
    size = _number(b.get("size", 2.0), "bounds.size", gt=0)
    if not BOUNDS_SIZE[0] <= size <= BOUNDS_SIZE[1]:
        raise JobError("bounds.size", f"must be between {BOUNDS_SIZE[0]:g} and {BOUNDS_SIZE[1]:g} (Blender units), "
                                      f"got {_describe(b.get('size'))}")
    return {"center": center, "size": size}


def _model_source(value, key: str, base_dir, *, single_file: bool) -> tuple[str, bool]:
    """A hub id, an existing folder (absolute), or when allowed an existing single file.

    Returns (source, is_single_file). A local folder wins over a hub id of the same
    spelling, as in diffusers.
    """
    text = _str(value, key)
    if not text.strip():
        raise JobError(key, "must not be empty")
    path = _resolve(text, base_dir)
    if text.lower().endswith(SINGLE_FILE_SUFFIXES):
        if not single_file:
            raise JobError(key, f"must be a hub id (org/name) or a diffusers folder here, "
                                f"not a single-file checkpoint; got {text!r}")
        if not os.path.isfile(path):
            raise JobError(key, f"no such file: {path!r} (from {text!r})")
        return path, True
    if os.path.isdir(path):
        return path, False
    if HUB_ID.match(text):
        return text, False
    files = f", nor a {'/'.join(SINGLE_FILE_SUFFIXES)} file" if single_file else ""
    raise JobError(key, f"{text!r} is neither a hub id (org/name) nor an existing diffusers folder "
                        f"({path}){files}")


def _grad_clip(value, key: str):
    if value is None:
        return None
    return _ramp(value, key, "null, a number > 0, or [start_step, start_value, end_value, end_step]")


def _scale(value, key: str):
    """A CFG scale, or a ramp of it: a high scale while the shape forms, a low one for faithful colours."""
    wanted = "a number > 0 and <= 1000, or [start_step, start_value, end_value, end_step]"
    if _is_number(value):
        return _number(value, key, gt=0, le=1000)
    ramp = _ramp(value, key, wanted)
    if max(ramp[1], ramp[2]) > 1000:
        raise JobError(key, f"start_value and end_value must be <= 1000, got {_describe(value)}")
    return ramp


def _ramp(value, key: str, wanted: str):
    """A number > 0, or [start_step, start_value, end_value, end_step] (held before and after)."""
    if _is_number(value):
        return _number(value, key, gt=0)
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise JobError(key, f"must be {wanted}, got {_describe(value)}")
    s0, v0, v1, s1 = value
    if not (_is_int(s0) and _is_int(s1) and 0 <= s0 < s1):
        raise JobError(key, f"start_step and end_step must be ints with 0 <= start_step < end_step, "
                            f"got {_describe(value)}")
    if not all(_is_number(v) and _finite(v) and v > 0 for v in (v0, v1)):
        raise JobError(key, f"start_value and end_value must be finite numbers > 0, got {_describe(value)}")
    return [int(s0), float(v0), float(v1), int(s1)]


def _views(value, key: str, base_dir) -> list[dict]:
    items = _list(value, key, "a list of {\"image\": path, \"camera\": camera record}")
    out = []
    for i, raw in enumerate(items):
        vkey = f"{key}[{i}]"
        view = _object(raw, vkey, ("image", "camera"))
        for name in ("image", "camera"):
            if name not in view:
                raise JobError(_join(vkey, name), "missing (every view needs an image and a camera)")
        out.append({"image": _existing_file(view["image"], _join(vkey, "image"), base_dir),
                    "camera": validate_camera(view["camera"], _join(vkey, "camera"))})
    return out


def _guidance(raw, base_dir) -> dict:
    g = _object(raw, "guidance", _GUIDANCE_KEYS)
    if "kind" not in g:
        raise JobError("guidance.kind", f"missing; kinds: {', '.join(kinds.kind_names())}")
    kind = _choice(g["kind"], "guidance.kind", kinds.kind_names(), "kind")
    spec = kinds.kind(kind)

    model, single_file = g.get("model"), False
    if spec.model == "none" and model is not None:
        why = " (its views are the data)" if spec.views else ""
        raise JobError("guidance.model", f"not used by guidance kind {kind!r}{why}, got {_describe(model)}")
    if model is None and spec.model == "required":
        raise JobError("guidance.model", f"required for guidance kind {kind!r}: a hub id (org/name), "
                                         "a diffusers folder or a single-file checkpoint; missing")
    if model is not None:
        model, single_file = _model_source(model, "guidance.model", base_dir, single_file=spec.single_file)
    config = g.get("config")
    if config is not None:
        if not single_file:
            raise JobError("guidance.config", f"only used with a single-file checkpoint model "
                                              f"(guidance.model is {_describe(g.get('model'))}), "
                                              f"got {_describe(config)}")
        config, _ = _model_source(config, "guidance.config", base_dir, single_file=False)

    lo, hi = _numbers(g.get("t_range", [0.02, 0.98]), "guidance.t_range", 2)
    if not 0 < lo < hi < 1:
        raise JobError("guidance.t_range", f"must be [lo, hi] with 0 < lo < hi < 1, got {_describe(g['t_range'])}")

    views = g.get("views")
    if spec.views:
        if not views:
            raise JobError("guidance.views", f"required for guidance kind {kind!r}: a non-empty list of "
                                             f"{{\"image\": path, \"camera\": camera record}}, got {_describe(views)}")
        views = _views(views, "guidance.views", base_dir)
    else:
        if views is not None and views != []:
            takers = ", ".join(repr(n) for n in kinds.kind_names() if kinds.kind(n).views)
            raise JobError("guidance.views", f"only for guidance kind {takers}, not {kind!r}; "
                                             f"got {_describe(views)}")
        views = []

    # A text kind starts from the default method's rule and view prompts; the others from plain SDS.
    start = (kinds.method(kinds.DEFAULT_METHOD).guidance if spec.text
             else {"rule": kinds.DEFAULT_RULE, "view_dependent": False})
    rule = _choice(g.get("rule", start["rule"]), "guidance.rule", kinds.rule_names(), "rule")
    view_dependent = _bool(g.get("view_dependent", start["view_dependent"]), "guidance.view_dependent")
    rule_spec = kinds.rule(rule)
    _rule_fits(rule_spec, spec, view_dependent)
    # A rule made for normal CFG starts from the CFG the kind's images are sampled at.
    scale = spec.sampling_scale if rule_spec.sampling_cfg and spec.sampling_scale else spec.scale
    pose_matched = _pose_matched(g.get("pose_matched", bool(spec.pose_matched)), spec)
    return {
        "kind": kind,
        "rule": rule,
        "model": model,
        "config": config,
        "scale": _scale(g.get("scale", scale), "guidance.scale"),
        "t_range": [lo, hi],
        "t_schedule": _choice(g.get("t_schedule", "random"), "guidance.t_schedule", ("random", "anneal"),
                              "t_schedule"),
        "weighting": _choice(g.get("weighting", rule_spec.weighting), "guidance.weighting", ("sds", "uniform", "fantasia3d"),
                             "weighting"),
        "grad_clip": _grad_clip(g.get("grad_clip"), "guidance.grad_clip"),
        "view_dependent": view_dependent,
        "dtype": _choice(g.get("dtype", "auto"), "guidance.dtype", ("auto", "float16", "float32"), "dtype"),
        "low_vram": _bool(g.get("low_vram", False), "guidance.low_vram"),
        # Replay the judge from CUDA graphs (on CUDA without low_vram; elsewhere it changes nothing).
        "cuda_graphs": _bool(g.get("cuda_graphs", True), "guidance.cuda_graphs"),
        "views": views,
        "pose_matched": pose_matched,
        "perp_neg": _perp_neg(g.get("perp_neg"), rule),
        "estimator": _estimator(g.get("estimator"), rule_spec, spec),
        "front_bias": _front_bias(g.get("front_bias"), spec, pose_matched),
    }


def _rule_fits(rule: kinds.RuleSpec, spec: kinds.KindSpec, view_dependent: bool) -> None:
    """A rule that works on the direction prompts needs a text-prompted kind that uses them."""
    if not rule.view_prompts:
        return
    if not spec.text:
        raise JobError("guidance.rule", f"{rule.name!r} mixes the prompt's direction prompts, and guidance kind "
                                        f"{spec.name!r} has no prompt; use 'sds'")
    if not view_dependent:
        raise JobError("guidance.view_dependent", f"guidance.rule {rule.name!r} needs the view-dependent prompts "
                                                  "(its positive and negatives are them): true, or leave it out; "
                                                  "got false")


def _perp_neg(value, rule: str) -> dict | None:
    """Perp-Neg's weights; None under any other rule (so a normalised job validates again as it is)."""
    if rule != "perp-neg" and value is None:
        return None
    if value is None:
        return copy.deepcopy(PERP_NEG_WEIGHTS)
    if rule != "perp-neg":
        raise JobError("guidance.perp_neg", f"only for guidance.rule 'perp-neg', not {rule!r}; got {_describe(value)}")
    given = _object(value, "guidance.perp_neg", tuple(PERP_NEG_WEIGHTS))
    return {name: _numbers(given.get(name, default), f"guidance.perp_neg.{name}", 3)
            for name, default in PERP_NEG_WEIGHTS.items()}


def _normal_cfg_ramp(guidance: dict, spec: kinds.KindSpec, steps: int):
    """The default scale, as a ramp from the kind's shape_scale to its sampling_scale where it has one
    and the rule is made for normal CFG; the default scale unchanged otherwise."""
    if spec.shape_scale is None or not kinds.rule(guidance["rule"]).sampling_cfg:
        return guidance["scale"]
    start = round(NORMAL_CFG_RAMP[0] * steps)
    end = max(round(NORMAL_CFG_RAMP[1] * steps), start + 1)
    return [start, float(spec.shape_scale), float(spec.sampling_scale), end]


def _estimator(value, rule: kinds.RuleSpec, spec: kinds.KindSpec) -> dict | None:
    """The trained estimator's settings (VSD, ESD); None under a rule that trains none."""
    if not rule.estimator:
        if value is None:
            return None
        takers = ", ".join(repr(n) for n in kinds.rule_names() if kinds.rule(n).estimator)
        raise JobError("guidance.estimator", f"only for guidance.rule {takers}, not {rule.name!r}; "
                                             f"got {_describe(value)}")
    given = _object({} if value is None else value, "guidance.estimator", tuple(ESTIMATOR))
    return {
        "lr": _number(given.get("lr", spec.estimator_lr or ESTIMATOR["lr"]), "guidance.estimator.lr", gt=0, le=1),
        "rank": _int(given.get("rank", ESTIMATOR["rank"]), "guidance.estimator.rank", 1, 256),
        "camera_dropout": _number(given.get("camera_dropout", ESTIMATOR["camera_dropout"]),
                                  "guidance.estimator.camera_dropout", ge=0, le=1),
        "camera_scale": _number(given.get("camera_scale", ESTIMATOR["camera_scale"]),
                                "guidance.estimator.camera_scale", ge=0, le=1),
        "density_scale": (None if given.get("density_scale") is None else
                          _number(given["density_scale"], "guidance.estimator.density_scale", ge=1, le=1000)),
    }


def _front_bias(value, spec: kinds.KindSpec, pose_matched: bool) -> float | None:
    """The camera-blind teacher's share of data whose camera sees an object's front (its photo-collection
    bias); None where unused (pose-matched, or another kind), so a normalised job validates again as it is."""
    if value is None:
        return None if pose_matched else spec.front_bias
    if spec.front_bias is None:
        takers = ", ".join(repr(n) for n in kinds.kind_names() if kinds.kind(n).front_bias is not None)
        raise JobError("guidance.front_bias", f"only for guidance kind {takers}, not {spec.name!r}; "
                                              f"got {_describe(value)}")
    if pose_matched:
        raise JobError("guidance.front_bias", "only for the camera-blind teacher (guidance.pose_matched false): "
                                              "a pose-matched teacher renders its data at the judged camera; "
                                              f"got {_describe(value)}")
    return _number(value, "guidance.front_bias", ge=0, le=1)


def _pose_matched(value, spec: kinds.KindSpec) -> bool:
    """Only a kind that can render its data at the judged camera offers it (the registry says so)."""
    matched = _bool(value, "guidance.pose_matched")
    if matched and spec.pose_matched is None:
        takers = ", ".join(repr(n) for n in kinds.kind_names() if kinds.kind(n).pose_matched is not None)
        raise JobError("guidance.pose_matched", f"only for guidance kind {takers}, not {spec.name!r}; got true")
    return matched


def _cameras(raw, spec: kinds.KindSpec) -> dict:
    c = _object(raw, "cameras", ("mode", "rig", "elevation", "azimuth", "distance", "fovy", "jitter",
                                 "rig_fraction"))
    mode = _choice(c.get("mode", "orbit"), "cameras.mode", ("orbit", "rig", "mixed"), "mode")
    rig_raw = _list(c.get("rig", []), "cameras.rig", "a list of camera records")
    rig = [validate_camera(cam, f"cameras.rig[{i}]") for i, cam in enumerate(rig_raw)]
    if mode in ("rig", "mixed") and not rig and not spec.own_cameras:
        raise JobError("cameras.rig", f"must list at least one camera when cameras.mode is {mode!r}, got []")
    jitter = _object(c.get("jitter", {}), "cameras.jitter", ("position", "rotation", "target"))
    return {
        "mode": mode,
        "rig": rig,
        "elevation": _range(c.get("elevation", [-10.0, 45.0]), "cameras.elevation", lo=-90, hi=90),
        "azimuth": _range(c.get("azimuth", [-180.0, 180.0]), "cameras.azimuth", lo=-360, hi=360),
        "distance": _range(c.get("distance", [1.5, 2.0]), "cameras.distance", lo=0.01, hi=1000, positive=True),
        "fovy": _range(c.get("fovy", [40.0, 70.0]), "cameras.fovy", lo=1, hi=170),
        "jitter": {"position": _number(jitter.get("position", 0.02), "cameras.jitter.position", ge=0, le=1),
                   "rotation": _number(jitter.get("rotation", 1.0), "cameras.jitter.rotation", ge=0, le=180),
                   "target": _number(jitter.get("target", spec.target_jitter),
                                     "cameras.jitter.target", ge=0, le=1)},
        "rig_fraction": _number(c.get("rig_fraction", 0.5), "cameras.rig_fraction", ge=0, le=1),
    }


def _render(raw, preset: dict) -> dict:
    r = _object(raw, "render", ("resolution", "batch", "samples"))
    d = preset["render"]
    render = {"resolution": _int(r.get("resolution", d["resolution"]), "render.resolution", 8, 1024),
              "batch": _int(r.get("batch", d["batch"]), "render.batch", 1, 64),
              "samples": _int(r.get("samples", d["samples"]), "render.samples", 8, 2048)}
    total = render["resolution"] ** 2 * render["batch"] * render["samples"]
    if total > MAX_RENDER_POINTS:
        raise JobError("render", f"resolution^2 x batch x samples is {total:.3g} points a step, over "
                                 f"{MAX_RENDER_POINTS:.3g} (terabytes of memory); lower render.resolution, "
                                 "render.batch or render.samples")
    return render


def _optim(raw, spec: kinds.KindSpec, steps: int, init: dict, shape_steps: int, rule: str) -> dict:
    o = _object(raw, "optim", ("lr", "orientation", "sparsity", "opaque", "albedo_steps", "shape_steps",
                               "shape_colour", "keep_shape", "keep_shape_schedule"))
    from_mesh = init["mesh"] is not None
    text = spec.regularise
    counted = {}
    for key, default in (("albedo_steps", int(0.2 * steps)), ("shape_steps", shape_steps)):
        counted[key] = _int(o.get(key, default), f"optim.{key}", 0)
        if counted[key] > steps:
            raise JobError(f"optim.{key}", f"must be at most steps ({steps}), got {counted[key]}")
    return {"lr": _number(o.get("lr", 0.01), "optim.lr", gt=0, le=1),
            "orientation": _number(o.get("orientation", 10.0 if text else 0.0), "optim.orientation", ge=0),
            "sparsity": _number(o.get("sparsity", 1.0 if text else 0.0), "optim.sparsity", ge=0),
            "opaque": _number(o.get("opaque", spec.opaque), "optim.opaque", ge=0),
            **counted,
            "shape_colour": _shape_colour(o.get("shape_colour"), rule, init, counted["shape_steps"]),
            "keep_shape": _keep_shape(o.get("keep_shape", DEFAULT_KEEP_SHAPE if from_mesh else 0.0), from_mesh),
            "keep_shape_schedule": _choice(o.get("keep_shape_schedule", "constant"), "optim.keep_shape_schedule",
                                           KEEP_SHAPE_SCHEDULES, "schedule")}


def _shape_colour(value, rule: str, init: dict, shape_steps: int) -> str:
    """The measured default (docs/QUALITY.md "Saturation"): VSD's shape comes out closer with a
    colour that learns and then restarts; a start that brings its colours (init.mesh, a refined
    checkpoint) keeps them frozen instead, as every other rule does."""
    if value is None:
        fresh = init["mesh"] is None and init["checkpoint"] is None
        return "restart" if fresh and rule == "vsd" and shape_steps > 0 else "frozen"
    return _choice(value, "optim.shape_colour", SHAPE_COLOURS, "mode")


def _keep_shape(value, from_mesh: bool) -> float:
    weight = _number(value, "optim.keep_shape", ge=0, le=1000)
    if weight > 0 and not from_mesh:
        raise JobError("optim.keep_shape", f"keeps the shape of init.mesh, which is null; got {weight:g} "
                                           f"(set init.mesh, or 0)")
    return weight


def _init(raw, base_dir) -> dict:
    i = _object(raw, "init", ("checkpoint", "resume", "mesh"))
    checkpoint = i.get("checkpoint")
    if checkpoint is not None:
        checkpoint = _existing_file(checkpoint, "init.checkpoint", base_dir)
    resume = _bool(i.get("resume", False), "init.resume")
    if resume and checkpoint is None:
        raise JobError("init.resume", "true needs init.checkpoint (the run to continue), which is null")
    mesh = i.get("mesh")
    if mesh is not None:
        mesh = _existing_file(mesh, "init.mesh", base_dir)
        suffix = os.path.splitext(mesh)[1].lower()
        if suffix not in MESH_SUFFIXES:
            raise JobError("init.mesh", f"must be a {', '.join(MESH_SUFFIXES)} file, got {_clip(os.path.basename(mesh), MAX_KEY_ECHO)!r}")
        if checkpoint is not None and not resume:  # resuming, the mesh is still the shape to keep, not refitted
            raise JobError("init.mesh", "and init.checkpoint are two starting points; give one (the other null), "
                                        "or set init.resume to continue a run that started from the mesh")
    return {"checkpoint": checkpoint, "resume": resume, "mesh": mesh}


def _mesh(raw, preset: dict) -> dict:
    m = _object(raw, "mesh", ("resolution", "threshold", "min_component", "target_faces", "smooth"))
    threshold = m.get("threshold", "auto")
    if threshold != "auto":
        if isinstance(threshold, str) or not _is_number(threshold):
            raise JobError("mesh.threshold", f"must be \"auto\" or a number > 0, got {_describe(threshold)}")
        threshold = _number(threshold, "mesh.threshold", gt=0)
    return {"resolution": _int(m.get("resolution", preset["mesh_resolution"]), "mesh.resolution", 16, 1024),
            "threshold": threshold,
            "min_component": _number(m.get("min_component", 0.05), "mesh.min_component", ge=0, le=1),
            "target_faces": _target_faces(m.get("target_faces", DEFAULT_TARGET_FACES)),
            "smooth": _int(m.get("smooth", DEFAULT_SMOOTH), "mesh.smooth", 0, 1000)}


def _target_faces(value) -> int:
    faces = _int(value, "mesh.target_faces", 0, 10**8)
    if 0 < faces < 100:
        raise JobError("mesh.target_faces", f"must be 0 (keep every face) or at least 100, got {faces}")
    return faces


def _output(raw) -> dict:
    o = _object(raw, "output", ("preview_every", "checkpoint_every", "progress_every"))
    return {"preview_every": _int(o.get("preview_every", 250), "output.preview_every", 0),
            "checkpoint_every": _int(o.get("checkpoint_every", 1000), "output.checkpoint_every", 0),
            "progress_every": _int(o.get("progress_every", 10), "output.progress_every", 1)}


# -- the whole job ----------------------------------------------------------------------------

def validate_job(raw: dict, base_dir: str | os.PathLike | None = None) -> dict:
    """Check a raw job and return its normalised form (a new dict; `raw` is not changed).

    Relative paths are read against `base_dir` (the job file's folder; cwd when None).
    Validating a normalised job again gives the same job.
    """
    if not isinstance(raw, dict):
        raise JobError("job", f"must be a JSON object, got {_describe(raw)}")
    if "version" not in raw:
        raise JobError("version", f"missing; this engine reads version {SCHEMA_VERSION}")
    version = raw["version"]
    if not _is_int(version):
        raise JobError("version", f"must be the int {SCHEMA_VERSION}, got {_describe(version)}")
    if version != SCHEMA_VERSION:
        raise JobError("version", f"unsupported job version {version}; this engine reads version {SCHEMA_VERSION}")
    _object(raw, "", _TOP_KEYS)
    if "guidance" not in raw:
        raise JobError("guidance", f"missing; it names the 2D judge, e.g. {{\"kind\": \"stable-diffusion\", "
                                   f"\"model\": \"org/name\"}}")
    guidance = _guidance(raw["guidance"], base_dir)
    kind = guidance["kind"]
    spec = kinds.kind(kind)

    prompt = _str(raw.get("prompt", ""), "prompt")
    if spec.text and not prompt.strip():
        raise JobError("prompt", f"must not be empty for guidance kind {kind!r}, got {prompt!r}")
    negative = _str(raw.get("negative_prompt", ""), "negative_prompt")
    if not negative.strip() and spec.text:  # a rule's published negative, when the job gives none
        negative = kinds.rule(guidance["rule"]).negative_prompt
    checks = (("prompt", prompt, spec.check_prompt), ("negative_prompt", negative, spec.check_negative or spec.check_prompt))
    for key, text, check in checks:  # a kind that draws only its own words: say so before any worker starts
        if check is not None and (key == "prompt" or text.strip()):
            problem = check(text)
            if problem is not None:
                raise JobError(key, problem)
    preset_name = _choice(raw.get("preset", "standard"), "preset", tuple(PRESETS), "preset")
    preset = preset_table(kind)[preset_name]
    init = _init(raw.get("init", {}), base_dir)
    steps = _int(raw.get("steps", preset["steps"]), "steps", 0, 100000)
    if steps == 0 and init["mesh"] is None:
        raise JobError("steps", "must be at least 1; 0 (fit init.mesh and stop) needs init.mesh")

    shape_steps = 0  # the shape phase of the default ramp trains the shape alone
    if "scale" not in raw["guidance"]:
        guidance["scale"] = _normal_cfg_ramp(guidance, spec, steps)
        shape_steps = guidance["scale"][0] if isinstance(guidance["scale"], list) else 0
        if shape_steps and guidance["estimator"] and "density_scale" not in (raw["guidance"].get("estimator") or {}):
            guidance["estimator"]["density_scale"] = float(spec.shape_scale)  # the density keeps the shape phase's CFG
    bounds = _bounds(raw.get("bounds", {}))
    cameras = _cameras(raw.get("cameras", {}), spec)
    _check_cameras_see([(f"cameras.rig[{i}]", c) for i, c in enumerate(cameras["rig"])]
                       + [(f"guidance.views[{i}].camera", v["camera"]) for i, v in enumerate(guidance["views"])],
                       bounds)
    return {
        "version": SCHEMA_VERSION,
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": _int(raw.get("seed", 0), "seed", 0, 2**32 - 1),
        "preset": preset_name,
        "steps": steps,
        "bounds": bounds,
        "guidance": guidance,
        "cameras": cameras,
        "render": _render(raw.get("render", {}), preset),
        "optim": _optim(raw.get("optim", {}), spec, steps, init, shape_steps, guidance["rule"]),
        "init": init,
        "mesh": _mesh(raw.get("mesh", {}), preset),
        "output": _output(raw.get("output", {})),
    }


def load_job(path) -> dict:
    """Read, parse and validate a job file; its relative paths are read against its folder."""
    path = os.fspath(path)
    try:
        kind = os.stat(path).st_mode  # before open: opening a FIFO would wait for a writer forever
        if stat.S_ISDIR(kind):
            raise JobError(path, "is a folder, not a job file")
        if not stat.S_ISREG(kind):
            raise JobError(path, "is not a regular file (a pipe, device or socket); save the job to a file")
        with open(path, "rb") as f:
            data = f.read(MAX_JOB_BYTES + 1)  # a link to /dev/zero grew since the check: read no more
        if len(data) > MAX_JOB_BYTES:
            raise JobError(path, f"is over {MAX_JOB_BYTES // 2**20} MiB; a job file is a few kB")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise JobError(path, "no such job file") from None
    except UnicodeDecodeError as e:
        raise JobError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise JobError(path, f"cannot read the job file: {e.strerror or e}") from None
    try:
        raw = json_gate.loads(text)  # depth and number length bounded before the parse
    except json_gate.JsonGateError as e:
        raise JobError(path, str(e)) from None
    return validate_job(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def with_steps(job: dict, steps: int) -> dict:
    """A normalised job re-made for another step count (`run --steps N`): the keys counted in its
    steps (optim.albedo_steps and shape_steps, a guidance.scale ramp) keep their share of the run, and the
    whole is validated again."""
    steps = _int(steps, "steps", 0 if job["init"].get("mesh") else 1, 100000)
    return validate_job(rescaled(job, steps))


def rescaled(job: dict, steps: int) -> dict:
    """A copy of a job (normalised or not) with `steps` set and the keys counted in its old steps
    moved to keep their share of the run: optim.albedo_steps and shape_steps, a guidance.scale
    ramp. A key that is missing or not a count is left for validation to judge. Not validated."""
    raw = copy.deepcopy(job)
    old = job.get("steps")
    raw["steps"] = steps
    if not _is_int(old) or old < 1:
        return raw

    def moved(count):
        return round(count * steps / old)

    optim = raw.get("optim")
    for key in ("albedo_steps", "shape_steps"):
        if isinstance(optim, dict) and _is_int(optim.get(key)):
            optim[key] = min(moved(optim[key]), steps)
    guidance = raw.get("guidance")
    scale = guidance.get("scale") if isinstance(guidance, dict) else None
    if isinstance(scale, list) and len(scale) == 4 and _is_int(scale[0]) and _is_int(scale[3]):
        start = moved(scale[0])  # a ramp keeps its place in the run
        guidance["scale"] = [start, scale[1], scale[2], max(moved(scale[3]), start + 1)]
    return raw


def dumps(job: dict) -> str:
    """Canonical JSON of a normalised job: sorted keys, indent 2, strict JSON (no NaN)."""
    return json.dumps(job, sort_keys=True, indent=2, allow_nan=False)


def merge_overrides(base: dict, extra: dict) -> dict:
    """`extra` over `base`, as a new job (neither changes): objects merged key by key, anything
    else replaced. How the add-on's Job Overrides and `bench quality --override` edit a job."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
