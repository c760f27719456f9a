"""Shared by every test: tests/support (helpers that are not tests) on the import path."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
