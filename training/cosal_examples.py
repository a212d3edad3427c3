"""Draw a co-saliency bundle's groups on real photos: a contact sheet (PNG) and the groups as JSON.

python -m training.cosal_examples --bundle cosal --images ../shared/data/PASCAL-S/images --stems 615,95,808
                                  --out docs/results/cosal_pascal_examples.png

Runs the bundle and the service's own grouping (``service/grouping.py``, what ``outputs=groups`` answers). Each
group's boxes are drawn in its own colour, singletons dashed grey; the JSON (beside the PNG) lists every image's
groups (boxes in image pixels, x1/y1 exclusive, cohesion) and singletons.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.engine import Engine
from service.grouping import Grouping, find_groups, image_box, image_outputs
from service.imaging import preprocess

COLOURS = ((255, 23, 68), (41, 121, 255), (0, 230, 118), (255, 234, 0), (213, 0, 249), (255, 145, 0))
THUMB_SIDE = 320


def group_image(engine: Engine, image: Image.Image) -> Grouping:
    """The service's grouping of one RGB image."""
    manifest = engine.manifest
    if manifest.grouping is None or manifest.regions is None:
        raise SystemExit(f"bundle {manifest.name} is not a co-saliency bundle")
    outputs, _ = engine.run_sync(preprocess(image, manifest.preprocess)[None])
    out = image_outputs({k: v[0] for k, v in outputs.items()}, manifest)
    return find_groups(out, image, engine.instance_encoders(), manifest.grouping, engine.input_size)


def draw(image: Image.Image, grouping: Grouping, input_size: int) -> Image.Image:
    """A thumbnail of ``image`` with the groups' boxes (one colour each) and dashed grey singletons."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    pen = ImageDraw.Draw(thumb)
    scale = thumb.width / image.width

    def box(instance_box: np.ndarray) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = image_box(instance_box, image.size, input_size)
        return x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1

    for singleton in grouping.singletons:
        x0, y0, x1, y1 = box(singleton.box)
        for start in np.arange(x0, x1, 8):  # dashes along the top and bottom edges, then the sides
            pen.line([(start, y0), (min(start + 4, x1), y0)], fill=(158, 158, 158), width=2)
            pen.line([(start, y1), (min(start + 4, x1), y1)], fill=(158, 158, 158), width=2)
        for start in np.arange(y0, y1, 8):
            pen.line([(x0, start), (x0, min(start + 4, y1))], fill=(158, 158, 158), width=2)
            pen.line([(x1, start), (x1, min(start + 4, y1))], fill=(158, 158, 158), width=2)
    for index, group in enumerate(grouping.groups):
        for member in group:
            pen.rectangle(box(member.box), outline=COLOURS[index % len(COLOURS)], width=3)
    return thumb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.cosal_examples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, help="co-saliency bundle name under bundles/ or folder")
    parser.add_argument("--images", type=Path, required=True, help="folder of the photos")
    parser.add_argument("--stems", required=True, help="comma list of image stems (file names without extension)")
    parser.add_argument("--out", type=Path, required=True, help="contact sheet PNG; the JSON goes beside it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    engine = Engine(args.bundle, "auto", ["CPUExecutionProvider"], intra_op_threads=args.threads)
    thumbs, report = [], []
    for stem in (s.strip() for s in args.stems.split(",") if s.strip()):
        path = next(iter(sorted(args.images.glob(f"{stem}.*"))), None)
        if path is None:
            raise SystemExit(f"no image {stem}.* in {args.images}")
        with Image.open(path) as img:
            image = img.convert("RGB")
        grouping = group_image(engine, image)
        thumbs.append(draw(image, grouping, engine.input_size))

        def described(members: list, image: Image.Image = image) -> list[dict]:
            return [
                {"box": list(image_box(m.box, image.size, engine.input_size)), "score": round(m.score, 3)}
                for m in members
            ]

        report.append(
            {
                "image": str(path),
                "groups": [
                    {"cohesion": round(c, 3), "members": described(g)}
                    for g, c in zip(grouping.groups, grouping.cohesion, strict=True)
                ],
                "singletons": described(grouping.singletons),
            }
        )
    columns = min(4, len(thumbs))
    rows = -(-len(thumbs) // columns)
    sheet = Image.new("RGB", (columns * THUMB_SIDE, rows * THUMB_SIDE), "white")
    for index, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((index % columns) * THUMB_SIDE, (index // columns) * THUMB_SIDE))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    text = json.dumps({"bundle": str(engine.info.bundle_dir), "images": report}, indent=2)
    args.out.with_suffix(".json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
