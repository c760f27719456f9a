#!/usr/bin/env bash
# Create the Blender-side test environments: venvs holding only the bpy wheel, the numpy
# that Blender itself bundles, and pytest. They stand in for Blender's own Python, which
# has bpy and numpy but never torch. Idempotent: an env that already has the wanted
# versions is left as it is (a second run takes well under a second).
#   .venv-bpy42  bpy==4.2.23 (Blender 4.2 LTS, the minimum the manifest allows)
#   .venv-bpy45  bpy==4.5.15 (Blender 4.5 LTS)
# bpy 4.2.23 does not pin numpy (pip would pick numpy 2.x); Blender 4.2 and 4.5 both ship
# numpy 1.26.4, so that is what the envs get.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON311:-python3.11}
NUMPY=1.26.4

make_env() {
    local dir=$1 version=$2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" - "$version" "$NUMPY" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as m
ok = m.version("bpy") == sys.argv[1] and m.version("numpy") == sys.argv[2] and m.version("pytest")
sys.exit(0 if ok else 1)
PYEOF
    then
        echo "$dir: bpy $version present"
        return
    fi
    echo "$dir: installing bpy==$version numpy==$NUMPY pytest"
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    # pip warns about every local index folder that lacks a package; keep the log readable.
    "$dir/bin/python" -m pip install --quiet "bpy==$version" "numpy==$NUMPY" pytest \
        2> >(grep -v "is ignored: it is neither" >&2)
}

make_env .venv-bpy42 4.2.23
make_env .venv-bpy45 4.5.15
