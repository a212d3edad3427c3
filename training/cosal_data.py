"""Within-image co-saliency scenes composed from real objects: one group of 2–5 instances of the same object plus
0–2 distractor objects from other images, on a real background.

python -m training.cosal_data --out DIR --n N --split train|test [--seed 0] [--root ../shared/data] [--size 320]
    [--exclude OTHER/annotations.jsonl ...]

No within-image co-saliency dataset can be had here, so scenes are built from the salient-object datasets: an object
is the masked region of an image whose mask is one connected object clear of the image border; a background is
another image of the split with its salient object inpainted away (OpenCV Telea), cropped to the scene's aspect and
blurred a little. Group members are copies of one object, each scaled, maybe flipped, rotated (±15°) and
colour-jittered; instances may overlap (at most ``MAX_OVERLAP`` of the smaller one is hidden), and every instance
lies wholly inside the canvas (``truncated`` is recorded anyway). Later instances occlude earlier ones: the recorded
masks are what stays visible. Train scenes draw objects and backgrounds from DUTS-TR, ECSSD_train and
PASCAL-S_train; test scenes only from ECSSD_val and PASCAL-S_test. Scene ``i`` of a seed is the same whatever
``--n``, so sets grow without changing. ``--exclude`` leaves out every image another scene set used as an object or
a background: validation scenes from the train split whose objects the model never saw in its training scenes.

Layout of DIR:
- ``images/<id>.jpg`` the scene (JPEG quality 92);
- ``masks/<id>.png`` the co-saliency mask (255 on the group's visible pixels);
- ``instances/<id>.png`` instance labels (0 background, k = instance k of the annotation, in paste order);
- ``annotations.jsonl`` one object per scene: ``id``, ``width``, ``height``, ``background`` (source stem),
  ``cosalient_group`` (0) and ``instances``: ``{"id", "group", "source", "box": [x0, y0, x1, y1]`` (x0, y0
  inclusive, x1, y1 exclusive, visible pixels), ``"area"``, ``"occluded"`` (hidden fraction), ``"truncated"``}; group 0
  is the co-salient group, each distractor has a group of its own (1, 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

from training.data import Sample, list_pairs, load_mask, load_rgb

SPLITS = {
    "train": [
        ("DUTS-TR/images", "DUTS-TR/masks", None),
        ("ECSSD/images", "ECSSD/masks", "splits/ECSSD_train.txt"),
        ("PASCAL-S/images", "PASCAL-S/masks", "splits/PASCAL-S_train.txt"),
    ],
    "test": [
        ("ECSSD/images", "ECSSD/masks", "splits/ECSSD_val.txt"),
        ("PASCAL-S/images", "PASCAL-S/masks", "splits/PASCAL-S_test.txt"),
    ],
}
MAX_OVERLAP = 0.35  # most of an instance that later instances may hide
OBJECT_AREA = (0.04, 0.6)  # usable objects cover this fraction of their image
GROUP_SIZES = (2, 3, 4, 5)
DISTRACTORS = (0, 1, 2)


@dataclass
class Cutout:
    """An object: its RGB pixels and mask, cropped to the mask's box."""

    source: str
    rgb: np.ndarray  # [h, w, 3] uint8
    mask: np.ndarray  # [h, w] bool


def cut_object(sample: Sample) -> Cutout | None:
    """The sample's object, or ``None`` when its mask is not one clear object (empty, several parts, too small or
    too large, or touching the image border, where the object is probably cut off)."""
    mask = load_mask(sample.mask)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = stats[largest, cv2.CC_STAT_AREA]
    if not OBJECT_AREA[0] <= area / mask.size <= OBJECT_AREA[1] or area < 0.9 * mask.sum():
        return None
    x, y, w, h = (
        int(stats[largest, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    )
    if x == 0 or y == 0 or x + w == mask.shape[1] or y + h == mask.shape[0]:
        return None
    rgb = np.asarray(load_rgb(sample.image))
    return Cutout(sample.stem, rgb[y : y + h, x : x + w], labels[y : y + h, x : x + w] == largest)


def background(sample: Sample, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A real background: of a few random crops of the sample's image at ``size``'s aspect, the one its salient
    object covers least, with what remains of the object inpainted away, resized and blurred a little."""
    rgb = np.asarray(load_rgb(sample.image))
    mask = cv2.dilate(load_mask(sample.mask).astype(np.uint8) * 255, np.ones((9, 9), np.uint8))
    height, width = rgb.shape[:2]
    aspect = size[0] / size[1]
    full_w, full_h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    crops = []
    for _ in range(6):
        zoom = float(rng.uniform(0.5, 1.0))
        w, h = max(8, round(full_w * zoom)), max(8, round(full_h * zoom))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crops.append((np.count_nonzero(mask[y0 : y0 + h, x0 : x0 + w]) / (w * h), x0, y0, w, h))
    _, x0, y0, w, h = min(crops)
    part = np.ascontiguousarray(rgb[y0 : y0 + h, x0 : x0 + w, ::-1])
    clean = cv2.inpaint(part, np.ascontiguousarray(mask[y0 : y0 + h, x0 : x0 + w]), 7, cv2.INPAINT_TELEA)[..., ::-1]
    resized = Image.fromarray(np.ascontiguousarray(clean)).resize(size, Image.BILINEAR)
    return cv2.GaussianBlur(np.asarray(resized), (0, 0), float(rng.uniform(0.5, 2.5)))


def transform_instance(cut: Cutout, long_side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One pasted copy: scaled so its long side is ``long_side``, maybe flipped, rotated ±15°, colour-jittered."""
    image = Image.fromarray(cut.rgb)
    mask = Image.fromarray(cut.mask.astype(np.uint8) * 255)
    scale = long_side / max(image.size)
    size = (max(2, round(image.size[0] * scale)), max(2, round(image.size[1] * scale)))
    image, mask = image.resize(size, Image.BILINEAR), mask.resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-15, 15))
    image = image.rotate(angle, Image.BILINEAR, expand=True)
    mask = mask.rotate(angle, Image.BILINEAR, expand=True)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.85, 1.15)))
    return np.asarray(image), np.asarray(mask) >= 128


def _box(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]


def compose_scene(
    group: Cutout, distractors: list[Cutout], back: np.ndarray, copies: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Paste ``copies`` instances of ``group`` and one of each distractor on ``back`` in random order.

    Returns:
        The scene ``[H,W,3]``, the instance label map ``[H,W]`` (k = k-th instance record), and the records
        (``group``, ``source``, ``box``, ``area``, ``occluded``, ``truncated``).

    Raises:
        ValueError: no placement kept every instance visible enough (the caller draws another scene).
    """
    height, width = back.shape[:2]
    canvas = back.copy()
    labels = np.zeros((height, width), np.int32)
    pasted: list[tuple[int, str, int]] = []  # (group, source, full pasted area)
    items = [(0, group)] * copies + [(g + 1, cut) for g, cut in enumerate(distractors)]
    order = rng.permutation(len(items))
    # Same-kind instances share one size (as copies of an object in a photo roughly do), shrinking with their count.
    group_side = min(width, height) * float(rng.uniform(0.28, 0.45)) / math.sqrt(copies / 2)
    for index in order:
        kind, cut = items[index]
        spread = (
            (0.85, 1.15)
            if kind == 0
            else (0.22 * min(width, height) / group_side, 0.4 * min(width, height) / group_side)
        )
        side = group_side * float(rng.uniform(*spread))
        rgb, mask = transform_instance(cut, max(8, round(side)), rng)
        h, w = mask.shape
        if h >= height or w >= width:
            raise ValueError("instance larger than the canvas")
        for _ in range(30):
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            region = labels[y0 : y0 + h, x0 : x0 + w]
            hidden = [np.count_nonzero(mask & (region == k + 1)) for k in range(len(pasted))]
            visible = [np.count_nonzero(labels == k + 1) for k in range(len(pasted))]
            if all(v - c >= (1 - MAX_OVERLAP) * p[2] for v, c, p in zip(visible, hidden, pasted, strict=True)):
                break
        else:
            raise ValueError("no placement keeps every instance visible")
        alpha = mask[..., None].astype(np.float32)
        target = canvas[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
        canvas[y0 : y0 + h, x0 : x0 + w] = (alpha * rgb + (1 - alpha) * target).astype(np.uint8)
        region[mask] = len(pasted) + 1
        pasted.append((kind, cut.source, int(mask.sum())))
    records = []
    for k, (kind, source, full) in enumerate(pasted):
        visible = labels == k + 1
        records.append(
            {
                "id": k + 1,
                "group": kind,
                "source": source,
                "box": _box(visible),
                "area": int(visible.sum()),
                "occluded": round(1 - visible.sum() / full, 4),
                "truncated": False,  # placements keep every instance inside the canvas
            }
        )
    return canvas, labels, records


@dataclass
class SceneSource:
    """The objects and backgrounds of a split."""

    objects: list[Sample]
    backgrounds: list[Sample]


def scene_source(root: Path, split: str) -> SceneSource:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use {' or '.join(SPLITS)}")
    samples = [
        s
        for images, masks, split_file in SPLITS[split]
        for s in list_pairs(root / images, root / masks, root / split_file if split_file else None)
    ]
    return SceneSource(samples, samples)


def used_sources(annotations: Path) -> set[str]:
    """The stems of every image a scene set (its ``annotations.jsonl``) used as an object or a background."""
    stems: set[str] = set()
    with open(annotations) as fh:
        for line in fh:
            scene = json.loads(line)
            stems.add(scene["background"])
            stems.update(instance["source"] for instance in scene["instances"])
    return stems


def without_sources(source: SceneSource, stems: set[str]) -> SceneSource:
    """``source`` less the images named in ``stems`` (as objects and as backgrounds).

    Raises:
        ValueError: nothing is left.
    """
    objects = [s for s in source.objects if s.stem not in stems]
    backgrounds = [s for s in source.backgrounds if s.stem not in stems]
    if not objects or not backgrounds:
        raise ValueError(f"excluding {len(stems)} images leaves no objects or no backgrounds")
    return SceneSource(objects, backgrounds)


def make_scene(
    source: SceneSource, index: int, seed: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Scene ``index`` of ``seed``: (image, co-saliency mask, instance labels, annotation). Deterministic."""
    rng = np.random.default_rng([seed, index])
    for _ in range(200):  # draw again when a sample is not a usable object or the scene does not fit
        aspect = float(rng.choice([0.75, 1.0, 4 / 3]))
        canvas = (size, round(size / aspect)) if aspect >= 1 else (round(size * aspect), size)
        group_sample = source.objects[int(rng.integers(len(source.objects)))]
        group = cut_object(group_sample)
        if group is None:
            continue
        distractors = []
        for _ in range(int(rng.choice(DISTRACTORS))):
            other = source.objects[int(rng.integers(len(source.objects)))]
            cut = cut_object(other) if other.stem != group_sample.stem else None
            if cut is not None:
                distractors.append(cut)
        back_sample = source.backgrounds[int(rng.integers(len(source.backgrounds)))]
        if back_sample.stem in {group_sample.stem, *(d.source for d in distractors)}:
            continue
        try:
            image, labels, records = compose_scene(
                group, distractors, background(back_sample, canvas, rng), int(rng.choice(GROUP_SIZES)), rng
            )
        except ValueError:
            continue
        annotation = {
            "id": f"{index:06d}",
            "width": canvas[0],
            "height": canvas[1],
            "background": back_sample.stem,
            "cosalient_group": 0,
            "instances": records,
        }
        members = [r["id"] for r in records if r["group"] == 0]
        return image, np.isin(labels, members), labels, annotation
    raise RuntimeError(f"scene {index}: no usable objects after 200 draws (too few clean object masks in the split?)")


def write_scenes(source: SceneSource, out: Path, count: int, seed: int, size: int, progress: bool = True) -> Path:
    """Write scenes ``0 … count-1`` into ``out`` (layout in the module docstring); returns the annotations file."""
    for sub in ("images", "masks", "instances"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    annotations = out / "annotations.jsonl"
    with open(annotations, "w") as fh:
        for index in tqdm(range(count), desc="scenes", disable=not progress):
            image, cosal, labels, annotation = make_scene(source, index, seed, size)
            name = annotation["id"]
            Image.fromarray(image).save(out / "images" / f"{name}.jpg", quality=92)
            Image.fromarray(cosal.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
            Image.fromarray(labels.astype(np.uint8)).save(out / "instances" / f"{name}.png")
            fh.write(json.dumps(annotation) + "\n")
    return annotations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the scenes into")
    parser.add_argument("--n", type=int, required=True, help="number of scenes")
    parser.add_argument(
        "--split", choices=sorted(SPLITS), required=True, help="train: train splits only; test: held out"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("../shared/data"), help="the staged datasets")
    parser.add_argument("--size", type=int, default=320, help="long side of the scenes")
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        metavar="ANNOTATIONS",
        help="another scene set's annotations.jsonl: never use an image it used (repeatable)",
    )
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.exclude if not path.is_file()]
    if missing:
        parser.error(f"--exclude: no such file: {', '.join(missing)}")
    excluded = set().union(*(used_sources(path) for path in args.exclude))
    source = scene_source(args.root, args.split)
    available = len(source.objects)
    if excluded:
        try:
            source = without_sources(source, excluded)
        except ValueError as err:
            parser.error(str(err))
    annotations = write_scenes(source, args.out, args.n, args.seed, args.size)
    summary = {"out": str(args.out), "scenes": args.n, "split": args.split, "annotations": str(annotations)}
    if excluded:
        summary |= {"images_left_out": available - len(source.objects), "images": len(source.objects)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
