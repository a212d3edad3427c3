"""Every config under training/configs loads, and its loss accepts its parameters, so a typo fails here and not
minutes into a run."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from training import losses
from training.config import ConfigError, load_config, read_config_file
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
    if "train_scenes" in read_config_file(path):
        CosalConfig.from_yaml(path)
        return
    config = load_config(path)
    inspect.signature(LOSS_FUNCTIONS[config.loss.kind]).bind_partial(**config.loss.params)


def test_a_config_extends_another_merging_mappings_and_replacing_the_rest(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "name: base\nmodel: attnbaseline_sigmoid_lite\nmodel_kwargs: {input_size: 64, gating: residual}\n"
        "data: {root: d, train: [{images: a, masks: b}, {images: c, masks: e}]}\n"
        "loss: {kind: attention_baseline, params: {kl_weight: 0.0}}\n"
        "run: {batch_size: 4, seed: 3}\nout_dir: runs/base\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nname: child\nmodel_kwargs: {input_size: 96}\n"
        "data: {train: [{images: x, masks: y}]}\nloss: {params: {rank_weight: 10.0}}\nout_dir: runs/child\n"
    )
    (tmp_path / "grandchild.yaml").write_text("extends: sub/child.yaml\nname: g\nrun: {seed: 5}\nout_dir: runs/g\n")
    child = load_config(tmp_path / "sub" / "child.yaml")
    assert (child.name, child.out_dir, child.model) == ("child", "runs/child", "attnbaseline_sigmoid_lite")
    assert child.model_kwargs == {"input_size": 96, "gating": "residual"}
    assert [(d.images, d.masks) for d in child.data.train] == [("x", "y")] and child.data.root == "d"
    assert child.loss.params == {"kl_weight": 0.0, "rank_weight": 10.0} and child.loss.kind == "attention_baseline"
    grandchild = load_config(tmp_path / "grandchild.yaml")
    assert (grandchild.run.seed, grandchild.run.batch_size, grandchild.model_kwargs["input_size"]) == (5, 4, 96)


def test_extends_refuses_a_shared_run_folder_a_loop_and_a_missing_parent(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: base\nmodel: m\nout_dir: runs/base\n")
    (tmp_path / "lazy.yaml").write_text("extends: base.yaml\nname: lazy\n")
    with pytest.raises(ConfigError, match="must set its own out_dir"):
        load_config(tmp_path / "lazy.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\nout_dir: runs/a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\nout_dir: runs/b\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\nname: o\nout_dir: runs/o\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone\.yaml"):
        load_config(tmp_path / "orphan.yaml")
