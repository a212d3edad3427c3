"""The co-saliency scene generator on the real fixture pairs: masks, boxes and groups agree; scenes are deterministic;
instances stay inside the canvas and visible; train and test splits draw from disjoint sources; scenes built with
another set's images excluded use none of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cosal_data import (
    MAX_OVERLAP,
    SPLITS,
    SceneSource,
    make_scene,
    used_sources,
    without_sources,
    write_scenes,
)
from training.data import list_pairs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod"


@pytest.fixture(scope="module")
def source() -> SceneSource:
    samples = list_pairs(FIXTURES / "images", FIXTURES / "masks")
    return SceneSource(samples, samples)


@pytest.fixture(scope="module")
def scenes(source: SceneSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    write_scenes(source, out, 6, seed=3, size=160, progress=False)
    return out


def test_masks_boxes_and_groups_agree(scenes: Path) -> None:
    annotations = [json.loads(line) for line in (scenes / "annotations.jsonl").read_text().splitlines()]
    assert len(annotations) == 6
    for annotation in annotations:
        name = annotation["id"]
        image = Image.open(scenes / "images" / f"{name}.jpg")
        labels = np.asarray(Image.open(scenes / "instances" / f"{name}.png"))
        cosal = np.asarray(Image.open(scenes / "masks" / f"{name}.png")) > 0
        assert image.size == (annotation["width"], annotation["height"]) == labels.shape[::-1]
        instances = annotation["instances"]
        assert sorted(np.unique(labels[labels > 0]).tolist()) == [r["id"] for r in instances]
        members = [r for r in instances if r["group"] == 0]
        distractors = [r for r in instances if r["group"] != 0]
        assert 2 <= len(members) <= 5 and len(distractors) <= 2
        assert len({r["source"] for r in members}) == 1  # copies of one object
        assert members[0]["source"] not in {r["source"] for r in distractors}
        assert len({r["group"] for r in distractors}) == len(distractors)  # each distractor alone
        np.testing.assert_array_equal(cosal, np.isin(labels, [r["id"] for r in members]))
        for record in instances:
            visible = labels == record["id"]
            rows, cols = np.nonzero(visible)
            assert record["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert record["area"] == visible.sum()
            assert 0 <= record["occluded"] <= MAX_OVERLAP + 1e-3 and record["truncated"] is False


def test_scenes_are_deterministic_and_independent_of_the_count(source: SceneSource) -> None:
    first = make_scene(source, 4, seed=9, size=128)
    again = make_scene(source, 4, seed=9, size=128)
    other = make_scene(source, 4, seed=10, size=128)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[3] == again[3]
    assert first[3] != other[3]


def test_test_scenes_use_held_out_splits_only() -> None:
    train = {(images, split) for images, _, split in SPLITS["train"]}
    test = {(images, split) for images, _, split in SPLITS["test"]}
    assert not train & test
    assert all(split is not None and ("val" in split or "test" in split) for _, split in test)


def test_excluded_images_are_never_used(source: SceneSource, scenes: Path, tmp_path: Path) -> None:
    first_two = tmp_path / "first_two.jsonl"
    first_two.write_text("".join((scenes / "annotations.jsonl").read_text().splitlines(keepends=True)[:2]))
    excluded = used_sources(first_two)
    assert len(excluded) >= 3  # two scenes: each a background, a group object and maybe distractors
    held_out = without_sources(source, excluded)
    assert len(held_out.objects) == len(source.objects) - len(excluded)
    write_scenes(held_out, tmp_path / "held_out", 4, seed=5, size=128, progress=False)
    assert not used_sources(tmp_path / "held_out" / "annotations.jsonl") & excluded
    with pytest.raises(ValueError, match="leaves no objects"):
        without_sources(source, {s.stem for s in source.objects})
