"""Every config under training/configs loads, and its loss accepts its parameters, so a typo fails here and not
minutes into a run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from training import losses
from training.config import load_config
from training.train_cosal import CosalConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))
LOSS_FUNCTIONS = {
    "picanet": losses.picanet_loss,
    "class": losses.class_loss,
    "arn": losses.arn_loss,
    "attention_baseline": losses.attention_baseline_loss,
}


def test_the_loss_table_covers_every_kind() -> None:
    assert set(LOSS_FUNCTIONS) == set(losses.LOSS_KINDS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_its_loss_takes_its_params(path: Path) -> None:
    if "train_scenes" in yaml.safe_load(path.read_text()):
        CosalConfig.from_yaml(path)
        return
    config = load_config(path)
    inspect.signature(LOSS_FUNCTIONS[config.loss.kind]).bind_partial(**config.loss.params)
