"""Shared fixtures for training tests: the committed 16-pair SOD fixture set (tests/fixtures/sod)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod"


@pytest.fixture(scope="session")
def sod_dir() -> Path:
    return FIXTURES
