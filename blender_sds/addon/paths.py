"""Where things live: the installed package (read only) and the user folders (ours to write).

Nothing is ever written inside the add-on folder: it may be read-only and is replaced on
upgrade. Results, the model cache and the managed worker environment go under
`bpy.utils.extension_path_user`, or wherever the artist points the cache folder.
"""
from __future__ import annotations

import os

import bpy

from .. import __package__ as ADDON_ID  # "bl_ext.<repo>.blender_sds": never hard-code it

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "blender_sds"  # what the worker imports; the extension folder carries this name


def vendor_dir() -> str:
    return os.path.join(PACKAGE_DIR, "vendor")


def worker_pythonpath() -> str:
    """The folder to put on the worker's PYTHONPATH so `import blender_sds` finds these files."""
    return os.path.dirname(PACKAGE_DIR)


def user_dir(name: str) -> str:
    return bpy.utils.extension_path_user(ADDON_ID, path=name, create=True)


def cache_dir(prefs) -> str:
    folder = bpy.path.abspath(prefs.cache_folder) if prefs.cache_folder else user_dir("cache")
    os.makedirs(folder, exist_ok=True)
    return folder


def runs_dir(prefs) -> str:
    folder = os.path.join(cache_dir(prefs), "runs")
    os.makedirs(folder, exist_ok=True)
    return folder
