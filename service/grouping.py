"""Co-saliency groups from a co-saliency bundle's outputs, in numpy (the within-image co-saliency paper, sec. III).

The bundle's graph gives, per image, a co-saliency probability map, the RPN's decoded boxes with their objectness
and the feature-sensitive features ``R``. Grouping then:

1. cuts instances: the RPN's boxes scoring at least ``min_score`` whose mean map probability reaches ``min_map``,
   after NMS (``proposals: rpn``; the score is the objectness, or with ``rpn_score: objectness_fit`` the objectness
   times :func:`box_fit`: the RPN's objectness alone misses many true boxes), the connected components
   of the map above ``mask_threshold`` (``proposals: components``), both (their union after NMS; with
   ``split_components`` a component holding two or more RPN boxes gives way to them: touching objects merge in the
   map), or the components and a loose set of RPN boxes scored by the bundle's instance quality head, a third small
   graph that predicts each box's IoU with the object it frames from the crop encoder's features of the box and the
   map in and around it (``proposals: scored``, :func:`candidate_boxes`, :func:`instance_quality`), then NMS;
2. gives each instance a unit vector: its box pooled on ``R`` with RoIAlign (same semantics as
   ``models/roi_align.py``) and mapped by the bundle's regional feature mapping head (a second small ONNX graph;
   ``vectors: learned``, the paper's), the bundle's frozen encoder features averaged under the map inside the box
   (``vectors: appearance``, :func:`appearance_vectors`), or the frozen encoder run again on the box's own crop of the
   image, its features averaged under the map (``vectors: crops``, :func:`crop_vectors`: a small object spans a few
   cells of the whole image's stride-16 features, but a whole crop's); with scored proposals and ``vote_iou``, an
   instance's vector is the score-weighted mean of the vectors of the confident candidates around it
   (:func:`vote_vectors`: one crop's vector moves with how its box sits on the object);
3. clusters the vectors by average linkage on cosine distance, merging while the closest clusters are nearer than
   ``distance_threshold`` (chosen on validation scenes at export time), then drops, within each cluster, the members
   whose map mass lies mostly (above ``member_overlap``) inside better-fitting members' boxes (fit: :func:`box_fit`):
   the RPN's shifted and loose duplicates of one object look alike and cluster with it, and a group should list each
   object once;
4. answers clusters of two or more instances as groups (most cohesive first) and the rest as singletons; the
   co-saliency map is the probability map inside the groups' boxes and zero elsewhere.

Boxes here are in network-input pixels ``(x1, y1, x2, y2)``; the caller scales them to the image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.imaging import preprocess, resize_map
from service.manifest import BundleError, CropEncoderSpec, GroupingSpec, Manifest, PreprocessSpec, RegionHeadSpec

# The share of an RPN box's area inside a connected component's box for the box to count as one of its objects
CONTAINED = 0.8
# Added to the map's weights inside a box, so a box the map leaves dark (a distractor) is described by its plain mean
APPEARANCE_WEIGHT_FLOOR = 1e-3
# The candidates of scored proposals (candidate_boxes): loose enough to hold a box on almost every object (the RPN has
# one at IoU >= 0.5 for 96 % of the composed scenes' copies at objectness 0.05), few enough to crop each
CANDIDATE_MIN_SCORE = 0.05
CANDIDATE_MIN_MAP = 0.1
CANDIDATE_NMS_IOU = 0.7
MAX_CANDIDATES = 48
QUALITY_CONTEXT = 0.5  # the quality head's context map: the box grown by half its size on every side


def _box_intersection(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection areas ``[N, M]`` of ``(x1, y1, x2, y2)`` boxes."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    return np.clip(bottom_right - top_left, 0, None).prod(axis=-1)


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=-1)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of ``(x1, y1, x2, y2)`` boxes."""
    inter = _box_intersection(boxes_a, boxes_b)
    union = _box_area(boxes_a)[:, None] + _box_area(boxes_b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy non-maximum suppression keeps, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best : best + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _axis_weights(start: np.ndarray, size: np.ndarray, bins: int, sampling_ratio: int, length: int) -> np.ndarray:
    """Averaged bilinear weights ``[K, bins, length]`` of ``sampling_ratio`` samples per bin along one axis
    (torchvision's ``bilinear_interpolate`` rules, as ``models.roi_align``)."""
    steps = (np.arange(sampling_ratio) + 0.5) / sampling_ratio
    offsets = np.arange(bins)[:, None] + steps[None, :]  # [bins, S]
    coords = start[:, None, None] + offsets[None] * (size / bins)[:, None, None]  # [K, bins, S]
    inside = ((coords >= -1.0) & (coords <= length)).astype(np.float64)
    coords = np.maximum(coords, 0.0)
    low = np.minimum(np.floor(coords), length - 1)
    at_edge = low >= length - 1
    frac = np.where(at_edge, 0.0, coords - low)
    low_idx = low.astype(np.int64)
    high_idx = np.where(at_edge, low_idx, low_idx + 1)
    weights = np.zeros((*coords.shape, length))
    k, b, s = np.indices(coords.shape)
    np.add.at(weights, (k, b, s, low_idx), (1 - frac) * inside)
    np.add.at(weights, (k, b, s, high_idx), frac * inside)
    return weights.mean(axis=2)


def roi_align(
    features: np.ndarray, boxes: np.ndarray, pool_size: int, stride: int, sampling_ratio: int = 2
) -> np.ndarray:
    """RoIAlign (``aligned=True``) of ``[K,4]`` input-pixel boxes on one image's ``[C,H,W]`` features →
    ``[K, C, pool_size, pool_size]``."""
    scaled = boxes.astype(np.float64) / stride - 0.5
    x1, y1, x2, y2 = scaled.T
    height, width = features.shape[-2:]
    weights_y = _axis_weights(y1, y2 - y1, pool_size, sampling_ratio, height)  # [K, P, H]
    weights_x = _axis_weights(x1, x2 - x1, pool_size, sampling_ratio, width)  # [K, P, W]
    pooled = np.einsum("kph,chw,kqw->kcpq", weights_y, features.astype(np.float64), weights_x, optimize=True)
    return pooled.astype(np.float32)


def average_linkage(vectors: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Average-linkage agglomeration of unit vectors ``[K, D]`` on cosine distance: each merge's distance (mean
    pairwise distance between the two clusters) and the cluster labels after it. Average linkage never merges
    closer than the merge before, so the clusters at a threshold are those after the last merge below it."""
    count = len(vectors)
    distance = 1.0 - np.clip(vectors @ vectors.T, -1.0, 1.0)
    labels = np.arange(count)
    merges = []
    while len(np.unique(labels)) > 1:
        ids = np.unique(labels)
        member = labels[None, :] == ids[:, None]  # [n, K]
        sizes = member.sum(axis=1)
        linkage = (member @ distance @ member.T) / np.outer(sizes, sizes)
        np.fill_diagonal(linkage, np.inf)
        a, b = np.unravel_index(int(np.argmin(linkage)), linkage.shape)
        labels = np.where(labels == ids[b], ids[a], labels)
        merges.append((float(linkage[a, b]), labels.copy()))
    return merges


def cluster(vectors: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Average-linkage clusters of unit vectors ``[K, D]``: merge while the two closest clusters are nearer than
    ``distance_threshold`` (cosine distance). Labels ``[K]`` are 0, 1, … in order of each cluster's first member."""
    return cut_linkage(average_linkage(vectors), len(vectors), distance_threshold)


def cut_linkage(merges: list[tuple[float, np.ndarray]], count: int, distance_threshold: float) -> np.ndarray:
    """The labels of :func:`average_linkage` at ``distance_threshold`` (so one agglomeration serves many cuts)."""
    labels = np.arange(count)
    for distance, after in merges:
        if distance >= distance_threshold:
            break
        labels = after
    renumber = {label: index for index, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.asarray([renumber[label] for label in labels.tolist()], dtype=np.int64)


def label_components(foreground: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean map: 0 background, 1…N in raster order of each component's
    first pixel (``scipy.ndimage.label``'s numbering, computed by propagating the largest index to neighbours)."""
    height, width = foreground.shape
    labels = np.where(foreground, np.arange(1, foreground.size + 1).reshape(height, width), 0)
    while True:
        padded = np.pad(labels, 1)
        spread = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.maximum(spread, padded[dy : dy + height, dx : dx + width], out=spread)
        spread = np.where(foreground, spread, 0)
        if np.array_equal(spread, labels):
            break
        labels = spread
    roots = np.unique(labels[labels > 0])
    first = np.asarray([np.flatnonzero(labels.ravel() == r)[0] for r in roots], dtype=np.int64)
    renumber = np.zeros(foreground.size + 1, dtype=np.int64)
    renumber[roots[np.argsort(first)]] = np.arange(1, len(roots) + 1)
    return renumber[labels]


def component_boxes(probability: np.ndarray, threshold: float, min_area_fraction: float) -> np.ndarray:
    """Boxes ``[N, 4]`` (exclusive max corner) of the 8-connected components of ``probability ≥ threshold`` that
    cover at least ``min_area_fraction`` of the map, in map pixels, largest first."""
    labels = label_components(probability >= threshold)
    boxes, areas = [], []
    for index in range(1, int(labels.max()) + 1):
        rows, cols = np.nonzero(labels == index)
        if len(rows) >= min_area_fraction * probability.size:
            boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            areas.append(len(rows))
    order = np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]


@dataclass(frozen=True)
class InstanceEncoders:
    """A co-saliency bundle's graphs that describe instances, as plain callables (ONNX sessions in the service):
    the regional feature mapping head (pooled ``[K, C*P*P]`` → vectors ``[K, D]``, RoIAlign geometry ``region``)
    and, in bundles that have them, the crop encoder (crops ``[K, 3, S, S]`` → features ``[K, C, s, s]``, ``crop``),
    whose crops are normalized as the network input (``preprocess``), and the instance quality head."""

    regions: Callable[[np.ndarray], np.ndarray]
    region: RegionHeadSpec
    preprocess: PreprocessSpec
    crops: Callable[[np.ndarray], np.ndarray] | None = None
    crop: CropEncoderSpec | None = None
    quality: Callable[[np.ndarray], np.ndarray] | None = None  # quality_inputs [K, C + 2, s, s] → scores [K]


@dataclass(frozen=True)
class Instance:
    """One salient instance: its box in network-input pixels, its score and its unit vector."""

    box: np.ndarray  # [4] float (x1, y1, x2, y2)
    score: float
    vector: np.ndarray  # [D]


@dataclass(frozen=True)
class Grouping:
    """The answer for one image: groups (each a list of instances, most cohesive first), their cohesion (mean
    pairwise cosine similarity of the members' vectors) and the instances that joined no group."""

    groups: list[list[Instance]]
    cohesion: list[float]
    singletons: list[Instance]


def _map_scale(probability: np.ndarray, input_size: int) -> np.ndarray:
    """Network-input pixels per map pixel, as ``(x, y, x, y)`` for dividing boxes."""
    return input_size / np.asarray(probability.shape[::-1] * 2, dtype=np.float32)


def _rpn_instances(
    probability: np.ndarray, boxes: np.ndarray, scores: np.ndarray, spec: GroupingSpec, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.clip(boxes, 0, input_size)
    valid = (scores >= spec.min_score) & np.all(boxes[:, 2:] - boxes[:, :2] >= 2, axis=1)
    boxes, scores = boxes[valid], scores[valid]
    if spec.min_map > 0:
        scale = _map_scale(probability, input_size)
        salient = np.asarray([_mean_inside(probability, box / scale) >= spec.min_map for box in boxes], dtype=bool)
        boxes, scores = boxes[salient], scores[salient]
    if spec.rpn_score == "objectness_fit":
        scores = (scores * box_fit(probability, boxes, input_size)).astype(np.float32)
        framing = scores >= spec.min_score
        boxes, scores = boxes[framing], scores[framing]
    keep = nms(boxes, scores, spec.nms_iou)[: spec.max_instances]
    return boxes[keep], scores[keep]


def _component_instances(probability: np.ndarray, spec: GroupingSpec, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _map_scale(probability, input_size)
    found = component_boxes(probability, spec.mask_threshold, spec.min_area_fraction)[: spec.max_instances] * scale
    scores = np.asarray([_mean_inside(probability, box / scale) for box in found], dtype=np.float32)
    return found.astype(np.float32), scores.reshape(-1)


def propose(
    probability: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    spec: GroupingSpec,
    input_size: int,
    quality: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance boxes ``[N,4]`` (network-input pixels) and scores ``[N]``, per ``spec.proposals``: the RPN's boxes
    (score ≥ ``min_score``, mean map probability inside ≥ ``min_map``, NMS), the map's connected components
    (score: mean probability inside), ``both``: their union after NMS, components first (they follow the map's
    object outlines; the RPN adds what the map leaves dark or merges), or ``scored``: :func:`candidate_boxes` scored
    by ``quality`` (boxes ``[K, 4]`` → the instance quality head's scores ``[K]``), those scoring ≥ ``min_score``,
    after NMS."""
    if spec.proposals == "scored":
        candidates, predicted = confident_candidates(probability, boxes, scores, spec, input_size, quality)
        keep = nms(candidates, predicted, spec.nms_iou)[: spec.max_instances]
        return candidates[keep], predicted[keep]
    if spec.proposals == "rpn":
        return _rpn_instances(probability, boxes, scores, spec, input_size)
    components = _component_instances(probability, spec, input_size)
    if spec.proposals == "components":
        return components
    rpn = _rpn_instances(probability, boxes, scores, spec, input_size)
    first = split_components(*components, *rpn) if spec.split_components else components
    rest = _not_in(rpn, first[0])
    union = np.concatenate([first[0], rest[0]]).reshape(-1, 4)
    union_scores = np.concatenate([first[1], rest[1]])
    priority = np.concatenate([np.ones(len(first[0])), np.zeros(len(rest[0]))]) * 2 + union_scores
    keep = nms(union, priority, spec.nms_iou)[: spec.max_instances]
    return union[keep], union_scores[keep]


def confident_candidates(
    probability: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    spec: GroupingSpec,
    input_size: int,
    quality: Callable[[np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The :func:`candidate_boxes` that ``quality`` (boxes ``[K, 4]`` → the instance quality head's scores ``[K]``)
    rates at least ``spec.min_score``, and their scores: what scored proposals suppress to instances, and what votes
    for their vectors (:func:`vote_vectors`)."""
    if quality is None:
        raise BundleError("grouping asks for scored proposals but no instance quality head was given")
    candidates = candidate_boxes(probability, boxes, scores, spec, input_size)
    predicted = np.asarray(quality(candidates), dtype=np.float32).reshape(-1)
    confident = predicted >= spec.min_score
    return candidates[confident], predicted[confident]


def split_components(
    component_boxes: np.ndarray, component_scores: np.ndarray, rpn_boxes: np.ndarray, rpn_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each component box that holds two or more RPN boxes (at least :data:`CONTAINED` of each box's area inside it)
    replaced by those boxes: touching objects merge into one connected component of the map, while the RPN still
    frames them one by one. Boxes and scores in, boxes and scores out (components' order kept)."""
    boxes, scores = [], []
    for box, score in zip(component_boxes, component_scores, strict=True):
        inside = _contained(rpn_boxes, box) >= CONTAINED
        if int(inside.sum()) >= 2:
            boxes.extend(rpn_boxes[inside])
            scores.extend(rpn_scores[inside])
        else:
            boxes.append(box)
            scores.append(score)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(scores, dtype=np.float32)


def _contained(boxes: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """The share of each box's area ``[N]`` that lies inside ``outer``."""
    return _box_intersection(boxes, outer[None])[:, 0] / np.maximum(_box_area(boxes), 1e-12)


def _not_in(instances: tuple[np.ndarray, np.ndarray], taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The instances whose box is not one of ``taken`` (boxes already placed by :func:`split_components`)."""
    boxes, scores = instances
    fresh = np.asarray([not np.any(np.all(taken == box, axis=1)) for box in boxes], dtype=bool).reshape(-1)
    return boxes[fresh], scores[fresh]


def _mean_inside(probability: np.ndarray, box: np.ndarray) -> float:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return float(probability[y1:y2, x1:x2].mean()) if x2 > x1 and y2 > y1 else 0.0


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (an all-zero row stays zero), as float32."""
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def region_vectors(
    features: np.ndarray, boxes: np.ndarray, embed: Callable[[np.ndarray], np.ndarray], region: RegionHeadSpec
) -> np.ndarray:
    """Unit vectors ``[K, D]`` of ``[K, 4]`` boxes: RoIAlign on ``R`` ``[C, H, W]``, then the head ``embed``
    (pooled ``[K, C*P*P]`` → ``[K, D]``)."""
    if len(boxes) == 0:
        return np.zeros((0, 1), dtype=np.float32)
    pooled = roi_align(features, boxes, region.pool_size, region.stride, region.sampling_ratio)
    vectors = embed(pooled.reshape(len(pooled), -1))
    return _unit_rows(vectors)


def appearance_vectors(features: np.ndarray, probability: np.ndarray, boxes: np.ndarray, input_size: int) -> np.ndarray:
    """Unit vectors ``[K, C]`` of ``[K, 4]`` boxes (network-input pixels): the mean of the encoder features
    ``[C, H, W]`` over the feature cells each box covers, weighted by the ``[h, w]`` map (resized to ``H × W``) plus
    :data:`APPEARANCE_WEIGHT_FLOOR`, so the object's pixels, not the background around it, describe the instance."""
    channels, height, width = features.shape
    if len(boxes) == 0:
        return np.zeros((0, channels), dtype=np.float32)
    weights = resize_map(probability, (width, height)).astype(np.float64) + APPEARANCE_WEIGHT_FLOOR
    cells = np.asarray(boxes, dtype=np.float64) / np.asarray([input_size / width, input_size / height] * 2)
    vectors = []
    for x1, y1, x2, y2 in cells:
        c0, r0 = min(max(int(np.floor(x1)), 0), width - 1), min(max(int(np.floor(y1)), 0), height - 1)
        c1, r1 = max(min(int(np.ceil(x2)), width), c0 + 1), max(min(int(np.ceil(y2)), height), r0 + 1)
        inside = weights[r0:r1, c0:c1]
        vectors.append(np.einsum("chw,hw->c", features[:, r0:r1, c0:c1].astype(np.float64), inside) / inside.sum())
    stacked = np.asarray(vectors)
    return _unit_rows(stacked)


def crop_vectors(
    image: Image.Image,
    probability: np.ndarray,
    boxes: np.ndarray,
    encoders: InstanceEncoders,
    input_size: int,
    known: dict[bytes, np.ndarray] | None = None,
) -> np.ndarray:
    """Unit vectors ``[K, C]`` of ``[K, 4]`` boxes (network-input pixels): each box cut out of ``image`` (any size:
    the boxes are scaled to it), resized to the crop encoder's square input and normalized as the network input, run
    through the crop encoder, and its features averaged under the map's share of that box (RoIAlign of the ``[h, w]``
    map onto the feature grid) plus :data:`APPEARANCE_WEIGHT_FLOOR` (``known``: see :func:`crop_features`)."""
    if len(boxes) == 0:
        return np.zeros((0, 1), dtype=np.float32)
    features = crop_features(image, boxes, encoders, input_size, known).astype(np.float64)  # [K, C, s, s]
    weights = box_maps(probability, boxes, input_size, features.shape[-1]).astype(np.float64)
    weights += APPEARANCE_WEIGHT_FLOOR
    vectors = np.einsum("kchw,khw->kc", features, weights) / weights.sum(axis=(1, 2))[:, None]
    return _unit_rows(vectors)


def crop_features(
    image: Image.Image,
    boxes: np.ndarray,
    encoders: InstanceEncoders,
    input_size: int,
    known: dict[bytes, np.ndarray] | None = None,
) -> np.ndarray:
    """The crop encoder's features ``[K, C, s, s]`` of ``[K, 4]`` boxes (network-input pixels, ``K`` ≥ 1): each box
    cut out of ``image`` (any size: the boxes are scaled to it), resized to the encoder's square input and normalized
    as the network input. ``known`` (one image's features by box, filled here) spares a box's second crop: scored
    proposals crop every candidate, crop vectors the chosen ones again."""
    if encoders.crops is None or encoders.crop is None:
        raise BundleError("grouping asks for crop features but the bundle has no crop encoder")
    known = {} if known is None else known
    keys = [np.asarray(box, dtype=np.float32).tobytes() for box in boxes]
    fresh = [key for key in dict.fromkeys(keys) if key not in known]
    if fresh:
        spec = encoders.crop
        crop_input = encoders.preprocess.model_copy(update={"input_size": spec.crop_size})
        to_image = np.asarray([image.width, image.height] * 2, dtype=np.float64) / input_size
        crops = []
        for key in fresh:
            x1, y1, x2, y2 = (float(v) for v in np.frombuffer(key, dtype=np.float32) * to_image)
            cut = image.resize(
                (spec.crop_size, spec.crop_size), Image.BILINEAR, box=(x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))
            )
            crops.append(preprocess(cut, crop_input))
        known.update(zip(fresh, encoders.crops(np.stack(crops)).astype(np.float32), strict=True))
    return np.stack([known[key] for key in keys])


def box_maps(probability: np.ndarray, boxes: np.ndarray, input_size: int, size: int) -> np.ndarray:
    """The ``[h, w]`` map inside each ``[K, 4]`` box (network-input pixels), RoIAligned to ``[K, size, size]``."""
    map_boxes = np.asarray(boxes, dtype=np.float64) / _map_scale(probability, input_size)
    return roi_align(probability[None], map_boxes, size, 1, sampling_ratio=4)[:, 0]


def quality_inputs(features: np.ndarray, probability: np.ndarray, boxes: np.ndarray, input_size: int) -> np.ndarray:
    """What the instance quality head reads for ``[K, 4]`` boxes ``[K, C + 2, s, s]``: the crop features ``[K, C, s,
    s]``, the map inside each box, and the map inside the box grown by :data:`QUALITY_CONTEXT` of its size on every
    side (a box shifted off its object, or cutting one, leaves salient mass just outside it)."""
    size = features.shape[-1]
    boxes = np.asarray(boxes, dtype=np.float64)
    margin = np.tile((boxes[:, 2:] - boxes[:, :2]) * QUALITY_CONTEXT, 2) * np.asarray([-1, -1, 1, 1])
    maps = [box_maps(probability, b, input_size, size)[:, None] for b in (boxes, boxes + margin)]
    return np.concatenate([features, *maps], axis=1).astype(np.float32)


def candidate_boxes(
    probability: np.ndarray, boxes: np.ndarray, scores: np.ndarray, spec: GroupingSpec, input_size: int
) -> np.ndarray:
    """The boxes ``[N, 4]`` the instance quality head chooses among (``proposals: scored``): the map's connected
    components, then the RPN's boxes with objectness ≥ :data:`CANDIDATE_MIN_SCORE` and mean map probability ≥
    :data:`CANDIDATE_MIN_MAP`, after NMS at :data:`CANDIDATE_NMS_IOU`, at most :data:`MAX_CANDIDATES` of them. Fixed
    here rather than in the spec: the head was trained on exactly these candidates."""
    loose = spec.model_copy(
        update={
            "min_score": CANDIDATE_MIN_SCORE,
            "min_map": CANDIDATE_MIN_MAP,
            "nms_iou": CANDIDATE_NMS_IOU,
            "max_instances": MAX_CANDIDATES,
            "rpn_score": "objectness",
        }
    )
    rpn, _ = _rpn_instances(probability, boxes, scores, loose, input_size)
    components, _ = _component_instances(probability, spec, input_size)
    return np.concatenate([components, rpn]).reshape(-1, 4).astype(np.float32)


def instance_quality(
    outputs: Mapping[str, np.ndarray],
    image: Image.Image,
    boxes: np.ndarray,
    encoders: InstanceEncoders,
    input_size: int,
    known: dict[bytes, np.ndarray] | None = None,
) -> np.ndarray:
    """The quality head's score ``[K]`` of each ``[K, 4]`` box: its predicted IoU with the object it frames
    (``known``: see :func:`crop_features`)."""
    if encoders.quality is None:
        raise BundleError("grouping asks for scored proposals but the bundle has no instance quality head")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.float32)
    features = crop_features(image, boxes, encoders, input_size, known)
    return encoders.quality(quality_inputs(features, outputs["probability"], boxes, input_size)).reshape(-1)


def instance_vectors(
    outputs: Mapping[str, np.ndarray],
    image: Image.Image,
    boxes: np.ndarray,
    encoders: InstanceEncoders,
    spec: GroupingSpec,
    input_size: int,
    known: dict[bytes, np.ndarray] | None = None,
) -> np.ndarray:
    """The unit vectors ``spec.vectors`` names for ``boxes``, from one image's :func:`image_outputs` and the image
    (``known``: see :func:`crop_features`)."""
    if spec.vectors == "appearance":
        if "appearance" not in outputs:
            raise BundleError("grouping asks for appearance vectors but the bundle has no 'appearance' output")
        return appearance_vectors(outputs["appearance"], outputs["probability"], boxes, input_size)
    if spec.vectors == "crops":
        return crop_vectors(image, outputs["probability"], boxes, encoders, input_size, known)
    return region_vectors(outputs["features"], boxes, encoders.regions, encoders.region)


def vote_vectors(
    boxes: np.ndarray, voters: np.ndarray, weights: np.ndarray, voter_vectors: np.ndarray, vote_iou: float
) -> np.ndarray:
    """Unit vectors ``[K, D]`` of ``[K, 4]`` boxes, each the ``weights``-weighted mean of the ``[V, D]`` vectors of
    the ``[V, 4]`` voter boxes that overlap it at IoU ≥ ``vote_iou`` (a box among the voters votes for itself). One
    crop's vector moves with how its box sits on the object; the mean over the confident boxes around the object
    moves less, as box voting steadies a detector's boxes."""
    if len(boxes) == 0:
        return np.zeros((0, voter_vectors.shape[-1]), dtype=np.float32)
    votes = (box_iou(np.asarray(boxes, np.float64), np.asarray(voters, np.float64)) >= vote_iou) * weights[None]
    return _unit_rows(votes @ np.asarray(voter_vectors, dtype=np.float64))


def _map_cells(box: np.ndarray, scale: np.ndarray) -> tuple[int, ...]:
    """A network-input box's corners in map pixels, rounded, never negative (a negative end would wrap a slice)."""
    return tuple(max(round(float(v)), 0) for v in np.asarray(box, dtype=np.float64) / scale)


def box_fit(probability: np.ndarray, boxes: np.ndarray, input_size: int) -> np.ndarray:
    """How well each ``[K, 4]`` box (network-input pixels) frames the salient mass around it ``[K]``: the soft IoU
    of the box with the ``[h, w]`` map inside the box grown by half its size on every side,
    Σ_box p / (|box| + Σ_(grown ∖ box) p). A box shifted off its object leaves mass outside it; a loose box holds
    background; both fit worse than the box around the object."""
    scale = _map_scale(probability, input_size)
    height, width = probability.shape
    fits = []
    for box in np.asarray(boxes, dtype=np.float64):
        x1, y1, x2, y2 = _map_cells(box, scale)
        half_w, half_h = (x2 - x1) // 2, (y2 - y1) // 2
        inside = float(probability[y1:y2, x1:x2].sum())
        grown = probability[
            max(y1 - half_h, 0) : min(y2 + half_h, height), max(x1 - half_w, 0) : min(x2 + half_w, width)
        ]
        area = max(x2 - x1, 0) * max(y2 - y1, 0)
        fits.append(inside / max(area + float(grown.sum()) - inside, 1e-12))
    return np.asarray(fits, dtype=np.float64)


def distinct_members(
    priority: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    probability: np.ndarray,
    input_size: int,
    member_overlap: float,
) -> np.ndarray:
    """Which instances to keep ``[K]`` bool: within each cluster, highest ``priority`` first, an instance is dropped
    as a duplicate when more than ``member_overlap`` of the map's mass inside its box lies inside the boxes already
    kept (``member_overlap`` 1 keeps all). A shifted or loose box on an object kept already holds little mass of its
    own; a second copy partly hidden behind the first keeps most of its mass outside the first one's box."""
    keep = np.ones(len(boxes), dtype=bool)
    if member_overlap >= 1:
        return keep
    scale = _map_scale(probability, input_size)
    covered: dict[int, np.ndarray] = {}
    for index in np.argsort(-np.asarray(priority), kind="stable"):
        x1, y1, x2, y2 = _map_cells(boxes[index], scale)
        taken = covered.setdefault(int(labels[index]), np.zeros(probability.shape, dtype=bool))
        mass = probability[y1:y2, x1:x2].astype(np.float64)
        total = float(mass.sum())
        if total > 0 and float(mass[taken[y1:y2, x1:x2]].sum()) > member_overlap * total:
            keep[index] = False
        else:
            taken[y1:y2, x1:x2] = True
    return keep


def group_instances(boxes: np.ndarray, scores: np.ndarray, vectors: np.ndarray, labels: np.ndarray) -> Grouping:
    """Instances by cluster ``labels`` (:func:`cluster`): clusters of two or more are groups (most cohesive first,
    members by score), the rest singletons (by score)."""
    instances = [Instance(b, float(s), v) for b, s, v in zip(boxes, scores, vectors, strict=True)]
    groups, cohesion, singletons = [], [], []
    for label in np.unique(labels):
        members = [instances[i] for i in np.flatnonzero(labels == label)]
        if len(members) < 2:
            singletons.extend(members)
            continue
        stacked = np.stack([m.vector for m in members])
        similarity = stacked @ stacked.T
        pairs = len(members) * (len(members) - 1)
        groups.append(sorted(members, key=lambda m: -m.score))
        cohesion.append(float((similarity.sum() - np.trace(similarity)) / pairs))
    order = np.argsort(-np.asarray(cohesion), kind="stable")
    return Grouping(
        groups=[groups[i] for i in order],
        cohesion=[cohesion[i] for i in order],
        singletons=sorted(singletons, key=lambda m: -m.score),
    )


def group_proposals(
    probability: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    vectors: np.ndarray,
    spec: GroupingSpec,
    input_size: int,
) -> Grouping:
    """Group proposed instances by their unit vectors: :func:`cluster` at ``spec.distance_threshold``,
    :func:`distinct_members` (best :func:`box_fit` first) at ``spec.member_overlap``, :func:`group_instances`."""
    labels = cluster(vectors, spec.distance_threshold)
    fit = box_fit(probability, boxes, input_size)
    keep = distinct_members(fit, boxes, labels, probability, input_size, spec.member_overlap)
    return group_instances(boxes[keep], np.asarray(scores)[keep], vectors[keep], labels[keep])


def find_groups(
    outputs: Mapping[str, np.ndarray],
    image: Image.Image,
    encoders: InstanceEncoders,
    spec: GroupingSpec,
    input_size: int,
) -> Grouping:
    """Group one image's instances: :func:`propose` (scored by :func:`instance_quality` where ``spec`` asks),
    :func:`instance_vectors` (with ``spec.vote_iou``, :func:`vote_vectors` of the confident candidates),
    :func:`group_proposals`.

    Args:
        outputs: the image's :func:`image_outputs`; ``image``: the RGB image they were computed from (any size).
        encoders: the bundle's graphs that describe instances.
        spec: proposal, suppression, vector and clustering settings.
        input_size: side of the square network input.
    """

    known: dict[bytes, np.ndarray] = {}  # each box cropped and encoded once
    rated: dict[bytes, np.ndarray] = {}  # proposals and their votes rate the same candidates

    def quality(candidates: np.ndarray) -> np.ndarray:
        key = np.asarray(candidates, dtype=np.float32).tobytes()
        if key not in rated:
            rated[key] = instance_quality(outputs, image, candidates, encoders, input_size, known)
        return rated[key]

    def vectors(boxes: np.ndarray) -> np.ndarray:
        return instance_vectors(outputs, image, boxes, encoders, spec, input_size, known)

    probability, rpn_boxes, rpn_scores = outputs["probability"], outputs["boxes"], outputs["scores"]
    boxes, scores = propose(probability, rpn_boxes, rpn_scores, spec, input_size, quality)
    if spec.vote_iou is None:
        described = vectors(boxes)
    else:
        voters, weights = confident_candidates(probability, rpn_boxes, rpn_scores, spec, input_size, quality)
        described = vote_vectors(boxes, voters, weights, vectors(voters), spec.vote_iou)
    return group_proposals(probability, boxes, scores, described, spec, input_size)


def image_outputs(outputs: Mapping[str, np.ndarray], manifest: Manifest) -> dict[str, np.ndarray]:
    """One image's co-saliency map ``[h, w]``, RPN boxes ``[N, 4]`` (network-input pixels; the graph gives
    fractions of the input side), scores ``[N]``, features ``R`` ``[C, H, W]`` and, where the bundle has them
    (exported since ``vectors: appearance`` exists), encoder features ``[C', H', W']`` from a co-saliency bundle's
    outputs for that image (batch axis removed), under the keys ``probability``, ``boxes``, ``scores``,
    ``features``, ``appearance``."""
    by_kind = {}
    for kind in ("saliency", "boxes", "scores", "embedding"):
        specs = manifest.output(kind)
        if not specs:
            raise BundleError(f"bundle {manifest.name} has no {kind!r} output, which co-saliency grouping needs")
        by_kind[kind] = outputs[specs[0].name]
    found = {
        "probability": by_kind["saliency"][0],
        "boxes": by_kind["boxes"] * manifest.preprocess.input_size,
        "scores": by_kind["scores"],
        "features": by_kind["embedding"],
    }
    appearance = manifest.output("appearance")
    return found | ({"appearance": outputs[appearance[0].name]} if appearance else {})


def image_box(box: np.ndarray, image_size: tuple[int, int], input_size: int) -> tuple[int, int, int, int]:
    """A network-input box as whole image pixels ``(x0, y0, x1, y1)``, x0/y0 inclusive and x1/y1 exclusive, covering
    the box and clipped to the ``(width, height)`` image (at least one pixel wide and high)."""
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box * np.asarray([width, height, width, height]) / input_size)
    x0 = min(max(int(np.floor(x1)), 0), width - 1)
    y0 = min(max(int(np.floor(y1)), 0), height - 1)
    return x0, y0, max(min(int(np.ceil(x2)), width), x0 + 1), max(min(int(np.ceil(y2)), height), y0 + 1)


def cosaliency_map(probability: np.ndarray, grouping: Grouping, input_size: int) -> np.ndarray:
    """The co-saliency map (``probability``'s size and dtype): ``probability`` inside the boxes of group members,
    zero elsewhere."""
    height, width = probability.shape
    cosaliency = np.zeros_like(probability)  # the only full-size array made here: the map can be 40 megapixels
    for member in (m for group in grouping.groups for m in group):
        x0, y0, x1, y1 = image_box(member.box, (width, height), input_size)
        cosaliency[y0:y1, x0:x1] = probability[y0:y1, x0:x1]
    return cosaliency
