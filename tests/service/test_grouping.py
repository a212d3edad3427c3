"""Co-saliency grouping in numpy: RoIAlign against the torch reference, NMS and components by hand, clustering of
hand-made vectors, and the image boxes a client gets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.grouping import (
    APPEARANCE_WEIGHT_FLOOR,
    CANDIDATE_MIN_SCORE,
    appearance_vectors,
    average_linkage,
    box_fit,
    box_iou,
    candidate_boxes,
    cluster,
    component_boxes,
    cosaliency_map,
    distinct_members,
    group_instances,
    image_box,
    instance_vectors,
    label_components,
    nms,
    propose,
    quality_inputs,
    roi_align,
    split_components,
)


def _unit(*rows: tuple[float, ...]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_roi_align_matches_the_torch_implementation_the_model_was_trained_with() -> None:
    torch = pytest.importorskip("torch")
    from models.roi_align import roi_align as torch_roi_align

    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 10, 12)).astype(np.float32)
    # inside, overhanging the border, tiny, and the whole image (input pixels at stride 16)
    boxes = np.asarray([[20, 30, 100, 120], [-10, 100, 60, 200], [50, 50, 53, 52], [0, 0, 192, 160]], np.float32)
    expected = torch_roi_align(
        torch.from_numpy(features)[None],
        torch.cat([torch.zeros(4, 1), torch.from_numpy(boxes)], dim=1),
        7,
        spatial_scale=1 / 16,
        sampling_ratio=2,
        aligned=True,
    ).numpy()
    np.testing.assert_allclose(roi_align(features, boxes, 7, 16, 2), expected, atol=1e-5)


def test_nms_keeps_the_best_of_each_overlapping_cluster() -> None:
    boxes = np.asarray([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10]], np.float64)
    scores = np.asarray([0.5, 0.9, 0.8, 0.1])
    # box 1 overlaps box 0 (IoU 81/119 = 0.68) and box 3 (72/118 = 0.61); box 2 overlaps nothing
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 0]  # box 3 still falls to box 0 (IoU 0.9)
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_components_are_labelled_like_scipy_and_boxed_with_exclusive_ends() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    foreground = rng.random((40, 50)) > 0.6
    expected, _ = ndimage.label(foreground, structure=np.ones((3, 3)))
    np.testing.assert_array_equal(label_components(foreground), expected)

    probability = np.zeros((20, 30))
    probability[2:6, 3:9] = 0.9  # 24 px
    probability[10:19, 20:29] = 0.8  # 81 px
    probability[15, 2] = 0.95  # one pixel: below the area floor
    np.testing.assert_array_equal(
        component_boxes(probability, 0.5, min_area_fraction=4 / 600), [[20, 10, 29, 19], [3, 2, 9, 6]]
    )


def test_clustering_groups_hand_made_vectors_at_the_threshold() -> None:
    # two tight pairs (cosine distance ~0.01) and one far vector
    vectors = _unit((1, 0, 0), (0.99, 0.14, 0), (0, 1, 0), (0.1, 0.995, 0), (0, 0, 1))
    assert cluster(vectors, 0.1).tolist() == [0, 0, 1, 1, 2]
    assert cluster(vectors, 0.001).tolist() == [0, 1, 2, 3, 4]
    assert cluster(vectors, 1.5).tolist() == [0, 0, 0, 0, 0]
    assert cluster(vectors[[4, 2, 0, 3, 1]], 0.1).tolist() == [0, 1, 2, 1, 2]  # labels follow first appearance
    distances = [d for d, _ in average_linkage(vectors)]
    assert distances == sorted(distances)  # average linkage merges never get closer


def test_groups_are_two_or_more_most_cohesive_first_and_the_rest_singletons() -> None:
    vectors = _unit((1, 0, 0), (0.99, 0.14, 0), (0, 1, 0), (0.05, 0.999, 0), (0, 0, 1)).astype(np.float32)
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    scores = np.asarray([0.6, 0.9, 0.7, 0.8, 0.95], np.float32)
    grouping = group_instances(boxes, scores, vectors, cluster(vectors, 0.1))
    assert [[float(m.score) for m in g] for g in grouping.groups] == [
        pytest.approx([0.8, 0.7]),  # pair 2-3 is tighter than pair 0-1
        pytest.approx([0.9, 0.6]),  # members by score
    ]
    assert grouping.cohesion[0] > grouping.cohesion[1]
    assert grouping.cohesion[1] == pytest.approx(float(vectors[0] @ vectors[1]))
    assert [m.score for m in grouping.singletons] == pytest.approx([0.95])


def test_box_fit_is_the_soft_iou_with_the_map_around_the_box_by_hand() -> None:
    probability = np.zeros((20, 20))
    probability[4:8, 4:8] = 1.0  # one object of 16 px at input 40 (2 input px per map px)
    boxes = np.asarray([[8, 8, 16, 16], [12, 8, 20, 16], [4, 4, 20, 20]], np.float64)
    # tight: 16 / 16; shifted half off (mass 8 of its 16 px, 8 more in the grown box): 8 / (16 + 8); loose: 16 / 64
    assert box_fit(probability, boxes, 40) == pytest.approx([1.0, 1 / 3, 0.25])


def test_a_duplicate_is_dropped_for_the_better_fitting_box_and_a_partly_hidden_copy_stays() -> None:
    probability = np.zeros((40, 40))
    probability[2:10, 2:10] = 1.0  # copy A; input 80 px, 2 px per map px
    probability[6:14, 8:16] = 1.0  # copy B over A's corner: 8 of its 64 px inside A's box
    probability[30:36, 30:36] = 1.0  # C, another kind
    boxes = np.asarray(
        [[4, 4, 20, 20], [16, 12, 32, 28], [0, 4, 20, 24], [60, 60, 72, 72], [62, 60, 74, 72]], np.float64
    )  # A, B, a loose box on A, C, C shifted
    labels = np.asarray([0, 0, 0, 1, 1])
    fit = np.asarray([0.9, 0.8, 0.5, 0.7, 0.6])
    kept = distinct_members(fit, boxes, labels, probability, 80, 0.6)
    assert kept.tolist() == [True, True, False, True, False]
    assert distinct_members(fit, boxes, labels, probability, 80, 1.0).all()
    # B is no duplicate of A: only 8 / 64 = 0.125 of its mass lies inside A's box
    assert distinct_members(fit, boxes, labels, probability, 80, 0.2).tolist() == [True, True, False, True, False]
    assert not distinct_members(fit, boxes, labels, probability, 80, 0.1)[1]


def test_image_boxes_cover_the_box_with_exclusive_ends_inside_the_image() -> None:
    # input 320 px, image 640 x 480: x scales by 2, y by 1.5
    assert image_box(np.asarray([10.2, 20.5, 100.0, 200.1]), (640, 480), 320) == (20, 30, 200, 301)
    assert image_box(np.asarray([-5.0, -5.0, 400.0, 330.0]), (640, 480), 320) == (0, 0, 640, 480)
    assert image_box(np.asarray([319.9, 0.0, 320.0, 0.0]), (640, 480), 320) == (639, 0, 640, 1)


def test_cosaliency_map_keeps_the_map_only_inside_group_boxes() -> None:
    vectors = _unit((1, 0), (1, 0.01), (0, 1)).astype(np.float32)
    boxes = np.asarray([[0, 0, 40, 40], [80, 80, 120, 120], [0, 100, 60, 160]], np.float32)
    grouping = group_instances(boxes, np.ones(3, np.float32), vectors, cluster(vectors, 0.2))
    probability = np.full((16, 16), 200, np.uint8)  # a 160 px input seen at a tenth
    cosal = cosaliency_map(probability, grouping, 160)
    assert cosal.dtype == np.uint8
    assert cosal[:4, :4].min() == 200 and cosal[8:12, 8:12].min() == 200
    assert cosal[10:16, 0:6].max() == 0  # the singleton's box
    assert np.count_nonzero(cosal) == 32


def test_both_sources_merge_components_first_then_rpn_boxes_elsewhere() -> None:
    from service.manifest import GroupingSpec

    probability = np.zeros((32, 32), np.float32)
    probability[4:12, 4:12] = 0.9  # one object the map outlines: input box (16, 16, 48, 48) at 128 px
    rpn_boxes = np.asarray([[15, 15, 49, 47], [80, 80, 120, 120], [0, 0, 4, 4]], np.float32)
    rpn_scores = np.asarray([0.99, 0.8, 0.9], np.float32)
    spec = GroupingSpec(
        proposals="both", min_score=0.5, nms_iou=0.5, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01,
    )  # fmt: skip
    boxes, scores = propose(probability, rpn_boxes, rpn_scores, spec, 128)
    # the component first (it suppresses the RPN box on the same object), then the other RPN boxes by objectness
    np.testing.assert_allclose(boxes, [[16, 16, 48, 48], [0, 0, 4, 4], [80, 80, 120, 120]])
    np.testing.assert_allclose(scores, [0.9, 0.9, 0.8])  # the component's score is the map's mean inside it
    only_rpn, _ = propose(probability, rpn_boxes, rpn_scores, spec.model_copy(update={"proposals": "rpn"}), 128)
    assert len(only_rpn) == 3 and only_rpn[0].tolist() == [15, 15, 49, 47]


def test_a_component_over_touching_objects_is_split_into_the_rpn_boxes_inside_it() -> None:
    from service.manifest import GroupingSpec

    probability = np.zeros((32, 32), np.float32)
    probability[4:12, 4:20] = 0.9  # two touching objects, one component: input box (16, 16, 80, 48) at 128 px
    probability[20:28, 20:28] = 0.95  # a third object alone: input box (80, 80, 112, 112)
    rpn_boxes = np.asarray([[16, 16, 48, 48], [46, 14, 82, 48], [82, 80, 112, 112], [0, 0, 8, 8]], np.float32)
    rpn_scores = np.asarray([0.9, 0.8, 0.7, 0.6], np.float32)
    # the second box has (80 - 46) · 32 of its 36 · 34 pixels inside the first component (0.89 ≥ 0.8); the third
    # lies inside the second component alone, which stays whole; the last is inside neither
    boxes, scores = split_components(
        np.asarray([[16, 16, 80, 48], [80, 80, 112, 112]], np.float32), np.asarray([0.9, 0.95], np.float32),
        rpn_boxes, rpn_scores,
    )  # fmt: skip
    np.testing.assert_allclose(boxes, [[16, 16, 48, 48], [46, 14, 82, 48], [80, 80, 112, 112]])
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.95])
    spec = GroupingSpec(
        proposals="both", min_score=0.5, nms_iou=0.5, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01, split_components=True,
    )  # fmt: skip
    boxes, _ = propose(probability, rpn_boxes, rpn_scores, spec, 128)
    # the whole component and the split boxes first (by score), then the RPN box elsewhere; the third RPN box is the
    # second component's duplicate (IoU 0.94) and goes in NMS
    np.testing.assert_allclose(boxes, [[80, 80, 112, 112], [16, 16, 48, 48], [46, 14, 82, 48], [0, 0, 8, 8]])
    whole, _ = propose(probability, rpn_boxes, rpn_scores, spec.model_copy(update={"split_components": False}), 128)
    # bundles exported before the field keep components whole (here the RPN boxes inside it stay too: IoU ≤ 0.5)
    assert whole.tolist()[:2] == [[80, 80, 112, 112], [16, 16, 80, 48]] and len(whole) == 5


def test_rpn_boxes_on_plain_background_are_no_instances_under_min_map() -> None:
    from service.manifest import GroupingSpec

    probability = np.zeros((32, 32), np.float32)
    probability[4:12, 4:12] = 0.9  # map pixels 4-11 = input pixels 16-47 at 128 px
    rpn_boxes = np.asarray([[16, 16, 48, 48], [16, 16, 80, 48], [80, 80, 120, 120]], np.float32)
    rpn_scores = np.asarray([0.9, 0.8, 0.7], np.float32)
    spec = GroupingSpec(
        proposals="rpn", min_score=0.5, min_map=0.4, nms_iou=0.9, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01,
    )  # fmt: skip
    boxes, _ = propose(probability, rpn_boxes, rpn_scores, spec, 128)
    # the object's box (mean 0.9), the box half on it (0.45) stays; the box on plain background (0) goes
    np.testing.assert_allclose(boxes, rpn_boxes[:2])
    everything, _ = propose(probability, rpn_boxes, rpn_scores, spec.model_copy(update={"min_map": 0.0}), 128)
    assert len(everything) == 3  # 0 keeps the filter off (bundles exported before min_map)
    strict, _ = propose(probability, rpn_boxes, rpn_scores, spec.model_copy(update={"min_map": 0.5}), 128)
    np.testing.assert_allclose(strict, rpn_boxes[:1])


def test_appearance_vectors_average_the_features_under_the_map_inside_each_box() -> None:
    features = np.zeros((2, 4, 4), np.float32)
    features[0, :, :2] = 1.0  # channel 0 on the left half, channel 1 on the right half
    features[1, :, 2:] = 1.0
    probability = np.zeros((4, 4), np.float32)  # the map at the features' size: no resizing
    probability[1, 1] = 1.0  # the object in the left box sits on a left cell
    boxes = np.asarray([[0, 0, 48, 64], [32, 0, 64, 64]], np.float32)  # input 64 px, 16 px cells: columns 0-2, 2-3
    vectors = appearance_vectors(features, probability, boxes, 64)
    # left box: 12 cells, weight 1 + ε on the object, ε elsewhere; channel 0 on 8 of them, channel 1 on 4
    floor = APPEARANCE_WEIGHT_FLOOR
    total = 1 + 12 * floor
    expected = np.asarray([(1 + 8 * floor) / total, 4 * floor / total])
    np.testing.assert_allclose(vectors[0], expected / np.linalg.norm(expected), rtol=1e-6)
    np.testing.assert_allclose(vectors[1], [0.0, 1.0], atol=1e-7)  # a dark box: its plain mean, all channel 1
    assert appearance_vectors(features, probability, np.zeros((0, 4)), 64).shape == (0, 2)


def _pooling_encoder(crops: np.ndarray) -> np.ndarray:
    """A stand-in crop encoder with a known answer: per 16-pixel cell, the mean red and the mean blue of the
    normalized crop, shifted to [0, 2]."""
    count, _, side, _ = crops.shape
    cells = crops[:, [0, 2]].reshape(count, 2, side // 16, 16, side // 16, 16).mean(axis=(3, 5))
    return cells + 1.0


def _encoders(crops: object = _pooling_encoder, crop_size: int = 32) -> object:
    from service.grouping import InstanceEncoders
    from service.manifest import CropEncoderSpec, PreprocessSpec, RegionHeadSpec

    region = RegionHeadSpec(file="regions.onnx", pool_size=1, stride=16, sampling_ratio=1)
    preprocess = PreprocessSpec(input_size=64, resize="stretch", mean=[0.5] * 3, std=[0.5] * 3)
    crop = CropEncoderSpec(file="crops.onnx", crop_size=crop_size, stride=16) if crops is not None else None
    regions = lambda pooled: pooled[:, :1] + 1.0  # noqa: E731 - a one-dimensional "head": every vector is (1,)
    return InstanceEncoders(regions, region, preprocess, crops, crop)  # type: ignore[arg-type]


def _red_blue_image(side: int) -> Image.Image:
    pixels = np.zeros((side, side, 3), np.uint8)
    pixels[:, : side // 2, 0] = 255
    pixels[:, side // 2 :, 2] = 255
    return Image.fromarray(pixels)


def test_crop_vectors_cut_each_box_from_the_image_and_pool_its_features_under_the_map() -> None:
    from service.grouping import crop_vectors

    image = _red_blue_image(128)  # twice the 64-pixel network input: boxes are scaled to the image
    probability = np.zeros((32, 32), np.float32)  # half the input's side; lit on the left (red) half only
    probability[:, :16] = 1.0
    boxes = np.asarray([[0, 0, 32, 64], [16, 0, 48, 64], [40, 0, 64, 64]], np.float32)
    vectors = crop_vectors(image, probability, boxes, _encoders(), 64)
    # (tolerances: the resize's filter reaches a pixel or two past a box edge and where the colours meet)
    np.testing.assert_allclose(vectors[0], [1.0, 0.0], atol=0.01)  # all red
    # half red (lit), half blue (dark): the lit cells weigh 1 + ε, the dark ones ε (unweighted: [0.71, 0.71])
    floor = APPEARANCE_WEIGHT_FLOOR
    expected = np.asarray([1 + floor, floor]) / np.hypot(1 + floor, floor)
    np.testing.assert_allclose(vectors[1], expected, atol=0.02)
    np.testing.assert_allclose(vectors[2], [0.0, 1.0], atol=0.01)  # all blue and dark: its plain mean
    assert crop_vectors(image, probability, np.zeros((0, 4)), _encoders(), 64).shape[0] == 0


def test_instance_vectors_follow_the_spec_and_name_a_missing_output() -> None:
    from service.manifest import BundleError, GroupingSpec

    spec = GroupingSpec(
        proposals="rpn", min_score=0.5, nms_iou=0.5, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01, vectors="appearance",
    )  # fmt: skip
    features = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    outputs = {"probability": np.ones((4, 4), np.float32), "features": features, "appearance": features[:2]}
    boxes = np.asarray([[0, 0, 32, 32]], np.float32)
    image = _red_blue_image(64)
    encoders = _encoders()
    np.testing.assert_allclose(
        instance_vectors(outputs, image, boxes, encoders, spec, 64),
        appearance_vectors(features[:2], outputs["probability"], boxes, 64),
    )
    learned = spec.model_copy(update={"vectors": "learned"})
    np.testing.assert_allclose(instance_vectors(outputs, image, boxes, encoders, learned, 64), [[1.0]])
    crops = spec.model_copy(update={"vectors": "crops"})
    np.testing.assert_allclose(instance_vectors(outputs, image, boxes, encoders, crops, 64), [[1.0, 0.0]], atol=0.01)
    with pytest.raises(BundleError, match="crop encoder"):
        instance_vectors(outputs, image, boxes, _encoders(crops=None), crops, 64)
    del outputs["appearance"]
    with pytest.raises(BundleError, match="appearance"):
        instance_vectors(outputs, image, boxes, encoders, spec, 64)


def _two_objects() -> np.ndarray:
    probability = np.zeros((32, 32), np.float32)  # 128-pixel input, 4 input pixels per map pixel
    probability[4:12, 4:12] = 0.9  # input box (16, 16, 48, 48)
    probability[20:28, 20:28] = 0.8  # input box (80, 80, 112, 112)
    return probability


def test_scored_proposals_keep_the_candidates_the_quality_head_rates_after_nms() -> None:
    from service.manifest import BundleError, GroupingSpec

    probability = _two_objects()
    rpn_boxes = np.asarray(
        [[16, 16, 48, 48], [12, 12, 52, 52], [0, 0, 8, 8], [80, 80, 112, 112], [16, 16, 112, 112]], np.float32
    )
    # the last two fall below the candidates' objectness floor; the box at the corner holds no map
    rpn_scores = np.asarray([0.9, 0.5, 0.9, CANDIDATE_MIN_SCORE / 2, CANDIDATE_MIN_SCORE / 2], np.float32)
    spec = GroupingSpec(
        proposals="scored", min_score=0.8, nms_iou=0.5, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01,
    )  # fmt: skip
    candidates = candidate_boxes(probability, rpn_boxes, rpn_scores, spec, 128)
    # the map's components first, then the RPN's boxes (IoU 0.64 between the two on the first object: both stay)
    np.testing.assert_allclose(candidates, [[16, 16, 48, 48], [80, 80, 112, 112], [16, 16, 48, 48], [12, 12, 52, 52]])
    seen = []

    def quality(boxes: np.ndarray) -> np.ndarray:  # a stand-in head: boxes 32 pixels wide are best
        seen.append(boxes)
        return 1 - np.abs(boxes[:, 2] - boxes[:, 0] - 32) / 32

    boxes, scores = propose(probability, rpn_boxes, rpn_scores, spec, 128, quality)
    np.testing.assert_allclose(seen[0], candidates)
    # the 40-pixel box scores 0.75 < 0.8; the RPN's copy of the first component goes in NMS
    np.testing.assert_allclose(boxes, [[16, 16, 48, 48], [80, 80, 112, 112]])
    np.testing.assert_allclose(scores, [1.0, 1.0])
    loose = spec.model_copy(update={"min_score": 0.7})
    assert len(propose(probability, rpn_boxes, rpn_scores, loose, 128, quality)[0]) == 2  # IoU 0.64 > NMS 0.5
    with pytest.raises(BundleError, match="quality head"):
        propose(probability, rpn_boxes, rpn_scores, spec, 128)


def test_quality_inputs_stack_the_crop_features_with_the_map_in_and_around_each_box() -> None:
    probability = _two_objects()
    boxes = np.asarray([[16, 16, 48, 48], [0, 0, 64, 64]], np.float32)
    features = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    inputs = quality_inputs(features, probability, boxes, 128)
    assert inputs.shape == (2, 5, 8, 8)
    np.testing.assert_array_equal(inputs[:, :3], features)
    # the first box frames its object: the map inside it is the object's 0.9 (the edge bins reach its border)
    np.testing.assert_allclose(inputs[0, 3, 1:-1, 1:-1], 0.9, atol=1e-6)
    # grown by half its size on every side, the box (0, 0, 64, 64) holds the object in its middle half (bilinear
    # samples blend its border bins with the background)
    np.testing.assert_allclose(inputs[0, 4, 3:5, 3:5], 0.9, atol=1e-6)
    assert np.all(inputs[0, 4, 2:6, 2:6] > 0.75)
    np.testing.assert_allclose(inputs[0, 4, [0, 0, 7, 7], [0, 7, 0, 7]], 0.0, atol=1e-6)
    # the second box's inside equals the first box's context
    np.testing.assert_allclose(inputs[1, 3], inputs[0, 4], atol=1e-6)


def test_instance_quality_runs_the_head_on_the_crops_and_names_a_missing_head() -> None:
    from dataclasses import replace

    from service.grouping import instance_quality
    from service.manifest import BundleError

    probability = np.zeros((32, 32), np.float32)
    probability[:, :16] = 1.0
    outputs = {"probability": probability}
    boxes = np.asarray([[0, 0, 32, 64], [32, 0, 64, 64]], np.float32)
    encoders = _encoders()
    with pytest.raises(BundleError, match="no instance quality head"):
        instance_quality(outputs, _red_blue_image(64), boxes, encoders, 64)
    lit = replace(encoders, quality=lambda inputs: inputs[:, -2].mean(axis=(1, 2)))  # type: ignore[type-var]
    np.testing.assert_allclose(instance_quality(outputs, _red_blue_image(64), boxes, lit, 64), [1.0, 0.0], atol=0.01)
    assert instance_quality(outputs, _red_blue_image(64), np.zeros((0, 4)), lit, 64).shape == (0,)


def test_crop_features_encode_each_box_once_per_image_when_asked_to_remember() -> None:
    from dataclasses import replace

    from service.grouping import crop_features

    encoded: list[int] = []

    def counting(crops: np.ndarray) -> np.ndarray:
        encoded.append(len(crops))
        return _pooling_encoder(crops)

    encoders = replace(_encoders(), crops=counting)  # type: ignore[type-var]
    boxes = np.asarray([[0, 0, 32, 64], [32, 0, 64, 64], [0, 0, 32, 64]], np.float32)
    known: dict[bytes, np.ndarray] = {}
    first = crop_features(_red_blue_image(64), boxes, encoders, 64, known)
    again = crop_features(_red_blue_image(64), boxes[1:], encoders, 64, known)
    assert encoded == [2]  # the repeated box and the second call cost nothing
    np.testing.assert_array_equal(again, first[1:])
    np.testing.assert_array_equal(first[0], first[2])
    crop_features(_red_blue_image(64), boxes, encoders, 64)
    assert encoded == [2, 2]  # without a memory each call encodes its boxes


def test_vote_vectors_average_the_weighted_voters_overlapping_each_box_by_hand() -> None:
    from service.grouping import vote_vectors

    boxes = np.asarray([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    voters = np.asarray([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]], np.float32)  # IoU 10/11 with the first
    weights = np.asarray([1.0, 0.5, 0.9], np.float32)
    vectors = np.asarray([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    # the first box: 1 × (1, 0) + 0.5 × (0, 1), made unit; the second: its own vector alone
    expected = [[1 / np.hypot(1, 0.5), 0.5 / np.hypot(1, 0.5)], [0.6, 0.8]]
    np.testing.assert_allclose(vote_vectors(boxes, voters, weights, vectors, 0.9), expected, atol=1e-6)
    np.testing.assert_allclose(vote_vectors(boxes, voters, weights, vectors, 0.95), vectors[[0, 2]], atol=1e-6)
    assert vote_vectors(np.zeros((0, 4)), voters, weights, vectors, 0.5).shape == (0, 2)


def test_votes_need_scored_candidates() -> None:
    from pydantic import ValidationError

    from service.manifest import GroupingSpec

    settings = {
        "min_score": 0.5, "nms_iou": 0.5, "max_instances": 12, "distance_threshold": 0.3, "mask_threshold": 0.5,
        "min_area_fraction": 0.01, "vote_iou": 0.5,
    }  # fmt: skip
    assert GroupingSpec(proposals="scored", **settings).vote_iou == 0.5
    with pytest.raises(ValidationError, match="vote_iou needs proposals 'scored'"):
        GroupingSpec(proposals="rpn", **settings)


def test_find_groups_describes_scored_instances_by_the_votes_of_the_confident_candidates() -> None:
    from dataclasses import replace

    from service.grouping import confident_candidates, crop_vectors, find_groups, instance_quality, vote_vectors
    from service.manifest import GroupingSpec

    pixels = np.zeros((64, 64, 3), np.uint8)  # red up to x = 18, blue beyond: a loose box on the left takes some blue
    pixels[:, :18, 0] = 255
    pixels[:, 18:, 2] = 255
    image = Image.fromarray(pixels)
    probability = np.zeros((32, 32), np.float32)  # objects at input x 0-16 and 48-64
    probability[:, :8] = 1.0
    probability[:, 24:] = 1.0
    rated: list[int] = []

    def head(inputs: np.ndarray) -> np.ndarray:  # a stand-in quality head: the map's mean inside the box
        rated.append(len(inputs))
        return inputs[:, -2].mean(axis=(1, 2))

    encoders = replace(_encoders(), quality=head)  # type: ignore[type-var]
    outputs = {
        "probability": probability,
        "boxes": np.asarray([[0, 0, 20, 64], [44, 0, 64, 64]], np.float32),
        "scores": np.asarray([0.9, 0.9], np.float32),
    }
    spec = GroupingSpec(
        proposals="scored", min_score=0.5, nms_iou=0.5, max_instances=12, distance_threshold=0.3,
        mask_threshold=0.5, min_area_fraction=0.01, vectors="crops", vote_iou=0.7,
    )  # fmt: skip
    grouping = find_groups(outputs, image, encoders, spec, 64)
    assert rated == [4]  # the two components and the two RPN boxes, rated once for the proposals and their votes
    members = sorted(grouping.singletons, key=lambda m: m.box[0])
    np.testing.assert_allclose([m.box for m in members], [[0, 0, 16, 64], [48, 0, 64, 64]])

    def quality(boxes: np.ndarray) -> np.ndarray:
        return instance_quality(outputs, image, boxes, encoders, 64)

    voters, weights = confident_candidates(probability, outputs["boxes"], outputs["scores"], spec, 64, quality)
    assert len(voters) == 4  # the loose boxes (IoU 0.8 with the components) vote for them
    expected = vote_vectors(
        np.stack([m.box for m in members]), voters, weights, crop_vectors(image, probability, voters, encoders, 64), 0.7
    )
    np.testing.assert_allclose([m.vector for m in members], expected, atol=1e-6)
    own = crop_vectors(image, probability, np.stack([m.box for m in members]), encoders, 64)
    assert not np.allclose(expected[0], own[0], atol=1e-3)  # the loose left box's blue moved the left vector
