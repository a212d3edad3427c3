"""Shared fixtures: a tiny untrained checkpoint in training's format and the real SOD image fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import build_model
from training.config import TrainConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod"


@pytest.fixture(scope="session")
def fixture_images() -> Path:
    images = FIXTURES / "images"
    if not images.is_dir():
        pytest.fail(f"image fixtures missing: {images}")
    return images


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained picanet_lite saved exactly as training/train.py saves ``best.pt``."""
    torch.manual_seed(0)
    model = build_model("picanet_lite")
    cfg = TrainConfig.from_dict(
        {
            "name": "tiny_test",
            "model": "picanet_lite",
            "preprocess": {"input_size": 224, "mean": [0.5, 0.45, 0.4], "std": [0.25, 0.22, 0.2]},
            "data": {"train": [{"images": "ECSSD/images", "masks": "ECSSD/masks", "split": "splits/ECSSD_train.txt"}]},
        }
    )
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    state = {
        "model": model.state_dict(),
        "model_name": "picanet_lite",
        "model_kwargs": {},
        "config": cfg.to_dict(),
        "epoch": 2,
        "best": {"max_f": 0.5, "mae": 0.3, "epoch": 3},
    }
    torch.save(state, path)
    return path
