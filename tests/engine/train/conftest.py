"""Fixtures shared by the engine-run tests in tests/engine/train."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sd_folder(tiny_sd_folder) -> Path:
    """The tiny Stable-Diffusion-shaped model as a diffusers folder (the session's one; read only)."""
    return tiny_sd_folder
