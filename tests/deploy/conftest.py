"""Fixtures of the deployment checks (parsing lives in deploy_checks.py)."""

from __future__ import annotations

import json

import pytest
from deploy_checks import DASHBOARD, DOCKERFILES, Dockerfile, parse_dockerfile


@pytest.fixture(scope="session")
def dockerfiles() -> dict[str, Dockerfile]:
    return {kind: parse_dockerfile(path) for kind, path in DOCKERFILES.items()}


@pytest.fixture(scope="session")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())
