"""Service test fixtures: a real bundle (the shipped default when present, else a seeded picanet_lite export),
apps built with ``create_app`` and driven through their lifespan with httpx's ASGI transport."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.manifest import (
    FileSpec,
    Manifest,
    PreprocessSpec,
    SourceSpec,
    VariantSpec,
    resolve_bundle,
    sha256_file,
)
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _export_test_bundle(out: Path) -> Path:
    """A real bundle of a seeded, untrained picanet_lite (used when no default bundle is committed)."""
    import torch

    import models
    from export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = models.build_model("picanet_lite").eval()
    graph = export_onnx(model, out / "model.onnx", 224)
    onnx_file = out / "model.onnx"
    manifest = Manifest(
        name="picanet_lite_test",
        version="0.0.0",
        architecture="picanet_lite",
        preprocess=PreprocessSpec(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        outputs=graph.outputs,
        variants={"fp32": VariantSpec(file="model.onnx", precision="fp32")},
        files={"model.onnx": FileSpec(sha256=sha256_file(onnx_file), bytes=onnx_file.stat().st_size)},
        opset=17,
        source=SourceSpec(checkpoint="untrained (seed 0)", sha256="0" * 64),
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return out


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed default bundle if there is one, else a freshly exported test bundle."""
    default = REPO / "bundles" / "default"
    if (default / "manifest.json").is_file():
        return resolve_bundle(default)
    return _export_test_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def make_settings(bundle_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values = {"bundle": str(bundle_dir), "models": "", "log_json": False, "max_delay_ms": 5.0} | overrides
        return Settings(**values)

    return make


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan run (model loaded and warmed up), and an httpx client talking to it in-process."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings()) as c:
        yield c


def scene(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """A small RGB test picture: textured background with a bright disc (something salient)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 90, size=(height, width, 3)).astype(np.float32)
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, min(width, height) * 0.25
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    base[disc] = rng.integers(180, 255, size=3)
    return base.astype(np.uint8)


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def decode_png_b64(text: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
