"""Fixtures shared by the engine-run tests in tests/engine/train."""
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def sd_folder(tiny_sd_folder) -> Path:
    """The tiny Stable-Diffusion-shaped model as a diffusers folder (the session's one; read only)."""
    return tiny_sd_folder


@pytest.fixture
def one_thread():
    # The engine's small per-step ops only spin with more threads on a busy 2-core machine, and
    # test_pocket_job's recorded digest was made on one thread (reductions split by threads round differently).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
