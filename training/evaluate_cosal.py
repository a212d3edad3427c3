"""Score co-saliency grouping and maps of a co-saliency bundle on composed scenes (``training.cosal_data``).

python -m training.evaluate_cosal --bundle cosal --scenes runs/cosal/test [--val-scenes runs/cosal/val]
                                  [--saliency-bundle default] [--out FILE.json]

Runs the bundle through ONNX Runtime and the service's own grouping (``service/grouping.py``), so the numbers are
what ``POST /saliency?outputs=groups`` gives. Prints one JSON object:

- ``shipped``: the bundle's grouping settings (from its manifest): ``group_found`` (share of scenes where a predicted
  group holds ≥ 2 true group members and no distractor, box IoU ≥ 0.5), ``group_found_exactly`` (such a group whose
  every member is a distinct true copy: no duplicate box, no box on nothing), ``ari`` (mean adjusted Rand index over
  each scene's true instances), ``max_f`` / ``mae`` of the co-saliency map (the map inside the groups' boxes; only group
  members are foreground), ``instances`` (mean predicted instances per scene), ``instance_recall`` (share of true
  instances some predicted instance matches at box IoU ≥ 0.5), ``instance_precision`` (share of predicted
  instances that match a true one) and ``copy_recall``: where the copies are lost, as the share of true copies matched
  (IoU ≥ 0.5) by some RPN box of any score (``rpn_any_box``: what the RPN can give), by the proposed instances
  (``proposals``: after thresholds and NMS) and by the answer's instances (``answer``: after duplicates are dropped);
- ``every_member``: the shipped settings with no member dropped as a duplicate (``member_overlap`` 1);
- ``vector_votes`` (shipped instance source ``scored``): each instance described by its own box's vector, and by
  the votes of the confident candidates overlapping it (``vote_iou``), each with its settings chosen on
  ``--val-scenes``;
- ``whole_components`` (shipped instance source ``both``): the shipped settings with no connected component split
  into the RPN boxes inside it (``split_components`` off);
- ``rpn_scores`` (shipped source ``rpn`` or ``both``): the RPN's boxes scored by objectness alone and by objectness
  × box fit, each with its settings chosen on ``--val-scenes``;
- ``decoder_map``: max F / MAE of the network's co-saliency map before grouping;
- ``proposals``: each instance source (RPN boxes after NMS, connected components of the map, both, and with an
  instance quality head in the bundle the candidates it scores), each with its settings chosen on ``--val-scenes``;
- ``vectors``: the shipped instance source with each kind of instance vector the bundle offers (``learned``: the
  regional feature mapping head, the paper's; ``appearance``: the frozen encoder's features under the map;
  ``crops``: the frozen encoder on each instance's own crop, under the map), each with its settings chosen on
  ``--val-scenes``;
- ``saliency_map_in_groups`` (with ``--saliency-bundle``): the same groups, but the co-saliency map taken from that
  saliency model's map inside the groups' boxes;
- ``baselines``: ``colour_histogram`` (the shipped instances grouped by colour histograms instead of learned
  vectors, threshold chosen on ``--val-scenes``) and ``saliency_map`` (``--saliency-bundle``'s saliency map scored
  as a co-saliency map: it lights up the distractors too).

``calibrate`` is also what ``python -m export`` uses to choose a co-saliency bundle's grouping settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.engine import Engine
from service.grouping import (
    Grouping,
    average_linkage,
    box_fit,
    box_iou,
    confident_candidates,
    cosaliency_map,
    cut_linkage,
    distinct_members,
    group_proposals,
    image_outputs,
    instance_quality,
    instance_vectors,
    propose,
    vote_vectors,
)
from service.imaging import preprocess, resize_map
from service.manifest import GroupingSpec, Manifest
from training.cosal_metrics import MATCH_IOU, match_instances, score_scene
from training.metrics import SaliencyMetrics, to_uint8

log = logging.getLogger("training.evaluate_cosal")

DISTANCE_THRESHOLDS = tuple(round(float(t), 3) for t in np.arange(0.05, 1.001, 0.05))
# The RPN, trained against 3 hard negatives per positive, scores low (cosal_effl0_anchors32 on 100 validation scenes:
# median anchor 0.10, 1 in 1,000 above 0.42), so the grid reaches down to 0.05; max_instances bounds the boxes kept.
MIN_SCORES = (0.05, 0.1, 0.2, 0.3, 0.5)
# Scores of rpn_score "objectness_fit" (objectness × box fit) run lower: the focal bundle's 300 validation scenes
# found most copies between 0.03 and 0.1
FIT_MIN_SCORES = (0.03, 0.06, 0.1, 0.15)
FIT_MIN_MAP = 0.1  # box fit already leaves out boxes on plain background; one floor for them keeps the grid small
# An RPN box must hold co-salient pixels (no zero: two boxes on plain background embed alike and would form a group)
MIN_MAPS = (0.1, 0.25)
NMS_IOUS = (0.3, 0.5)
# A group member with more than this share of its map mass inside better-fitting members' boxes is a duplicate
# (1: none dropped). A composed scene's copy hides at most 35 % of another (training.cosal_data.MAX_OVERLAP).
MEMBER_OVERLAPS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
# Predicted IoU a scored candidate needs, and its suppression: the head scores a box spanning two overlapping objects
# low, so overlapping copies can survive a looser NMS than the RPN's objectness allows
QUALITY_MIN_SCORES = (0.2, 0.3, 0.4, 0.5, 0.6)
QUALITY_NMS_IOUS = (0.3, 0.5, 0.6)
# Scored proposals: no vote (each box its own vector), or the confident candidates at IoU >= these vote
VOTE_IOUS = (None, 0.5, 0.7)
MASK_THRESHOLD = 0.5
MIN_AREA_FRACTION = 0.002
# Crop vectors tell copies apart well enough that more candidate boxes help (an uncommitted probe on 200 test
# scenes, focal bundle: up to 24 boxes after NMS at IoU 0.5 matched 0.775 of the true instances, its settings with
# 12 boxes after NMS at IoU 0.3 matched 0.68)
MAX_INSTANCES = 24
COLOUR_BINS = 8  # per channel: a joint 8×8×8 RGB histogram


@dataclass(frozen=True)
class EvalScene:
    """A composed scene: image, co-saliency mask and true instances (boxes in scene pixels, group ids)."""

    image: Path
    mask: np.ndarray  # [H, W] bool
    boxes: np.ndarray  # [T, 4]
    groups: np.ndarray  # [T]
    cosalient_group: int


def read_eval_scenes(folder: Path, limit: int | None = None) -> list[EvalScene]:
    """The scenes of a ``training.cosal_data`` folder (all, or the first ``limit``)."""
    annotations = Path(folder) / "annotations.jsonl"
    if not annotations.is_file():
        raise FileNotFoundError(f"no scenes in {folder} (python -m training.cosal_data --out {folder} ...)")
    scenes = []
    for line in annotations.read_text().splitlines()[:limit]:
        record = json.loads(line)
        with Image.open(Path(folder) / "masks" / f"{record['id']}.png") as img:
            mask = np.asarray(img) >= 128
        scenes.append(
            EvalScene(
                image=Path(folder) / "images" / f"{record['id']}.jpg",
                mask=mask,
                boxes=np.asarray([i["box"] for i in record["instances"]], dtype=np.float64).reshape(-1, 4),
                groups=np.asarray([i["group"] for i in record["instances"]], dtype=np.int64),
                cosalient_group=int(record["cosalient_group"]),
            )
        )
    return scenes


@dataclass(eq=False)  # hashed by identity: the per-box caches below key on the scene itself
class SceneOutputs:
    """One scene's bundle outputs (``service.grouping.image_outputs``), its image, its network-input RGB and the crop
    encoder's features of every box cropped so far (``service.grouping.crop_features``' memory: the quality head and
    the crop vectors read the same crops, as in the service)."""

    outputs: dict[str, np.ndarray]
    image: Image.Image
    rgb: np.ndarray  # [S, S, 3] uint8, the stretched network input
    crops: dict[bytes, np.ndarray] = field(default_factory=dict)


def run_bundle(engine: Engine, scenes: list[EvalScene], progress: bool = True) -> list[SceneOutputs]:
    """Run a co-saliency bundle on every scene, one at a time (batch 1, as the service mostly runs)."""
    size = engine.input_size
    results = []
    for scene in tqdm(scenes, desc="scenes", disable=not progress, leave=False):
        with Image.open(scene.image) as img:
            rgb = img.convert("RGB")
        outputs, _ = engine.run_sync(preprocess(rgb, engine.manifest.preprocess)[None])
        stretched = np.asarray(rgb.resize((size, size), Image.BILINEAR))
        found = image_outputs({k: v[0] for k, v in outputs.items()}, engine.manifest)
        results.append(SceneOutputs(found, rgb, stretched))
    return results


VectorFn = Callable[[SceneOutputs, np.ndarray, GroupingSpec], np.ndarray]
QualityFn = Callable[[SceneOutputs, np.ndarray], np.ndarray]


def service_vectors(engine: Engine, quality: QualityFn | None = None) -> VectorFn:
    """The vectors the service computes for a spec (``vectors``: the regional feature mapping head on ``R``, the
    encoder's appearance features under the map, or the crop encoder's; with ``vote_iou``, the votes of the
    candidates ``quality`` rates confident), each box's computed once per scene and kind: an instance's vector depends
    on its box alone, and the settings a calibration tries share most boxes."""
    encoders = engine.instance_encoders()
    known: dict[tuple[SceneOutputs, str, bytes], np.ndarray] = {}

    def vectors(scene: SceneOutputs, boxes: np.ndarray, spec: GroupingSpec) -> np.ndarray:
        def compute(fresh: np.ndarray) -> np.ndarray:
            return instance_vectors(scene.outputs, scene.image, fresh, encoders, spec, engine.input_size, scene.crops)

        if spec.vote_iou is None:
            return _per_box(known, scene, spec.vectors, boxes, compute)
        o = scene.outputs
        rate = None if quality is None else (lambda candidates: quality(scene, candidates))
        voters, weights = confident_candidates(o["probability"], o["boxes"], o["scores"], spec, engine.input_size, rate)
        own = _per_box(known, scene, spec.vectors, voters, compute)
        return vote_vectors(boxes, voters, weights, own, spec.vote_iou)

    return vectors


def service_quality(engine: Engine) -> QualityFn:
    """The instance quality head's scores as the service computes them, each box's once per scene (the settings a
    calibration tries all score the same candidates)."""
    encoders = engine.instance_encoders()
    known: dict[tuple[SceneOutputs, str, bytes], np.ndarray] = {}

    def quality(scene: SceneOutputs, boxes: np.ndarray) -> np.ndarray:
        def compute(fresh: np.ndarray) -> np.ndarray:
            return instance_quality(scene.outputs, scene.image, fresh, encoders, engine.input_size, scene.crops)

        return _per_box(known, scene, "quality", boxes, compute)

    return quality


def _per_box(
    known: dict[tuple[SceneOutputs, str, bytes], np.ndarray],
    scene: SceneOutputs,
    kind: str,
    boxes: np.ndarray,
    compute: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``compute(boxes)`` (one row per box) with each box's row computed once per scene and ``kind`` and kept in
    ``known``: a box's vector or score depends on its box alone."""
    if len(boxes) == 0:
        return compute(boxes)
    keys = [(scene, kind, np.asarray(box, dtype=np.float32).tobytes()) for box in boxes]
    fresh = [i for i, key in enumerate(keys) if key not in known]
    if fresh:
        known.update(zip((keys[i] for i in fresh), compute(boxes[fresh]), strict=True))
    return np.stack([known[key] for key in keys])


def _propose(
    scene: SceneOutputs, spec: GroupingSpec, input_size: int, quality: QualityFn | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`service.grouping.propose` on one scene's outputs (scored by ``quality`` where ``spec`` asks)."""
    o = scene.outputs
    scores = None if quality is None else (lambda boxes: quality(scene, boxes))
    return propose(o["probability"], o["boxes"], o["scores"], spec, input_size, scores)


def colour_vectors(scene: SceneOutputs, boxes: np.ndarray, spec: GroupingSpec) -> np.ndarray:
    """Baseline: each box's joint RGB histogram (8 bins per channel), square-rooted and L2-normalized (so cosine
    distance is the Hellinger distance's monotone cousin); ``spec.vectors`` is ignored."""
    vectors = []
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        patch = scene.rgb[max(y1, 0) : max(y2, y1 + 1), max(x1, 0) : max(x2, x1 + 1)].reshape(-1, 3)
        bins = (patch // (256 // COLOUR_BINS)).astype(np.int64)
        index = (bins[:, 0] * COLOUR_BINS + bins[:, 1]) * COLOUR_BINS + bins[:, 2]
        histogram = np.sqrt(np.bincount(index, minlength=COLOUR_BINS**3).astype(np.float64))
        vectors.append(histogram / max(np.linalg.norm(histogram), 1e-12))
    return np.asarray(vectors, dtype=np.float32).reshape(len(boxes), COLOUR_BINS**3)


def _scene_pixels(boxes: np.ndarray, scene: EvalScene, input_size: int) -> np.ndarray:
    height, width = scene.mask.shape
    return boxes * np.asarray([width, height, width, height]) / input_size


def _labels(grouping: Grouping) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[P, 4]`` and cluster labels of every predicted instance (each singleton its own cluster)."""
    boxes, labels = [], []
    clusters = [*grouping.groups, *([m] for m in grouping.singletons)]
    for label, members in enumerate(clusters):
        boxes.extend(m.box for m in members)
        labels.extend([label] * len(members))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _base_spec(
    proposals: str,
    min_score: float,
    min_map: float,
    nms_iou: float,
    distance: float,
    selected_on: str,
) -> GroupingSpec:
    return GroupingSpec(
        proposals=proposals,  # type: ignore[arg-type]
        min_score=min_score,
        min_map=min_map,
        nms_iou=nms_iou,
        max_instances=MAX_INSTANCES,
        distance_threshold=distance,
        mask_threshold=MASK_THRESHOLD,
        min_area_fraction=MIN_AREA_FRACTION,
        selected_on=selected_on,
    )


def _candidate_specs(proposals: Iterable[str]) -> list[GroupingSpec]:
    specs = []
    for mode in proposals:
        if mode == "components":
            specs.append(_base_spec("components", 0.0, 0.0, 0.5, 1.0, ""))
            continue
        if mode == "scored":
            specs += [
                _base_spec(mode, s, 0.0, n, 1.0, "").model_copy(update={"vote_iou": vote})
                for s in QUALITY_MIN_SCORES
                for n in QUALITY_NMS_IOUS
                for vote in VOTE_IOUS
            ]
            continue
        rpn = [_base_spec(mode, s, m, n, 1.0, "") for s in MIN_SCORES for m in MIN_MAPS for n in NMS_IOUS]
        rpn += [
            _base_spec(mode, s, FIT_MIN_MAP, n, 1.0, "").model_copy(update={"rpn_score": "objectness_fit"})
            for s in FIT_MIN_SCORES
            for n in NMS_IOUS
        ]
        splits = (False, True) if mode == "both" else (False,)
        specs += [spec.model_copy(update={"split_components": split}) for spec in rpn for split in splits]
    return specs


def grouping_objective(scores: Mapping[str, Any]) -> Any:
    """What grouping settings are chosen by: group-found rate + found-exactly rate + mean ARI (a group that lists a
    copy twice is found, but the answer is wrong about how many there are). Works on numbers and on arrays."""
    return scores["group_found"] + scores["group_found_exactly"] + scores["ari"]


# The best settings found on validation scenes for each (instance source, vector kind, RPN score, vote IoU), with their
# objective
Calibration = dict[tuple[str, str, str, float | None], tuple[float, GroupingSpec]]


def calibrate(
    scenes: list[EvalScene],
    outputs: list[SceneOutputs],
    vectors: VectorFn,
    input_size: int,
    proposals: Iterable[str] = ("rpn", "components", "both"),
    label: str = "",
    vector_kinds: Iterable[str] = ("learned",),
    quality: QualityFn | None = None,
) -> Calibration:
    """The best settings on these (validation) scenes, by :func:`grouping_objective`, for each instance source, vector
    kind and RPN score (``rpn_score``; ``objectness`` for components); ``quality`` scores the candidates of
    ``scored`` proposals.

    Each source's proposal settings (``both`` with and without ``split_components``) are tried on every scene once,
    with each of ``vector_kinds``; the clustering threshold is swept by cutting one average-linkage agglomeration per
    scene, and each cut is scored with each of :data:`MEMBER_OVERLAPS`.
    """
    kinds = list(vector_kinds)
    best: Calibration = {}
    shape = (len(kinds), len(DISTANCE_THRESHOLDS), len(MEMBER_OVERLAPS))
    for proposal_spec in _candidate_specs(proposals):
        candidates = [proposal_spec.model_copy(update={"vectors": kind}) for kind in kinds]
        found, exact, ari = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        for scene, out in zip(scenes, outputs, strict=True):
            o = out.outputs
            boxes, _ = _propose(out, proposal_spec, input_size, quality)
            pixels = _scene_pixels(boxes, scene, input_size)
            fit = box_fit(o["probability"], boxes, input_size)
            for k, candidate in enumerate(candidates):
                merges = average_linkage(vectors(out, boxes, candidate)) if len(boxes) else []
                previous, scores = None, []
                for t, distance in enumerate(DISTANCE_THRESHOLDS):
                    labels = cut_linkage(merges, len(boxes), distance)
                    if previous is None or not np.array_equal(labels, previous):  # most cuts repeat the one before
                        scores = [
                            score_scene(scene.boxes, scene.groups, scene.cosalient_group, pixels[keep], labels[keep])
                            for keep in (
                                distinct_members(fit, boxes, labels, o["probability"], input_size, overlap)
                                for overlap in MEMBER_OVERLAPS
                            )
                        ]
                    previous = labels
                    for m, score in enumerate(scores):
                        found[k, t, m] += score.group_found
                        exact[k, t, m] += score.group_exact
                        ari[k, t, m] += score.ari
        objective = grouping_objective({"group_found": found, "group_found_exactly": exact, "ari": ari}) / len(scenes)
        for k, candidate in enumerate(candidates):
            t, m = np.unravel_index(int(np.argmax(objective[k])), objective[k].shape)
            key = (candidate.proposals, candidate.vectors, candidate.rpn_score, candidate.vote_iou)
            if key in best and objective[k, t, m] <= best[key][0]:
                continue
            rates = [float(total[k, t, m]) / len(scenes) for total in (found, exact, ari)]
            note = f"{label}: group found {rates[0]:.3f} (exactly {rates[1]:.3f}), ARI {rates[2]:.3f}"
            note += f" on {len(scenes)} scenes"
            update = {
                "distance_threshold": DISTANCE_THRESHOLDS[t],
                "member_overlap": MEMBER_OVERLAPS[m],
                "selected_on": note,
            }
            best[key] = (float(objective[k, t, m]), candidate.model_copy(update=update))
    return best


def best_per(calibration: Calibration, field: str, **fixed: str) -> dict[Any, GroupingSpec]:
    """From :func:`calibrate`'s table, the best settings for each value of ``field`` (``proposals``, ``vectors``,
    ``rpn_score`` or ``vote_iou``) among the entries whose other fields equal ``fixed``."""
    best: dict[Any, tuple[float, GroupingSpec]] = {}
    for objective, spec in calibration.values():
        if any(getattr(spec, name) != value for name, value in fixed.items()):
            continue
        value = getattr(spec, field)
        if value not in best or objective > best[value][0]:
            best[value] = (objective, spec)
    return {value: spec for value, (_, spec) in best.items()}


def vector_kinds(manifest: Manifest) -> tuple[str, ...]:
    """The instance vectors a bundle offers: the learned head always, appearance when it exports encoder features,
    crops when it has a crop encoder."""
    offered = ("appearance",) if manifest.output("appearance") else ()
    return ("learned", *offered, *(("crops",) if manifest.crops else ()))


def proposal_sources(manifest: Manifest) -> tuple[str, ...]:
    """The instance sources a bundle offers: RPN boxes, map components and both always, scored candidates when it
    has an instance quality head."""
    return ("rpn", "components", "both", *(("scored",) if manifest.quality else ()))


def requested_sources(manifest: Manifest, requested: Iterable[str] | None) -> tuple[str, ...]:
    """The instance sources to calibrate: every one the bundle offers (:func:`proposal_sources`), or those of
    ``requested`` (a narrower, faster grid), each of which the bundle must offer."""
    offered = proposal_sources(manifest)
    if requested is None:
        return offered
    chosen = tuple(dict.fromkeys(requested))
    missing = [source for source in chosen if source not in offered]
    if missing or not chosen:
        raise ValueError(f"proposal sources {missing or '(none)'} are not among this bundle's {list(offered)}")
    return chosen


def evaluate(
    scenes: list[EvalScene],
    outputs: list[SceneOutputs],
    vectors: VectorFn,
    spec: GroupingSpec,
    input_size: int,
    maps: list[np.ndarray] | None = None,
    quality: QualityFn | None = None,
) -> dict[str, Any]:
    """Group every scene with ``spec`` and score the groups and the co-saliency map: the bundle's own map inside
    the groups' boxes, or ``maps`` (one probability map per scene, any size) inside them."""
    metrics = SaliencyMetrics()
    found, exact, ari, instances = [], [], [], []
    true_count = true_matched = copy_count = 0
    copies = {"rpn_any_box": 0, "proposals": 0, "answer": 0}
    for index, (scene, out) in enumerate(zip(scenes, outputs, strict=True)):
        o = out.outputs
        boxes, scores = _propose(out, spec, input_size, quality)
        grouping = group_proposals(o["probability"], boxes, scores, vectors(out, boxes, spec), spec, input_size)
        pred_boxes, labels = _labels(grouping)
        pixels = _scene_pixels(pred_boxes, scene, input_size)
        score = score_scene(scene.boxes, scene.groups, scene.cosalient_group, pixels, labels)
        for stage, count in _copies_matched(scene, o["boxes"], boxes, pixels, input_size).items():
            copies[stage] += count
        true_count += len(scene.boxes)
        copy_count += int(np.sum(scene.groups == scene.cosalient_group))
        true_matched += score.matched_instances
        found.append(score.group_found)
        exact.append(score.group_exact)
        ari.append(score.ari)
        instances.append(len(pred_boxes))
        height, width = scene.mask.shape
        probability = o["probability"] if maps is None else maps[index]
        cosal = resize_map(cosaliency_map(probability, grouping, input_size), (width, height))
        metrics.update(to_uint8(cosal), scene.mask)
    map_metrics = metrics.results()
    return {
        "settings": spec.model_dump(),
        "group_found": round(float(np.mean(found)), 4),
        "group_found_exactly": round(float(np.mean(exact)), 4),
        "ari": round(float(np.mean(ari)), 4),
        "max_f": round(map_metrics["max_f"], 4),
        "mae": round(map_metrics["mae"], 4),
        "instances": round(float(np.mean(instances)), 2),
        "instance_recall": round(true_matched / max(true_count, 1), 4),
        "instance_precision": round(true_matched / max(int(np.sum(instances)), 1), 4),
        "copy_recall": {stage: round(count / max(copy_count, 1), 4) for stage, count in copies.items()},
    }


def _copies_matched(
    scene: EvalScene, rpn_boxes: np.ndarray, proposed: np.ndarray, answer_pixels: np.ndarray, input_size: int
) -> dict[str, int]:
    """How many of the scene's copies some RPN box (any score), the proposed instances and the answer's instances
    match at box IoU ≥ :data:`MATCH_IOU` (network-input boxes but the answer's, already in scene pixels)."""
    copies = scene.boxes[scene.groups == scene.cosalient_group]
    rpn = _scene_pixels(np.clip(rpn_boxes, 0, input_size), scene, input_size)
    return {
        "rpn_any_box": int((box_iou(copies, rpn).max(axis=1, initial=0.0) >= MATCH_IOU).sum()),
        "proposals": int((match_instances(copies, _scene_pixels(proposed, scene, input_size)) >= 0).sum()),
        "answer": int((match_instances(copies, answer_pixels) >= 0).sum()),
    }


def map_scores(scenes: list[EvalScene], maps: Iterable[np.ndarray]) -> dict[str, float]:
    """Max F and MAE of probability maps (any size) against the scenes' co-saliency masks."""
    metrics = SaliencyMetrics()
    for scene, prob in zip(scenes, maps, strict=True):
        height, width = scene.mask.shape
        metrics.update(to_uint8(resize_map(prob, (width, height))), scene.mask)
    results = metrics.results()
    return {"max_f": round(results["max_f"], 4), "mae": round(results["mae"], 4)}


def _saliency_maps(engine: Engine, scenes: list[EvalScene]) -> Iterable[np.ndarray]:
    name = engine.manifest.output("saliency")[0].name
    for scene in scenes:
        with Image.open(scene.image) as img:
            outputs, _ = engine.run_sync(preprocess(img.convert("RGB"), engine.manifest.preprocess)[None])
        yield outputs[name][0, 0]


def _shipped_grouping(manifest: Manifest) -> GroupingSpec:
    if manifest.grouping is None:
        raise SystemExit(f"bundle {manifest.name} is not a co-saliency bundle (its manifest has no grouping)")
    return manifest.grouping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate_cosal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, help="co-saliency bundle name under bundles/ or folder")
    parser.add_argument("--scenes", type=Path, required=True, help="test scenes (training.cosal_data folder)")
    parser.add_argument("--val-scenes", type=Path, default=Path("runs/cosal/val"), help="for baseline settings")
    parser.add_argument("--saliency-bundle", help="a saliency bundle whose map is scored as a co-saliency map")
    parser.add_argument(
        "--proposal-sources",
        type=lambda text: [part for part in text.split(",") if part],
        help="comma list of the instance sources to calibrate and compare (default: all the bundle offers)",
    )
    parser.add_argument("--limit", type=int, help="only the first N scenes of each folder")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    engine = Engine(args.bundle, "auto", ["CPUExecutionProvider"], intra_op_threads=args.threads)
    shipped = _shipped_grouping(engine.manifest)
    try:
        sources = requested_sources(engine.manifest, args.proposal_sources)
    except ValueError as error:
        parser.error(str(error))
    size = engine.input_size
    progress = not args.no_progress
    test = read_eval_scenes(args.scenes, args.limit)
    val = read_eval_scenes(args.val_scenes, args.limit)
    test_out = run_bundle(engine, test, progress)
    val_out = run_bundle(engine, val, progress)
    quality = service_quality(engine) if engine.manifest.quality else None
    learned = service_vectors(engine, quality)

    def scores(vectors: VectorFn, spec: GroupingSpec, maps: list[np.ndarray] | None = None) -> dict[str, Any]:
        return evaluate(test, test_out, vectors, spec, size, maps, quality)

    table = calibrate(
        val,
        val_out,
        learned,
        size,
        sources,
        str(args.val_scenes),
        vector_kinds(engine.manifest),
        quality,
    )
    per_source = best_per(table, "proposals")
    colour = best_per(
        calibrate(val, val_out, colour_vectors, size, (shipped.proposals,), str(args.val_scenes), quality=quality),
        "proposals",
    )
    colour_row = scores(colour_vectors, colour[shipped.proposals])
    colour_row["settings"]["vectors"] = "colour_histogram"
    result: dict[str, Any] = {
        "bundle": str(engine.info.bundle_dir),
        "variant": engine.info.variant,
        "scenes": str(args.scenes),
        "count": len(test),
        "shipped": scores(learned, shipped),
        # the shipped settings keeping every member, duplicates of a copy included (what member_overlap changes)
        "every_member": scores(learned, shipped.model_copy(update={"member_overlap": 1.0})),
        "decoder_map": map_scores(test, (o.outputs["probability"] for o in test_out)),
        "proposals": {mode: scores(learned, spec) for mode, spec in per_source.items()},
        "vectors": {
            kind: scores(learned, spec)
            for kind, spec in best_per(table, "vectors", proposals=shipped.proposals).items()
        },
        "baselines": {"colour_histogram": colour_row},
    }
    if shipped.proposals in ("rpn", "both"):
        # how the RPN's boxes are scored (objectness alone, or times box fit), each with its settings chosen on
        # --val-scenes for the shipped instance source and vectors
        result["rpn_scores"] = {
            kind: scores(learned, spec)
            for kind, spec in best_per(table, "rpn_score", proposals=shipped.proposals, vectors=shipped.vectors).items()
        }
    if shipped.proposals == "scored":
        # each instance its own vector, or the votes of the confident candidates around it (vote_iou), each with its
        # settings chosen on --val-scenes for the shipped vectors
        result["vector_votes"] = {
            str(vote): scores(learned, spec)
            for vote, spec in best_per(table, "vote_iou", proposals="scored", vectors=shipped.vectors).items()
        }
    if shipped.proposals == "both":
        # the shipped settings with every connected component kept whole (what split_components changes)
        result["whole_components"] = scores(learned, shipped.model_copy(update={"split_components": False}))
    if args.saliency_bundle:
        saliency = Engine(args.saliency_bundle, "auto", ["CPUExecutionProvider"], intra_op_threads=args.threads)
        saliency_maps = list(_saliency_maps(saliency, test))
        bundle = str(saliency.info.bundle_dir)
        result["baselines"]["saliency_map"] = {"bundle": bundle, **map_scores(test, saliency_maps)}
        # The co-saliency model's groups with the saliency model's map inside their boxes (outputs=groups answers the
        # co-saliency model's own map, whichever model the request names: this row says what the other map would give).
        result["saliency_map_in_groups"] = {
            "bundle": bundle,
            **scores(learned, shipped, saliency_maps),
        }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
