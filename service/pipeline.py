"""One image's way through the service: decode → batcher → post-process, with per-stage timings and metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.attention import extreme_points, place_attention
from service.batcher import Batcher, InferenceResult, QueueFullError
from service.engine import Engine
from service.errors import ServiceError
from service.imaging import decode_image, encode_png, overlay, preprocess, resize_map, to_uint8
from service.manifest import BundleError
from service.metrics import ServiceMetrics
from service.schemas import AttentionMap, AttentionPoint, AttentionWeight, ImageResult, ImageSize, Timings
from service.settings import Settings

OUTPUT_OPTIONS = ("saliency", "attention", "overlay", "groups")
MAX_POINTS = 16


@dataclass(frozen=True)
class Options:
    """What a client asked for.

    Attributes:
        outputs: subset of :data:`OUTPUT_OPTIONS`.
        points: attention query points (x, y) in image pixels; ``None`` = most and least salient pixel.
        png: answer with the saliency PNG itself instead of JSON (see :meth:`Pipeline.run_png`).
    """

    outputs: frozenset[str] = field(default_factory=lambda: frozenset({"saliency"}))
    points: list[tuple[float, float]] | None = None
    png: bool = False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class _Decoded:
    image: Image.Image
    tensor: np.ndarray
    seconds: float


class Pipeline:
    """Runs requests against one loaded engine.

    Args:
        settings: limits and timeouts.
        engine: the loaded model.
        batcher: the dynamic batcher in front of it.
        metrics: where stage times go.
        pool: worker threads for decoding and encoding, so they overlap inference.
    """

    def __init__(
        self, settings: Settings, engine: Engine, batcher: Batcher, metrics: ServiceMetrics, pool: ThreadPoolExecutor
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.batcher = batcher
        self.metrics = metrics
        self.pool = pool
        manifest = engine.manifest
        saliency = manifest.output("saliency")
        if not saliency:
            raise BundleError(f"bundle {manifest.name} declares no saliency output")
        self._saliency = saliency[-1]
        self._attention = [o for o in manifest.output("attention") if o.attention is not None]
        self._has_embedding = bool(manifest.output("embedding"))
        self._active = 0

    @property
    def active(self) -> int:
        """Requests between upload and answer right now (shutdown waits for them before closing the pools)."""
        return self._active

    def available_outputs(self) -> list[str]:
        """Values of the ``outputs`` option this model can answer."""
        return ["saliency", "overlay"] + (["attention"] if self._attention else [])

    def check_options(self, options: Options) -> None:
        """Refuse options the model cannot serve (422) before any work is done."""
        unavailable = sorted(options.outputs - set(self.available_outputs()))
        if "groups" in unavailable:
            reason = (
                "it has no embedding output" if not self._has_embedding else "co-saliency grouping is not served yet"
            )
            raise ServiceError(
                422, "output_not_available", f"outputs=groups is not available for this model ({reason})"
            )
        if unavailable:
            raise ServiceError(422, "output_not_available", f"outputs {unavailable} not available for this model")
        if options.points is not None and "attention" not in options.outputs:
            raise ServiceError(422, "invalid_option", "points are attention query points: add attention to outputs")

    def _decode(self, data: bytes) -> _Decoded:
        start = time.perf_counter()
        try:
            image = decode_image(data, self.settings.max_upload_bytes, self.settings.max_pixels)
        finally:  # refused images cost decode time too, and that is worth seeing
            decoded = time.perf_counter()
            self.metrics.stage_seconds.labels("decode").observe(decoded - start)
        tensor = preprocess(image, self.engine.manifest.preprocess)
        done = time.perf_counter()
        self.metrics.stage_seconds.labels("preprocess").observe(done - decoded)
        return _Decoded(image, tensor, done - start)

    async def _infer(self, tensor: np.ndarray) -> InferenceResult:
        try:
            return await self.batcher.infer(tensor, self.settings.request_timeout_s)
        except QueueFullError as exc:
            raise ServiceError(
                503, "overloaded", f"the inference queue is full ({exc}); retry shortly", {"Retry-After": "1"}
            ) from exc
        except TimeoutError as exc:
            raise ServiceError(
                504, "timeout", f"no result within {self.settings.request_timeout_s:g} s; the server is overloaded"
            ) from exc

    def _saliency_map(self, result: InferenceResult, size: tuple[int, int]) -> np.ndarray:
        return np.clip(resize_map(result.outputs[self._saliency.name][0], size), 0.0, 1.0)

    def _postprocess(self, decoded: _Decoded, result: InferenceResult, options: Options) -> tuple[dict, float]:
        start = time.perf_counter()
        image = decoded.image
        size = image.size
        saliency = self._saliency_map(result, size)
        fields: dict = {}
        to_encode: dict[str, np.ndarray] = {}
        if "saliency" in options.outputs:
            to_encode["saliency_png"] = to_uint8(saliency)
        if "overlay" in options.outputs:
            to_encode["overlay_png"] = overlay(image, saliency)
        placed = []
        if "attention" in options.outputs:
            points = options.points if options.points is not None else extreme_points(saliency)
            input_size = self.engine.input_size
            for x, y in points:
                maps = [
                    (spec, place_attention(result.outputs[spec.name], spec.attention, (x, y), size, input_size))
                    for spec in self._attention
                ]
                placed.append((x, y, maps))
        processed = time.perf_counter()
        encoded = {name: _b64(encode_png(pixels)) for name, pixels in to_encode.items()}
        points_out = []
        for x, y, maps in placed:
            answers = []
            for spec, p in maps:
                weights = [
                    AttentionWeight(x=float(c[0]), y=float(c[1]), weight=float(w), inside=bool(i))
                    for c, w, i in zip(p.centres, p.weights, p.inside, strict=True)
                ]
                answers.append(
                    AttentionMap(
                        output=spec.name,
                        kind=spec.attention.kind,
                        normalization=spec.attention.normalization,
                        grid=spec.attention.grid,
                        feature_cell=p.feature_cell,
                        heatmap_png=_b64(encode_png(to_uint8(p.heatmap))),
                        weights=weights,
                    )
                )
            points_out.append(AttentionPoint(x=x, y=y, maps=answers))
        done = time.perf_counter()
        self.metrics.stage_seconds.labels("postprocess").observe(processed - start)
        self.metrics.stage_seconds.labels("encode").observe(done - processed)
        fields.update(encoded)
        if "attention" in options.outputs:
            fields["attention"] = points_out
        return fields, done - start

    def _encode_saliency_png(self, decoded: _Decoded, result: InferenceResult) -> bytes:
        start = time.perf_counter()
        saliency = self._saliency_map(result, decoded.image.size)
        processed = time.perf_counter()
        png = encode_png(to_uint8(saliency))
        self.metrics.stage_seconds.labels("postprocess").observe(processed - start)
        self.metrics.stage_seconds.labels("encode").observe(time.perf_counter() - processed)
        return png

    def _check_points(self, options: Options, size: tuple[int, int]) -> None:
        for x, y in options.points or []:
            if not (0 <= x < size[0] and 0 <= y < size[1]):
                raise ServiceError(
                    422, "invalid_option", f"point ({x:g},{y:g}) lies outside the {size[0]}x{size[1]} image"
                )

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def _decode_and_infer(self, data: bytes, options: Options) -> tuple[_Decoded, InferenceResult]:
        decoded = await asyncio.get_running_loop().run_in_executor(self.pool, self._decode, data)
        self._check_points(options, decoded.image.size)
        return decoded, await self._infer(decoded.tensor)

    async def infer_encoded(self, data: bytes) -> InferenceResult:
        """One uploaded image decoded, preprocessed and run through the batcher: the raw model outputs.

        Raises:
            ServiceError: bad image (400/413/415), queue full (503), timeout (504).
        """
        with self._tracked():
            return (await self._decode_and_infer(data, Options()))[1]

    async def infer_tensor(self, tensor: np.ndarray) -> InferenceResult:
        """One already preprocessed ``[3,S,S]`` float32 input run through the batcher: the raw model outputs.

        Raises:
            ServiceError: queue full (503), timeout (504).
        """
        with self._tracked():
            return await self._infer(tensor)

    async def saliency_of(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """The decoded image and its saliency map in [0, 1] at the image's size (float32 ``[H,W]``).

        Raises:
            ServiceError: bad image (400/413/415), queue full (503), timeout (504).
        """
        with self._tracked():
            decoded, result = await self._decode_and_infer(data, Options())
            loop = asyncio.get_running_loop()
            saliency = await loop.run_in_executor(self.pool, self._saliency_map, result, decoded.image.size)
        return decoded.image, saliency

    async def run_png(self, data: bytes) -> bytes:
        """The saliency map of one uploaded image as PNG bytes at the image's size.

        Raises:
            ServiceError: bad image (400/413/415), queue full (503), timeout (504).
        """
        with self._tracked():
            decoded, result = await self._decode_and_infer(data, Options())
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self._encode_saliency_png, decoded, result)

    async def run(self, data: bytes, options: Options) -> ImageResult:
        """Answer one uploaded image with the outputs ``options`` asks for.

        Raises:
            ServiceError: bad image (400/413/415), bad points (422), queue full (503), timeout (504).
        """
        with self._tracked():
            decoded, result = await self._decode_and_infer(data, options)
            loop = asyncio.get_running_loop()
            fields, post_s = await loop.run_in_executor(self.pool, self._postprocess, decoded, result, options)
        width, height = decoded.image.size
        return ImageResult(
            image=ImageSize(width=width, height=height),
            batch_size=result.batch_size,
            timings=Timings(
                decode=decoded.seconds * 1e3,
                queue=result.queue_s * 1e3,
                inference=result.inference_s * 1e3,
                postprocess=post_s * 1e3,
            ),
            **fields,
        )
