#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One pytest worker per core (at most 4; SDS_TEST_WORKERS=0 runs in this process), a test module
# per worker at a time, in the order tests/conftest.py gives (the slowest modules first).
workers=${SDS_TEST_WORKERS:-$(n=$(nproc 2>/dev/null || echo 2); echo $(( n > 4 ? 4 : n )))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
