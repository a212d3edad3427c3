"""Shared fixtures for training tests: the committed 16-pair SOD fixture set (tests/fixtures/sod)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod"


@pytest.fixture(scope="session")
def sod_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread: the inputs are tiny, and on a shared 2-core machine two OpenMP threads competing
    with other processes spin-wait and run ~100× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
