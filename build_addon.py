"""Build the installable extension zip: `python build_addon.py [--out dist]`.

The zip's root holds `blender_manifest.toml` plus the contents of `blender_sds/` (so the
package's `__init__.py` sits at the root, with `engine/`, `job.py` and `protocol.py`
inside: the worker runs the same files Blender loads) and `vendor/` (the pinned worker
requirements the add-on's "Set Up Worker Environment" button installs from).

Blender's own validator does the packing and the strict manifest check, so what passes
here passes Blender. It ships inside the bpy wheel (`bl_pkg/cli/blender_ext.py`, stdlib
only); we look for it in this Python's bpy, then in the repo's `.venv-bpy*` envs
(scripts/bpy_envs.sh), or take `--blender-ext PATH`.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "blender_manifest.toml"
PACKAGE = ROOT / "blender_sds"
VENDOR = ROOT / "vendor"
# Never shipped: bytecode, caches, tests, editor and VCS litter.
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "tests", "*.zip")


class BuildError(RuntimeError):
    pass


def find_blender_ext(explicit: str | None = None) -> tuple[Path, Path | None]:
    """(blender_ext.py, tags.py) from an explicit path, this Python's bpy, or a repo bpy venv."""
    if explicit:
        script = Path(explicit)
        if not script.is_file():
            raise BuildError(f"--blender-ext: no such file {script}")
        return script, _tags_beside(script)
    roots = []
    spec = importlib.util.find_spec("bpy")  # locates the wheel without importing it
    if spec and spec.submodule_search_locations:
        roots += list(spec.submodule_search_locations)
    for env in (".venv-bpy45", ".venv-bpy42"):
        roots += glob.glob(str(ROOT / env / "lib" / "python3*" / "site-packages" / "bpy"))
    for root in roots:
        for script in sorted(glob.glob(os.path.join(root, "*", "scripts", "addons_core", "bl_pkg",
                                                    "cli", "blender_ext.py")), reverse=True):
            return Path(script), _tags_beside(Path(script))
    raise BuildError("Blender's extension validator (blender_ext.py) was not found: install the bpy "
                     "wheel (bash scripts/bpy_envs.sh) or pass --blender-ext PATH")


def _tags_beside(script: Path) -> Path | None:
    # .../<ver>/scripts/addons_core/bl_pkg/cli/blender_ext.py -> .../<ver>/scripts/modules/...
    tags = script.parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    return tags if tags.is_file() else None


def read_manifest() -> dict:
    with open(MANIFEST, "rb") as fh:
        return tomllib.load(fh)


def stage(into: Path) -> Path:
    """Lay out the zip's contents in `into` and return it."""
    shutil.copy2(MANIFEST, into / MANIFEST.name)
    for item in sorted(PACKAGE.iterdir()):
        if IGNORE(str(PACKAGE), [item.name]):
            continue
        target = into / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=IGNORE)
        else:
            shutil.copy2(item, target)
    if VENDOR.is_dir():
        shutil.copytree(VENDOR, into / "vendor", ignore=IGNORE)
    return into


def _run_validator(script: Path, tags: Path | None, *args: str) -> None:
    cmd = [sys.executable, str(script), *args]
    if tags is not None:
        cmd += ["--valid-tags", str(tags)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(args[:1])} failed:\n{proc.stdout}{proc.stderr}".rstrip())


def check_zip(path: Path) -> None:
    """What Blender's validator does not look at: layout and litter."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    for required in ("blender_manifest.toml", "__init__.py", "protocol.py", "addon/__init__.py",
                     "engine/__init__.py"):
        if required not in names:
            raise BuildError(f"{path.name}: {required} missing from the zip root")
    litter = [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith("tests/")]
    if litter:
        raise BuildError(f"{path.name}: must not contain {litter[:5]}")


def build(out_dir: Path | str = ROOT / "dist", blender_ext: str | None = None) -> Path:
    if sys.version_info < (3, 11):
        raise BuildError("build_addon.py needs Python 3.11 or later (Blender's validator uses tomllib)")
    manifest = read_manifest()
    script, tags = find_blender_ext(blender_ext)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with tempfile.TemporaryDirectory(prefix="sds-build-") as tmp:
        src = Path(tmp) / manifest["id"]
        src.mkdir()
        stage(src)
        _run_validator(script, tags, "validate", str(src))
        if zip_path.exists():
            zip_path.unlink()
        _run_validator(script, tags, "build", "--source-dir", str(src), "--output-filepath", str(zip_path))
    _run_validator(script, tags, "validate", str(zip_path))
    check_zip(zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--blender-ext", help="path to Blender's bl_pkg/cli/blender_ext.py")
    args = parser.parse_args(argv)
    try:
        path = build(args.out, args.blender_ext)
    except BuildError as exc:
        print(f"build_addon: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
