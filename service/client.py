"""``python -m service.client IMAGES... --url URL --out DIR [--outputs LIST] [--model NAME]``.

``--outputs`` is a comma list of saliency, attention, overlay, groups (default saliency).

For each image, writes ``<stem>.saliency.png`` (and ``<stem>.overlay.png``, ``<stem>.attention<p>.<output>.png``,
``<stem>.attention.<output>.png`` for the image-level maps, ``<stem>.cosaliency.png`` and
``<stem>.group<g>.member<m>.png`` / ``<stem>.singleton<s>.png`` box masks when asked) plus ``<stem>.json`` (the
response without the base64 blobs, so group boxes, scores and cohesion are there). Prints one JSON summary line;
exits 1 if any image failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm


def save_result(stem: str, body: dict[str, Any], out: Path) -> list[Path]:
    """Write the maps of one response as PNG files and the rest as JSON; returns the files written."""
    written = []

    def write_png(name: str, b64: str) -> None:
        path = out / f"{stem}.{name}.png"
        path.write_bytes(base64.b64decode(b64))
        written.append(path)

    for key in ("saliency", "overlay"):
        if body.get(f"{key}_png"):
            write_png(key, body.pop(f"{key}_png"))
    for index, point in enumerate(body.get("attention") or []):
        for attention_map in point["maps"]:
            write_png(f"attention{index}.{attention_map['output']}", attention_map.pop("heatmap_png"))
    for attention_map in body.get("attention_maps") or []:
        write_png(f"attention.{attention_map['output']}", attention_map.pop("heatmap_png"))
    if body.get("cosaliency"):
        write_png("cosaliency", body.pop("cosaliency"))
    for g, group in enumerate(body.get("groups") or []):
        for m, member in enumerate(group["members"]):
            write_png(f"group{g}.member{m}", member.pop("mask"))
    for s, member in enumerate(body.get("singletons") or []):
        write_png(f"singleton{s}", member.pop("mask"))
    path = out / f"{stem}.json"
    path.write_text(json.dumps(body, indent=2))
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--outputs", default="saliency", help="comma list: saliency, attention, overlay, groups")
    parser.add_argument("--points", help="attention query points 'x,y;x,y'")
    parser.add_argument("--model", help="a served model's name (GET /models); default: the server's default")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    params = {"outputs": args.outputs} | ({"points": args.points} if args.points else {})
    params |= {"model": args.model} if args.model else {}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    failures: list[dict[str, str]] = []
    written = 0
    with httpx.Client(base_url=args.url, timeout=args.timeout, headers=headers) as client:
        for image in tqdm(args.images, desc="images", unit="img", disable=len(args.images) < 2, file=sys.stderr):
            try:
                response = client.post("/saliency", params=params, files={"image": (image.name, image.read_bytes())})
            except (OSError, httpx.HTTPError) as exc:
                failures.append({"image": str(image), "error": str(exc)})
                continue
            if response.status_code != 200:
                failures.append({"image": str(image), "status": str(response.status_code), "error": response.text})
                continue
            written += len(save_result(image.stem, response.json(), args.out))
    print(json.dumps({"images": len(args.images), "ok": len(args.images) - len(failures), "files": written,
                      "failures": failures}))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
