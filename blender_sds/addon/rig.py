"""Scene cameras -> the job's camera records (docs/JOB.md "Camera record").

A record is what the engine needs to render exactly the picture Blender would: `c2w` is
the camera's `matrix_world` with scale removed (Blender's camera looks down -Z with +Y
up, the engine's convention too), and pixel intrinsics with the origin at the top-left
corner and y down. The intrinsics follow Blender's own camera model: the sensor is fitted
to the larger side of the frame (AUTO) or to the side the camera names, shift is measured
in units of that fitted side, and the pixel aspect stretches y. `angle_x` is deliberately
not used: it is not the field of view of a portrait or shifted frame.
"""
from __future__ import annotations

from mathutils import Matrix

from .errors import ArtistError

MAX_SIZE = 8192  # the job's limit on width/height
_UNSUPPORTED = {"ORTHO": "orthographic", "PANO": "panoramic"}


def render_size(scene) -> tuple[int, int]:
    """The frame Blender renders, in pixels (integer arithmetic, as Blender does)."""
    r = scene.render
    return (r.resolution_x * r.resolution_percentage // 100,
            r.resolution_y * r.resolution_percentage // 100)


def intrinsics(scene, cam) -> dict:
    """fx, fy, cx, cy (pixels, top-left origin, y down), width, height for camera data `cam`."""
    r = scene.render
    width, height = render_size(scene)
    aspect = r.pixel_aspect_y / r.pixel_aspect_x
    fit = cam.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if r.pixel_aspect_x * width >= r.pixel_aspect_y * height else "VERTICAL"
        sensor = cam.sensor_width  # AUTO applies sensor_width to the larger side
    else:
        sensor = cam.sensor_width if fit == "HORIZONTAL" else cam.sensor_height
    view = width if fit == "HORIZONTAL" else aspect * height
    fx = cam.lens / sensor * view
    return {"width": width, "height": height, "fx": fx, "fy": fx / aspect,
            "cx": width / 2 - cam.shift_x * view, "cy": height / 2 + cam.shift_y * view / aspect}


def rigid(matrix: Matrix) -> Matrix:
    """`matrix` without its scale: rotation and translation only."""
    loc, rot, _scale = matrix.decompose()
    out = rot.to_matrix().to_4x4()
    out.translation = loc
    return out


def object_frame(ob) -> tuple[Matrix, float]:
    """An object's rigid frame and uniform scale; a non-uniform scale cannot carry a camera."""
    scale = ob.matrix_world.to_scale()
    s = sum(abs(v) for v in scale) / 3
    if ob.matrix_world.to_3x3().determinant() <= 0 or max(abs(abs(v) - s) for v in scale) > 1e-4 * s:
        raise ArtistError(f"Object '{ob.name}' has a non-uniform or negative scale {tuple(round(v, 4) for v in scale)}: "
                          "apply its scale (Object > Apply > Scale) before refining it")
    return rigid(ob.matrix_world), s


def camera_record(scene, ob, frame: tuple[Matrix, float] | None = None) -> dict:
    """The job record for camera object `ob`; `frame` (from object_frame) expresses it in an
    object's own frame instead of the world's (refining an object the artist moved)."""
    cam = ob.data
    if cam.type in _UNSUPPORTED:
        raise ArtistError(f"Camera '{ob.name}' is {_UNSUPPORTED[cam.type]}: SDS needs perspective cameras. "
                          "Set its Lens Type to Perspective, or choose another Camera Source")
    if ob.matrix_world.to_3x3().determinant() <= 0:
        raise ArtistError(f"Camera '{ob.name}' is mirrored by a negative scale: clear its scale (Alt+S)")
    record = intrinsics(scene, cam)
    if not (1 <= record["width"] <= MAX_SIZE and 1 <= record["height"] <= MAX_SIZE):
        raise ArtistError(f"The render size {record['width']}x{record['height']} px is outside 1..{MAX_SIZE}: "
                          "change Output Properties > Format > Resolution")
    c2w = rigid(ob.matrix_world)
    if frame is not None:
        base, scale = frame
        c2w = base.inverted() @ c2w
        c2w.translation = c2w.translation / scale
    record["c2w"] = [list(map(float, row)) for row in c2w]
    record["c2w"][3] = [0.0, 0.0, 0.0, 1.0]
    record["type"] = cam.type
    record["name"] = ob.name
    return record


CAMERA_SOURCES = ("SCENE", "SELECTED")


def rig_objects(scene, source: str, selected=()) -> list:
    """The camera objects a camera source names, or ArtistError saying how to get some."""
    if source == "SELECTED":
        cameras = [ob for ob in selected if ob.type == "CAMERA"]
        if not cameras:
            raise ArtistError("Camera Source is Selected Cameras but no camera is selected: select the cameras "
                              "to learn from, or set Camera Source to Orbit")
    else:
        cameras = [ob for ob in scene.objects if ob.type == "CAMERA"]
        if not cameras:
            raise ArtistError("Camera Source needs scene cameras but the scene has none: add a camera "
                              "(Add > Camera) and aim it at the asset, or set Camera Source to Orbit")
    return sorted(cameras, key=lambda ob: ob.name)


def rig_records(scene, objects, frame=None) -> list[dict]:
    return [camera_record(scene, ob, frame) for ob in objects]
