"""``outputs=groups`` end to end: the shipped co-saliency bundle served beside the default model finds the group in
scenes composed from the fixture objects (three copies of one object and one distractor), answers through any model,
and says when there is no group."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service.conftest import REPO, encode, running_app, scene
from training.cosal_data import background, compose_scene, cut_object
from training.cosal_metrics import match_instances
from training.data import list_pairs

COSAL = REPO / "bundles" / "cosal"
FIXTURES = REPO / "tests" / "fixtures" / "sod"
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not (COSAL / "manifest.json").is_file(), reason="no co-saliency bundle (bundles/cosal)"),
]
# (group object, distractor, background) fixture stems and a seed for each scene; objects are the fixtures whose
# mask is one clean object (training.cosal_data.cut_object)
SCENES = [
    ("ecssd_0002", "pascals_4", "pascals_9", 0),
    ("ecssd_0005", "ecssd_0008", "pascals_11", 1),
    ("pascals_5", "ecssd_0001", "ecssd_0009", 2),
]


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


@pytest.fixture
async def served(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """The default model and the co-saliency model in one app."""
    async with running_app(make_settings(models=str(COSAL))) as client:
        yield client


@pytest.mark.parametrize(("group", "distractor", "back", "seed"), SCENES)
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


async def test_an_image_without_a_group_answers_an_empty_list(served: httpx.AsyncClient) -> None:
    flat = np.full((120, 160, 3), 128, np.uint8)
    response = await served.post("/saliency", files=upload(encode(flat, "JPEG")), params={"outputs": "groups"})
    assert response.status_code == 200
    body = response.json()
    assert body["groups"] == [] and body["saliency_png"] is None
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(body["cosaliency"])))).max() == 0


async def test_models_lists_groups_for_every_model_when_a_cosaliency_model_is_served(
    served: httpx.AsyncClient,
) -> None:
    models = (await served.get("/models")).json()["models"]
    assert all("groups" in m["options"] for m in models)
    response = await served.post(
        "/saliency", files=upload(encode(scene(64, 48))), params={"outputs": "groups", "model": "cosal_effl0"}
    )
    assert response.status_code == 200 and response.json()["groups_model"]["name"] == "cosal_effl0"
