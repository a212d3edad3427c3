"""``outputs=groups`` end to end.

With a small co-saliency bundle exported here from a seeded, untrained ``cosal_lite`` (grouping settings chosen on
three fixture scenes, as the export does), the answer's shape: groups through the default model, boxes in the upload's
pixels with masks of the box's size, the co-saliency map at the upload's size. With the shipped co-saliency bundle
(``bundles/cosal``, skipped where it is absent), its accuracy: the group of three copies is found without the
distractor in scenes composed from the fixture objects (one scene is the shipped model's known failure), and an image
without a group answers ``groups: []``."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service import pipeline
from service.engine import CROP_CHUNK, Engine
from service.grouping import find_groups
from service.settings import Settings
from tests.service.conftest import REPO, encode, running_app, scene
from training.cosal_data import background, compose_scene, cut_object
from training.cosal_metrics import match_instances
from training.data import list_pairs

COSAL = REPO / "bundles" / "cosal"
FIXTURES = REPO / "tests" / "fixtures" / "sod"
pytestmark = pytest.mark.anyio
needs_shipped = pytest.mark.skipif(
    not (COSAL / "manifest.json").is_file(), reason="no co-saliency bundle shipped (bundles/cosal)"
)
# (group object, distractor, background) fixture stems and a seed for each scene; objects are the fixtures whose
# mask is one clean object (training.cosal_data.cut_object)
SCENES = [
    ("ecssd_0002", "pascals_4", "pascals_9", 0),
    ("ecssd_0005", "ecssd_0008", "pascals_11", 1),
    ("pascals_5", "ecssd_0001", "ecssd_0009", 2),
]
# The shipped model's known failure, kept visible (strict: it fails the suite once the scene passes, so the mark
# comes off): each copy is a mare with her foal, the distractor hides behind one copy, and a box spanning the foal
# and the distractor joins the group as a fourth member (MODEL_CARD.md, co-saliency).
KNOWN_FAILURE = pytest.mark.xfail(strict=True, reason="a box over a copy's foal and the hidden distractor joins")
SHIPPED_SCENES = [pytest.param(*s, marks=KNOWN_FAILURE if i == 1 else ()) for i, s in enumerate(SCENES)]


def compose(group: str, distractor: str, back: str, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A 320×240 scene with three copies of ``group`` and one ``distractor``: JPEG bytes, the copies' boxes and
    the distractor's box (x1/y1 exclusive)."""
    samples = {s.stem: s for s in list_pairs(FIXTURES / "images", FIXTURES / "masks")}
    rng = np.random.default_rng(seed)
    cut_group, cut_distractor = cut_object(samples[group]), cut_object(samples[distractor])
    assert cut_group is not None and cut_distractor is not None
    for _ in range(50):
        try:
            image, _, records = compose_scene(
                cut_group, [cut_distractor], background(samples[back], (320, 240), rng), 3, rng
            )
            break
        except ValueError:  # no placement kept every instance visible: draw again
            continue
    boxes = np.asarray([r["box"] for r in records], dtype=np.float64)
    groups = np.asarray([r["group"] for r in records])
    return encode(Image.fromarray(image), "JPEG", quality=92), boxes[groups == 0], boxes[groups == 1]


def upload(data: bytes) -> dict:
    return {"image": ("scene.jpg", data, "image/jpeg")}


@pytest.fixture(scope="module")
def tiny_cosal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A co-saliency bundle of a seeded, untrained cosal_lite at 64 px, exported with grouping settings."""
    import torch

    from export.bundle import ExportOptions, export_bundle
    from models import build_model
    from training.cosal_data import SceneSource, write_scenes

    root = tmp_path_factory.mktemp("tiny_cosal")
    samples = list_pairs(FIXTURES / "images", FIXTURES / "masks")
    write_scenes(SceneSource(samples, samples), root / "scenes", 3, seed=4, size=160, progress=False)
    torch.manual_seed(0)
    model = build_model("cosal_lite", input_size=64).eval()
    checkpoint = {
        "model": model.state_dict(), "model_name": "cosal_lite", "model_kwargs": {"input_size": 64},
        "config": {"name": "untrained", "preprocess": {"input_size": 64}}, "epoch": 0,
    }  # fmt: skip
    torch.save(checkpoint, root / "untrained.pt")
    options = ExportOptions(
        checkpoint=root / "untrained.pt", out=root / "bundle", speed_runs=2, grouping_scenes=root / "scenes"
    )
    export_bundle(options)
    return root / "bundle"


@pytest.fixture
async def tiny(make_settings: Callable[..., Settings], tiny_cosal: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The default model and the small co-saliency model in one app."""
    async with running_app(make_settings(models=str(tiny_cosal))) as client:
        yield client


@pytest.fixture
async def served(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """The default model and the shipped co-saliency model in one app."""
    async with running_app(make_settings(models=str(COSAL))) as client:
        yield client


async def test_groups_come_through_the_default_model_with_image_boxes_masks_and_map(tiny: httpx.AsyncClient) -> None:
    data, _, _ = compose(*SCENES[0])
    response = await tiny.post("/saliency", files=upload(data), params={"outputs": "saliency,groups"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["groups_model"]["name"] == "cosal_lite" and body["model"]["name"] != "cosal_lite"
    assert body["saliency_png"] is not None  # the default model's own output is still there
    cosal = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["cosaliency"]))))
    assert cosal.shape == (240, 320)
    members = [m for g in body["groups"] for m in g["members"]] + body["singletons"]
    assert members, "an untrained model still proposes instances on a scene with four objects"
    assert all(len(g["members"]) >= 2 for g in body["groups"])
    cohesion = [g["cohesion"] for g in body["groups"]]
    assert cohesion == sorted(cohesion, reverse=True)
    for member in members:
        x0, y0, x1, y1 = member["box"]
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(member["mask"]))))
        assert mask.shape == (y1 - y0, x1 - x0) and set(np.unique(mask)) <= {0, 255}
    inside = np.zeros((240, 320), bool)
    for member in (m for g in body["groups"] for m in g["members"]):
        x0, y0, x1, y1 = member["box"]
        inside[y0:y1, x0:x1] = True
    assert cosal[~inside].max(initial=0) == 0  # the co-saliency map is dark outside the groups' boxes


async def test_every_model_offers_groups_when_a_cosaliency_model_is_served(tiny: httpx.AsyncClient) -> None:
    models = (await tiny.get("/models")).json()["models"]
    assert all("groups" in m["options"] for m in models)
    response = await tiny.post(
        "/saliency", files=upload(encode(scene(64, 48))), params={"outputs": "groups", "model": "cosal_lite"}
    )
    assert response.status_code == 200 and response.json()["groups_model"]["name"] == "cosal_lite"
    assert response.json()["model"]["name"] == "cosal_lite"


async def test_grouping_runs_on_the_heavy_thread_not_beside_small_requests(
    tiny: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def recording(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return find_groups(*args, **kwargs)

    monkeypatch.setattr(pipeline, "find_groups", recording)
    response = await tiny.post("/saliency", files=upload(compose(*SCENES[0])[0]), params={"outputs": "groups"})
    assert response.status_code == 200
    assert len(threads) == 1 and threads[0].startswith("imaging-heavy")


async def test_groups_requests_are_timed_apart_from_maps(tiny: httpx.AsyncClient) -> None:
    data = encode(scene(64, 48))
    await tiny.post("/saliency", files=upload(data), params={"outputs": "saliency,groups"})
    await tiny.post("/saliency", files=upload(data), params={"outputs": "saliency"})
    text = (await tiny.get("/metrics")).text
    for groups in ("true", "false"):
        count = f'saliency_request_latency_seconds_count{{groups="{groups}",protocol="saliency",route="/saliency"}} 1.0'
        assert count in text


async def test_an_image_over_half_the_pixel_budget_still_gets_its_groups(
    make_settings: Callable[..., Settings], tiny_cosal: Path
) -> None:
    data, _, _ = compose(*SCENES[0])  # 320 × 240 = 76,800 pixels: two decoded copies at once would not fit
    async with running_app(
        make_settings(models=str(tiny_cosal), max_pixels=100_000, max_inflight_pixels=100_000)
    ) as client:
        response = await client.post("/saliency", files=upload(data), params={"outputs": "saliency,groups"})
    assert response.status_code == 200, response.text
    assert response.json()["groups_model"]["name"] == "cosal_lite"


def test_crops_are_encoded_in_chunks_with_the_same_features(tiny_cosal: Path) -> None:
    engine = Engine(tiny_cosal, "fp32", ["CPUExecutionProvider"], intra_op_threads=1)
    try:
        assert engine.manifest.crops is not None
        size = engine.manifest.crops.crop_size
        crops = np.random.default_rng(0).normal(size=(2 * CROP_CHUNK + 3, 3, size, size)).astype(np.float32)
        together = engine.encode_crops(crops)
        one_by_one = np.concatenate([engine.encode_crops(crop[None]) for crop in crops])
    finally:
        engine.close()
    assert together.shape[0] == len(crops)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-5)


@needs_shipped
@pytest.mark.parametrize(("group", "distractor", "back", "seed"), SHIPPED_SCENES)
async def test_the_group_of_three_is_found_without_the_distractor(
    served: httpx.AsyncClient, group: str, distractor: str, back: str, seed: int
) -> None:
    data, copies, distractor_box = compose(group, distractor, back, seed)
    response = await served.post("/saliency", files=upload(data), params={"outputs": "saliency,groups"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] != body["groups_model"]["name"]  # the default answered, the co-saliency model grouped
    assert len(body["groups"]) >= 1
    found = body["groups"][0]
    boxes = np.asarray([m["box"] for m in found["members"]], dtype=np.float64)
    assert sorted(match_instances(copies, boxes).tolist()) == [0, 1, 2]  # every copy is a member (IoU ≥ 0.5)
    assert len(found["members"]) == 3
    everything_grouped = np.asarray([m["box"] for g in body["groups"] for m in g["members"]], dtype=np.float64)
    assert match_instances(distractor_box, everything_grouped).tolist() == [-1]  # the distractor is in no group
    for member in found["members"]:
        x0, y0, x1, y1 = member["box"]
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(member["mask"]))))
        assert mask.shape == (y1 - y0, x1 - x0) and mask.max() == 255
    cosal = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["cosaliency"]))))
    assert cosal.shape == (240, 320)


@needs_shipped
async def test_an_image_without_a_group_answers_an_empty_list(served: httpx.AsyncClient) -> None:
    flat = np.full((120, 160, 3), 128, np.uint8)
    response = await served.post("/saliency", files=upload(encode(flat, "JPEG")), params={"outputs": "groups"})
    assert response.status_code == 200
    body = response.json()
    assert body["groups"] == [] and body["saliency_png"] is None
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(body["cosaliency"])))).max() == 0
