"""The model repository: two real bundles served side by side, picked per request, labelled in the metrics,
compared in one call; a missing, clashing or over-budget set refuses to start."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.imaging import decode_image, preprocess, resize_map, to_uint8
from service.manifest import BundleError
from service.repository import ModelRepository, RepositoryError, configured_bundles
from service.routers.saliency import map_agreement
from service.settings import Settings
from tests.service.conftest import REPO, decode_png_b64, encode, running_app, scene

SCRATCH = REPO / "bundles" / "picanet_lite_scratch"
pytestmark = pytest.mark.anyio
needs_scratch = pytest.mark.skipif(not (SCRATCH / "manifest.json").is_file(), reason="no picanet_lite_scratch bundle")


def upload(data: bytes) -> dict:
    return {"image": ("image.png", data, "image/png")}


@pytest.fixture
async def pair(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """The default bundle and the scratch PiCANet served by one app."""
    async with running_app(make_settings(models=str(SCRATCH))) as client:
        yield client


def _names(client: httpx.AsyncClient) -> tuple[str, str]:
    repository = client.app.state.service.repository  # type: ignore[attr-defined]
    default, other = repository.models
    return default.name, other.name


def _served_map(client: httpx.AsyncClient, name: str, data: bytes) -> np.ndarray:
    """What /saliency should answer for ``data`` from model ``name``, computed straight from its ONNX session."""
    engine = client.app.state.service.repository.find(name).engine  # type: ignore[attr-defined]
    image = decode_image(data, 10**7, 10**7)
    outputs, _ = engine.run_sync(preprocess(image, engine.manifest.preprocess)[None])
    saliency = outputs[engine.manifest.output("saliency")[-1].name][0, 0]
    return to_uint8(np.clip(resize_map(saliency, image.size), 0.0, 1.0))


@needs_scratch
async def test_each_request_gets_the_model_it_names(pair: httpx.AsyncClient) -> None:
    default, other = _names(pair)
    data = encode(scene(80, 60, seed=3))
    maps = {}
    for asked, expected in ((None, default), ("default", default), (default, default), (other, other)):
        params = {"model": asked} if asked else {}
        response = await pair.post("/saliency", files=upload(data), params=params)
        assert response.status_code == 200, response.text
        assert response.json()["model"]["name"] == expected
        maps[asked] = decode_png_b64(response.json()["saliency_png"]).astype(int)
        assert np.abs(maps[asked] - _served_map(pair, expected, data)).max() <= 1
    assert np.abs(maps[other] - maps[default]).mean() > 1  # two different models, two different maps
    batch = await pair.post(
        "/saliency/batch", files=[("images", ("a.png", data)), ("images", ("b.png", data))], params={"model": other}
    )
    assert batch.json()["model"]["name"] == other
    assert np.abs(decode_png_b64(batch.json()["results"][0]["saliency_png"]).astype(int) - maps[other]).max() <= 1


@needs_scratch
async def test_unknown_model_is_422_listing_the_served_names(pair: httpx.AsyncClient) -> None:
    default, other = _names(pair)
    response = await pair.post("/saliency", files=upload(encode(scene(40, 30))), params={"model": "u3net"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_model" and default in error["message"] and other in error["message"]
    v2 = await pair.get("/v2/models/u3net")
    assert v2.status_code == 404 and other in v2.json()["error"]


@needs_scratch
async def test_models_readiness_and_v2_list_every_model(pair: httpx.AsyncClient) -> None:
    default, other = _names(pair)
    listing = (await pair.get("/models")).json()
    assert listing["default"] == default and listing["rss_mib"] > 0
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {default, other}
    assert by_name[default]["default"] and not by_name[other]["default"]
    scratch = json.loads((SCRATCH / "manifest.json").read_text())
    entry = by_name[other]
    assert entry["paper"] == scratch["paper"] and entry["bundle"] == SCRATCH.name
    assert entry["accuracy"] == scratch["variants"][entry["variant"]]["accuracy"]
    assert entry["ready"] and "saliency" in entry["options"] and entry["rss_mib"] >= 0
    assert set(entry["attention_kinds"]) == {o["attention"]["kind"] for o in scratch["outputs"] if o.get("attention")}
    ready = (await pair.get("/readyz")).json()
    assert ready["ready"] and ready["models"] == {default: True, other: True}
    assert (await pair.get(f"/v2/models/{other}/ready")).status_code == 200
    index = (await pair.post("/v2/repository/index")).json()
    assert [(e["name"], e["state"]) for e in index] == [(default, "READY"), (other, "READY")]


@needs_scratch
async def test_metrics_carry_the_model_label(pair: httpx.AsyncClient) -> None:
    default, other = _names(pair)
    data = encode(scene(40, 30))
    await pair.post("/saliency", files=upload(data))
    await pair.post("/saliency", files=upload(data), params={"model": other})
    await pair.post("/saliency", files=upload(data), params={"model": other})
    text = (await pair.get("/metrics")).text
    assert f'saliency_inference_seconds_count{{model="{default}"}} 1.0' in text
    assert f'saliency_inference_seconds_count{{model="{other}"}} 2.0' in text
    requests = 'saliency_requests_total{{method="POST",model="{}",protocol="saliency",route="/saliency",status="200"}}'
    assert requests.format(other) + " 2.0" in text and requests.format(default) + " 1.0" in text


@needs_scratch
async def test_compare_answers_each_map_and_their_agreement(pair: httpx.AsyncClient) -> None:
    default, other = _names(pair)
    data = encode(scene(90, 50, seed=5))
    response = await pair.post("/saliency/compare", files=upload(data), params={"models": f"{other},{default}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [m["model"]["name"] for m in body["maps"]] == [other, default]
    assert body["image"] == {"width": 90, "height": 50} == body["map_size"]
    first, second = (decode_png_b64(m["saliency_png"]) for m in body["maps"])
    assert np.abs(first.astype(int) - _served_map(pair, other, data)).max() <= 1
    (agreement,) = body["agreement"]
    assert (agreement["a"], agreement["b"]) == (other, default)
    expected_mae, _ = map_agreement(first / 255.0, second / 255.0)
    assert agreement["mae"] == pytest.approx(expected_mae, abs=2 / 255)
    for models in (default, f"{default},{default}", f"{default},nobody"):
        bad = await pair.post("/saliency/compare", files=upload(data), params={"models": models})
        assert bad.status_code == 422, models


def test_map_agreement_by_hand() -> None:
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[:2, :] = 1.0  # 8 pixels
    b[:, :2] = 0.8  # 8 pixels, 4 shared with a
    mae, iou = map_agreement(a, b)
    assert mae == pytest.approx((4 * 0.2 + 4 * 1.0 + 4 * 0.8) / 16)
    assert iou == pytest.approx(4 / 12)
    assert map_agreement(np.zeros((3, 3)), np.full((3, 3), 0.4)) == (pytest.approx(0.4), 1.0)


def _repository_dir(tmp_path: Path, bundle_dir: Path, *names: str) -> Path:
    root = tmp_path / "bundles"
    for name in names:
        shutil.copytree(bundle_dir, root / name)
    return root


def test_all_means_every_bundle_once_default_first(bundle_dir: Path, tmp_path: Path) -> None:
    root = _repository_dir(tmp_path, bundle_dir, "b", "a", "default")
    settings = Settings(bundle="default", models="all", log_json=False)
    assert [p.name for p in configured_bundles(settings, root)] == ["default", "a", "b"]
    only = Settings(bundle="b", models="", log_json=False)
    assert [p.name for p in configured_bundles(only, root)] == ["b"]


def test_missing_clashing_or_over_budget_sets_refuse_to_load(bundle_dir: Path, tmp_path: Path) -> None:
    root = _repository_dir(tmp_path, bundle_dir, "default", "twin")
    with pytest.raises(BundleError, match="no bundle 'nowhere'"):
        ModelRepository.load(Settings(models="nowhere", log_json=False), root)
    with pytest.raises(RepositoryError, match="both hold a model named"):
        ModelRepository.load(Settings(models="all", log_json=False), root)
    with pytest.raises(RepositoryError, match=r"over the 1 MiB memory budget.*SALIENCY_MODELS"):
        ModelRepository.load(Settings(models="", memory_budget_mib=1, log_json=False), root)
    repository = ModelRepository.load(Settings(models="", memory_budget_mib=100_000, log_json=False), root)
    assert repository.names == [repository.default.name] and repository.default.rss_mib >= 0
    repository.close()
