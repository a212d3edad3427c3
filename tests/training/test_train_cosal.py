"""Co-saliency training: NMS and online hard triplets by hand, jittered boxes, and a short real run on scenes composed
from the fixture pairs (checkpoints in training.train's format, resumable, the offline ablation), exported, evaluated,
and given an instance quality head trained on its own candidates."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from export.bundle import ExportError, ExportOptions, export_bundle
from export.checkpoint import load_checkpoint
from service.manifest import MANIFEST_FILE, BundleError, load_manifest
from training.cosal_data import SceneSource, write_scenes
from training.cosal_losses import box_iou, nms, semi_hard_triplets
from training.data import list_pairs
from training.evaluate_cosal import main as evaluate_main
from training.train_cosal import CosalConfig, CosalConfigError, jitter_boxes, main, read_scenes
from training.train_instance_quality import main as quality_main

torch.set_num_threads(1)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod"


def test_nms_keeps_the_best_of_each_overlapping_cluster() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # box 1 beats box 0 (IoU 0.68) and box 3 (IoU 0.61); box 2 overlaps nothing
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 0]  # box 0 vs 1 is 0.68 < 0.7; box 3 vs 0 is 0.9


def test_semi_hard_triplets_pick_the_nearest_negative_beyond_the_positive() -> None:
    # Squared distances: d(0,2)=9, d(0,3)=4, d(0,4)=6.25; d(1,2)=4, d(1,3)=5, d(1,4)=7.25; d(2,3)=13, d(2,4)=15.25.
    embeddings = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.5]])
    instance = torch.tensor([1, 1, 2, 3, 4])  # regions 0 and 1 cover the same instance
    kind = torch.tensor([7, 7, 7, 9, 8])  # instances 1 and 2 are copies of one object; 3 and 4 are distractors
    iou = torch.tensor([1.0, 0.6, 0.8, 0.5, 1.0])
    anchor, positive, negative, weights = semi_hard_triplets(embeddings, instance, kind, iou)
    assert anchor.tolist() == [0, 1, 2, 2]  # distractors have no copy: never anchors; same instance: no pair
    assert positive.tolist() == [2, 2, 0, 1]
    # (0,2): no negative beyond 9, so the farthest (4); the others: the nearest beyond the positive (3)
    assert negative.tolist() == [4, 3, 3, 3]
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.48, 0.8, 0.48]))  # eq. (9): IoU(a) x IoU(p)


def test_jittered_boxes_overlap_their_box_by_at_least_half() -> None:
    boxes = torch.tensor([[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 8.0, 30.0]])
    jittered = jitter_boxes(boxes, 5, torch.Generator().manual_seed(0))
    assert jittered.shape == (10, 5) and jittered[:, 0].tolist() == [0.0] * 5 + [1.0] * 5
    for row in jittered:
        assert box_iou(row[None, 1:], boxes[int(row[0])][None])[0, 0] >= 0.5


@pytest.fixture(scope="module")
def scene_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    samples = list_pairs(FIXTURES / "images", FIXTURES / "masks")
    source = SceneSource(samples, samples)
    root = tmp_path_factory.mktemp("cosal")
    write_scenes(source, root / "train", 6, seed=3, size=160, progress=False)
    write_scenes(source, root / "val", 3, seed=4, size=160, progress=False)
    return root / "train", root / "val"


def test_scenes_are_read_at_network_scale_with_kinds_per_object(scene_dirs: tuple[Path, Path]) -> None:
    train, _ = scene_dirs
    records = [json.loads(line) for line in (train / "annotations.jsonl").read_text().splitlines()]
    scenes = read_scenes(train, 64)
    for record, scene in zip(records, scenes, strict=True):
        sx, sy = 64 / record["width"], 64 / record["height"]
        first = record["instances"][0]["box"]
        torch.testing.assert_close(
            scene.boxes[0], torch.tensor([first[0] * sx, first[1] * sy, first[2] * sx, first[3] * sy])
        )
        groups = [i["group"] for i in record["instances"]]
        assert len(set(scene.kind.tolist())) == len(set(groups)) and len(set(scene.instance.tolist())) == len(groups)
    assert not set(scenes[0].kind.tolist()) & set(scenes[1].kind.tolist())  # another scene, other objects


def _config(tmp_path: Path, scene_dirs: tuple[Path, Path], **overrides: object) -> Path:
    train, val = scene_dirs
    values = {
        "name": "tiny", "train_scenes": str(train), "val_scenes": str(val), "model_kwargs": {"input_size": 64},
        "pretrained": None, "batch_size": 3, "epochs": 2, "threads": 1, "out_dir": str(tmp_path / "run"),
    } | overrides  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_short_run_trains_checkpoints_and_resumes(
    tmp_path: Path, scene_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, scene_dirs)
    main(["--config", str(config)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    epochs = [line for line in lines if "epoch" in line]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["train_triplets"] > 0 and 0 <= e["val_max_f"] <= 1 for e in epochs)
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")  # what python -m export reads
    assert loaded.model.input_size == 64 and loaded.preprocess.input_size == 64
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert last["epoch"] == 1 and "optimizer" in last and set(last["rng"]) == {"python", "numpy", "torch"}
    main(["--config", str(config), "--resume"])  # nothing left to do: no epoch runs again
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [lines[-1]]


@pytest.mark.parametrize("confidence", ["focal", "quality_focal"])
def test_offline_ablation_with_focal_rpns(
    tmp_path: Path, scene_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], confidence: str
) -> None:
    main(["--config", str(_config(tmp_path, scene_dirs, triplets="offline", rpn_confidence=confidence, epochs=1))])
    epoch = json.loads(capsys.readouterr().out.splitlines()[0])
    assert epoch["train_triplets"] > 0 and math.isfinite(epoch["train_rpn"]) and epoch["train_rpn_conf"] > 0


def test_bad_configs_are_refused(
    tmp_path: Path, scene_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(CosalConfigError, match="online or offline"):
        CosalConfig.from_yaml(_config(tmp_path, scene_dirs, triplets="sometimes"))
    with pytest.raises(CosalConfigError, match="hard_negatives, focal or quality_focal"):
        CosalConfig.from_yaml(_config(tmp_path, scene_dirs, rpn_confidence="softmax"))
    with pytest.raises(SystemExit):
        main(["--config", str(_config(tmp_path, scene_dirs, lr_typo=0.1))])
    assert "unknown keys ['lr_typo']" in capsys.readouterr().err


def test_a_trained_checkpoint_exports_a_bundle_the_service_groups_with(
    tmp_path: Path, scene_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--config", str(_config(tmp_path, scene_dirs, epochs=1))])
    _, val = scene_dirs
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="--grouping-scenes"):
        export_bundle(ExportOptions(checkpoint=tmp_path / "run" / "best.pt", out=out))
    report = export_bundle(
        ExportOptions(checkpoint=tmp_path / "run" / "best.pt", out=out, speed_runs=2, grouping_scenes=val)
    )
    assert max(report["parity_regions"]["max_abs_diff"].values()) <= 1e-4
    assert max(report["parity_crops"]["max_relative_diff"].values()) <= 1e-4
    manifest = load_manifest(out)
    assert {o.kind for o in manifest.outputs} == {"saliency", "embedding", "boxes", "scores", "appearance"}
    assert manifest.regions is not None and manifest.grouping is not None
    assert manifest.crops is not None and manifest.crops.file in manifest.files
    crop_grouping = manifest.grouping.model_copy(update={"vectors": "crops"})
    without_crops = manifest.model_copy(update={"crops": None, "grouping": crop_grouping})
    (out / MANIFEST_FILE).write_text(without_crops.model_dump_json())
    with pytest.raises(BundleError, match="no crop encoder"):
        load_manifest(out, verify=False)
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json())
    assert manifest.grouping.proposals == report["grouping"]["chosen"]
    assert set(manifest.variants["fp32"].accuracy[f"cosal_val:{val.name}"]) == {
        "group_found",
        "group_found_exactly",
        "ari",
        "max_f",
        "mae",
    }

    capsys.readouterr()
    assert evaluate_main(["--bundle", str(out), "--scenes", str(val), "--val-scenes", str(val), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 3 and set(result["proposals"]) == {"rpn", "components", "both"}
    assert set(result["vectors"]) == {"learned", "appearance", "crops"}
    assert all(row["settings"]["vectors"] == kind for kind, row in result["vectors"].items())
    assert result["baselines"]["colour_histogram"]["settings"]["vectors"] == "colour_histogram"
    if result["shipped"]["settings"]["proposals"] in ("rpn", "both"):
        assert {kind: row["settings"]["rpn_score"] for kind, row in result["rpn_scores"].items()} == {
            "objectness": "objectness",
            "objectness_fit": "objectness_fit",
        }
    assert ("whole_components" in result) == (result["shipped"]["settings"]["proposals"] == "both")
    for scores in (result["shipped"], result["baselines"]["colour_histogram"]):
        assert 0 <= scores["group_found"] <= 1 and -1 <= scores["ari"] <= 1 and 0 <= scores["mae"] <= 1
        assert set(scores["copy_recall"]) == {"rpn_any_box", "proposals", "answer"}
        assert all(0 <= share <= 1 for share in scores["copy_recall"].values())

    # an instance quality head trained on this bundle's candidates, exported into a second bundle
    train, _ = scene_dirs
    head = tmp_path / "quality"
    args = ["--bundle", str(out), "--train-scenes", str(train), "--val-scenes", str(val), "--out", str(head)]
    assert quality_main([*args, "--epochs", "2", "--threads", "1"]) == 0
    assert [json.loads(line)["epoch"] for line in (head / "log.jsonl").read_text().splitlines()] == [1, 2]
    cached = next((head / "inputs").glob("train_*.npz"))
    with np.load(cached) as data:
        np.savez(cached, inputs=data["inputs"], targets=data["targets"], bundle=np.asarray("model.onnx:another"))
    with pytest.raises(ValueError, match="another bundle"):  # cached inputs are only reused for their own bundle
        quality_main([*args, "--epochs", "1", "--threads", "1"])
    scored = tmp_path / "scored"
    checkpoint = tmp_path / "run" / "best.pt"
    options = ExportOptions(checkpoint, scored, speed_runs=2, grouping_scenes=val, quality_head=head / "best.pt")
    report = export_bundle(options)
    assert report["parity_quality"]["max_abs_diff"]["quality"] <= 1e-4
    manifest = load_manifest(scored)
    assert manifest.quality is not None and manifest.quality.file in manifest.files
    capsys.readouterr()
    scenes = ["--scenes", str(val), "--val-scenes", str(val), "--no-progress"]
    assert evaluate_main(["--bundle", str(scored), *scenes]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["proposals"]["scored"]["settings"]["proposals"] == "scored"
    if result["shipped"]["settings"]["proposals"] == "scored":
        votes = {key: row["settings"]["vote_iou"] for key, row in result["vector_votes"].items()}
        assert votes == {"None": None, "0.5": 0.5, "0.7": 0.7}
    else:
        assert "vector_votes" not in result
    # a narrower grid: only the sources asked for are calibrated and compared; one the bundle lacks is refused
    assert evaluate_main(["--bundle", str(scored), *scenes, "--proposal-sources", "scored,components"]) == 0
    assert set(json.loads(capsys.readouterr().out)["proposals"]) == {"scored", "components"}
    with pytest.raises(SystemExit):
        evaluate_main(["--bundle", str(out), *scenes, "--proposal-sources", "scored"])
    assert "not among this bundle's ['rpn', 'components', 'both']" in capsys.readouterr().err
    assert manifest.grouping is not None
    headless = manifest.model_copy(
        update={"quality": None, "grouping": manifest.grouping.model_copy(update={"proposals": "scored"})}
    )
    (scored / MANIFEST_FILE).write_text(headless.model_dump_json())
    with pytest.raises(BundleError, match="instance quality head"):
        load_manifest(scored, verify=False)
    with pytest.raises(ExportError, match=r"not a training\.train_instance_quality checkpoint"):
        export_bundle(replace(options, quality_head=checkpoint))
