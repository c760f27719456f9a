"""Add-on preferences: how to reach a worker, which model, which device, where to cache.

Scripts reach them as `bpy.context.preferences.addons[<package>].preferences` with the
names below (`worker_python`, `model_source`, `model`, `device`, ...); `get()` finds the package name,
which depends on the repository the extension was installed into.
"""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import paths, worker_env
from .errors import ArtistError

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
PREFS_PATH = "Edit > Preferences > Add-ons > SDS Text to Mesh"
POCKET_HINT = "prompts 'a <colour> <shape>' or 'a <colour> <shape> with a <colour> front', e.g. 'a red cube'"
# The judge of a run. The pocket world is offered by name so a first-time user finds a model
# that works with no download; its vocabulary is the engine's (blender_sds/engine/pocket).
MODEL_SOURCES = [
    ("STABLE_DIFFUSION", "Stable Diffusion",
     "A Stable Diffusion model: the hub id, diffusers folder or checkpoint in Model"),
    ("POCKET", "Pocket World (offline demo)",
     "A small built-in world of simple shapes for trying the add-on with no download: " + POCKET_HINT
     + " (a prompt outside it is refused with the words it knows)"),
]


class SDS_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = paths.ADDON_ID

    worker_mode: EnumProperty(
        name="Worker",
        items=[("PYTHON", "Python Interpreter", "Run the engine with a Python that has torch and diffusers"),
               ("MANAGED", "Managed Environment", "Run the engine in an environment this add-on sets up"),
               ("REMOTE", "Remote Worker", "Connect to 'python -m blender_sds.engine serve' on another machine")],
        default="PYTHON")
    worker_python: StringProperty(
        name="Worker Python", subtype="FILE_PATH",
        description="A Python interpreter with torch and diffusers installed (e.g. a venv's bin/python)")
    remote_address: StringProperty(name="Address", description="host:port of a remote worker, e.g. 127.0.0.1:8765")
    remote_token: StringProperty(name="Token", subtype="PASSWORD",
                                 description="The secret the remote worker was started with (its --token-file)")
    remote_fingerprint: StringProperty(
        name="Fingerprint",
        description="The SHA-256 fingerprint of the remote worker's certificate, as 'serve' prints it when it "
                    "starts: pinned like an SSH host key, so a server whose certificate does not match is refused")
    remote_tls: BoolProperty(
        name="TLS", default=True,
        description="Encrypt the connection and check the server's certificate against Fingerprint. Off: plain "
                    "TCP, allowed only to a loopback address (127.0.0.1, ::1), e.g. the local end of an SSH tunnel")
    worker_timeout: IntProperty(
        name="Worker Timeout", min=2, max=3600, default=120, subtype="TIME_ABSOLUTE",
        description="Seconds without a word (not even a heartbeat) after which a worker is taken for stuck and "
                    "ended")
    model_source: EnumProperty(name="Model Source", items=MODEL_SOURCES, default="STABLE_DIFFUSION",
                               description="What judges the renders: a Stable Diffusion model, or the offline "
                                           "demo world")
    model: StringProperty(
        name="Model", default=DEFAULT_MODEL,
        description="A Hugging Face hub id (org/name), a local diffusers folder, or a single-file checkpoint")
    device: EnumProperty(
        name="Device",
        items=[("AUTO", "Auto", "CUDA if present, then Apple MPS, then the CPU"),
               ("CUDA", "CUDA", "An NVIDIA GPU"), ("MPS", "Apple MPS", "An Apple Silicon GPU"),
               ("CPU", "CPU", "The processor (very slow)")],
        default="AUTO")
    low_vram: BoolProperty(name="Low VRAM", default=False,
                           description="Keep the diffusion model in system memory and move parts to the GPU "
                                       "as needed: slower, but fits smaller GPUs")
    cache_folder: StringProperty(
        name="Cache Folder", subtype="DIR_PATH",
        description="Where model weights and run results are kept (empty: the extension's user folder)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "worker_mode")
        box = layout.box()
        if self.worker_mode == "PYTHON":
            box.prop(self, "worker_python")
            if self.worker_python and not os.path.isfile(bpy.path.abspath(self.worker_python)):
                box.label(text="No file at this path", icon="ERROR")
        elif self.worker_mode == "MANAGED":
            python = worker_env.env_python()
            ready = os.path.isfile(python)
            box.label(text=python if ready else "Not set up yet", icon="CHECKMARK" if ready else "INFO")
            setup = worker_env.current()
            if setup is not None:
                box.label(text=setup.message, icon="ERROR" if setup.state == "failed" else "TIME")
            box.operator("sds.setup_worker", text="Reinstall Worker Environment" if ready
                         else "Set Up Worker Environment", icon="IMPORT")
        else:
            box.prop(self, "remote_address")
            box.prop(self, "remote_token")
            box.prop(self, "remote_tls")
            if self.remote_tls:
                box.prop(self, "remote_fingerprint")
                if not self.remote_fingerprint.strip():
                    box.label(text="Paste the fingerprint 'serve' printed when it started", icon="ERROR")
            else:
                box.label(text="Plain TCP: only to a loopback address, e.g. the local end of an SSH tunnel",
                          icon="INFO")
        layout.prop(self, "worker_timeout")
        layout.prop(self, "model_source")
        if self.model_source == "POCKET":
            layout.label(text="Offline demo, no download: " + POCKET_HINT, icon="INFO")
        else:
            layout.prop(self, "model")
        row = layout.row()
        row.prop(self, "device")
        row.prop(self, "low_vram")
        layout.prop(self, "cache_folder")
        if not self.cache_folder:
            where = bpy.utils.extension_path_user(paths.ADDON_ID, path="cache", create=False)
            layout.label(text=f"Cache: {where}", icon="FILE_FOLDER")


def get(context=None):
    context = context or bpy.context
    return context.preferences.addons[paths.ADDON_ID].preferences


def device_name(prefs) -> str | None:
    return None if prefs.device == "AUTO" else prefs.device.lower()


def remote_address(prefs) -> tuple[str, int]:
    """(host, port) of the remote worker, or ArtistError saying how to write it."""
    text = prefs.remote_address.strip()
    if not text:
        raise ArtistError("No remote worker address is set: in " + PREFS_PATH + " set Address to host:port of a "
                          "machine running 'python -m blender_sds.engine serve', or set Worker to Python Interpreter")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:8765
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ArtistError(f"Remote worker address {text!r} must be host:port, e.g. 192.168.1.20:8765 or "
                          f"[::1]:8765: fix Address in " + PREFS_PATH)
    return host, int(port)


def worker_python(prefs) -> str:
    """The interpreter that runs the worker, or ArtistError saying how to provide one."""
    if prefs.worker_mode == "MANAGED":
        path = worker_env.env_python()
        if not os.path.isfile(path):
            raise ArtistError("The managed worker environment is not set up: press Set Up Worker Environment in "
                              + PREFS_PATH)
        return path
    if not prefs.worker_python.strip():
        raise ArtistError("No Worker Python is set: in " + PREFS_PATH + " set Worker Python to a Python that has "
                          "torch and diffusers, or choose Managed Environment and press Set Up")
    path = bpy.path.abspath(prefs.worker_python.strip())
    if not os.path.isfile(path):
        raise ArtistError(f"Worker Python not found: {path!r} does not exist. In " + PREFS_PATH + " set Worker "
                          "Python to an existing Python interpreter that has torch and diffusers")
    if not os.access(path, os.X_OK):
        raise ArtistError(f"Worker Python {path!r} is not executable: point it at a Python interpreter")
    return path
