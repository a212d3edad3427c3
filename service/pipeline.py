"""One image's way through the service: admit → decode → batcher → post-process → encode, under one deadline.

Bounded work whatever the input: the image's pixels are reserved from the header before decoding (admission);
images over ``heavy_pixels`` are decoded and post-processed on their own single thread, and grouping (it crops and
encodes every candidate box: the slowest post-processing by far) runs there too, so they never hold up small ones; a
JPEG is decoded at a reduced scale when the maps it needs are smaller; saliency maps and overlays are made at most
``max_map_side`` on their long side and attention heatmaps at most ``max_attention_side``, each encoded as soon as it
is made. One deadline covers the whole request: past it the answer is 504, stages not yet started never run,
and the post-processing loop stops at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import Image
from prometheus_client import Histogram

from service.admission import Admission
from service.attention import SUMMARY_OF_KIND, attention_summary, extreme_points, place_attention
from service.batcher import Batcher, InferenceResult, QueueFullError
from service.engine import Engine
from service.errors import ServiceError
from service.grouping import Instance, cosaliency_map, find_groups, image_box, image_outputs
from service.imaging import (
    ImageHeader,
    decode_image,
    encode_png,
    fit_size,
    overlay,
    preprocess,
    read_header,
    resize_map,
    to_uint8,
)
from service.manifest import BundleError
from service.metrics import ServiceMetrics
from service.schemas import (
    AttentionMap,
    AttentionPoint,
    AttentionWeight,
    CoSalientGroup,
    GroupMember,
    ImageAttentionMap,
    ImageResult,
    ImageSize,
    ModelRef,
    Timings,
)
from service.settings import Settings

OUTPUT_OPTIONS = ("saliency", "attention", "overlay", "groups")
MAX_POINTS = 16
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What a client asked for.

    Attributes:
        outputs: subset of :data:`OUTPUT_OPTIONS`.
        points: attention query points (x, y) in image pixels; ``None`` = most and least salient pixel.
        png: answer with the saliency PNG itself instead of JSON (see :meth:`Pipeline.run_png`).
        max_side: longest side of the returned maps (at most the server's ``max_map_side``); ``None`` = the server's.
    """

    outputs: frozenset[str] = field(default_factory=lambda: frozenset({"saliency"}))
    points: list[tuple[float, float]] | None = None
    png: bool = False
    max_side: int | None = None


class Deadline:
    """The end of a request's time budget, shared by the event loop and the worker threads that serve it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.perf_counter() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.perf_counter())

    def error(self, stage: str) -> ServiceError:
        return ServiceError(
            504, "timeout", f"the request's {self.seconds:g} s deadline passed during {stage}; its work was dropped"
        )

    def check(self, stage: str) -> None:
        """Raise the 504 if the deadline has passed (called between steps, so late work stops)."""
        if self.remaining() <= 0:
            raise self.error(stage)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class _Decoded:
    image: Image.Image  # at most the map size
    original: tuple[int, int]  # (width, height) of the upload, upright
    tensor: np.ndarray
    seconds: float


class Pipeline:
    """Runs requests against one loaded engine.

    Args:
        settings: limits and timeouts.
        engine: the loaded model.
        batcher: the dynamic batcher in front of it.
        metrics: where stage times go.
        pool: worker threads for decoding and encoding ordinary images, so they overlap inference.
        heavy_pool: one worker thread, at a lower CPU priority, for images over ``settings.heavy_pixels`` and for
            grouping.
        admission: the in-flight budget the decoded pixels are reserved from.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        batcher: Batcher,
        metrics: ServiceMetrics,
        pool: ThreadPoolExecutor,
        heavy_pool: ThreadPoolExecutor,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.batcher = batcher
        self.metrics = metrics
        self.pool = pool
        self.heavy_pool = heavy_pool
        self.admission = admission
        manifest = engine.manifest
        saliency = manifest.output("saliency")
        if not saliency:
            raise BundleError(f"bundle {manifest.name} declares no saliency output")
        self._saliency = saliency[-1]
        self._attention = [o for o in manifest.output("attention") if o.attention is not None]
        self._grouping = manifest.grouping
        # A model that cannot group answers outputs=groups through the repository's co-saliency model (set by the
        # server when one is loaded), so the default model answers all three outputs.
        self.grouper: Pipeline | None = None
        self._active = 0

    def _stage_seconds(self, stage: str) -> Histogram:
        return self.metrics.stage_seconds.labels(self.engine.manifest.name, stage)

    @property
    def active(self) -> int:
        """Requests between upload and answer right now (shutdown waits for them before closing the pools)."""
        return self._active

    def model_ref(self) -> ModelRef:
        info = self.engine.info
        return ModelRef(name=info.manifest.name, version=info.manifest.version, variant=info.variant)

    def available_outputs(self) -> list[str]:
        """Values of the ``outputs`` option this model can answer."""
        outputs = ["saliency", "overlay"] + (["attention"] if self._attention else [])
        return outputs + (["groups"] if self._grouping or self.grouper else [])

    def check_options(self, options: Options) -> None:
        """Refuse options the model cannot serve (422) before any work is done."""
        unavailable = sorted(options.outputs - set(self.available_outputs()))
        if "groups" in unavailable:
            raise ServiceError(
                422,
                "output_not_available",
                "outputs=groups needs a co-saliency model and none is served (add the cosal bundle to SALIENCY_MODELS)",
            )
        if unavailable:
            raise ServiceError(422, "output_not_available", f"outputs {unavailable} not available for this model")
        if options.points is not None and "attention" not in options.outputs:
            raise ServiceError(422, "invalid_option", "points are attention query points: add attention to outputs")
        if options.max_side is not None and not 16 <= options.max_side <= self.settings.max_map_side:
            raise ServiceError(
                422, "invalid_option", f"max_side must be between 16 and {self.settings.max_map_side} (max_map_side)"
            )

    def _map_side(self, options: Options) -> int:
        return min(options.max_side or self.settings.max_map_side, self.settings.max_map_side)

    # --- the stages -------------------------------------------------------------------------------------------

    def _header(self, data: bytes) -> ImageHeader:
        return read_header(data, self.settings.max_upload_bytes, self.settings.max_pixels)

    def _decode(self, data: bytes, header: ImageHeader, max_side: int, deadline: Deadline) -> _Decoded:
        deadline.check("decoding")
        start = time.perf_counter()
        try:
            image = decode_image(data, self.settings.max_upload_bytes, self.settings.max_pixels, max_side)
        finally:  # refused images cost decode time too, and that is worth seeing
            decoded = time.perf_counter()
            self._stage_seconds("decode").observe(decoded - start)
        deadline.check("preprocessing")
        tensor = preprocess(image, self.engine.manifest.preprocess)
        done = time.perf_counter()
        self._stage_seconds("preprocess").observe(done - decoded)
        return _Decoded(image, header.size, tensor, done - start)

    async def _infer(self, tensor: np.ndarray, deadline: Deadline) -> InferenceResult:
        try:
            return await self.batcher.infer(tensor, deadline.remaining())
        except QueueFullError as exc:
            raise ServiceError(
                503, "overloaded", f"the inference queue is full ({exc}); retry shortly", {"Retry-After": "1"}
            ) from exc
        except TimeoutError as exc:
            raise deadline.error("the wait for inference") from exc

    def _saliency_map(self, result: InferenceResult, size: tuple[int, int]) -> np.ndarray:
        return np.clip(resize_map(result.outputs[self._saliency.name][0], size), 0.0, 1.0)

    def _attention_point(
        self,
        result: InferenceResult,
        point: tuple[float, float],
        original: tuple[int, int],
        deadline: Deadline,
        png: Callable[[np.ndarray], str],
    ) -> AttentionPoint:
        heat_size = fit_size(original, self.settings.max_attention_side)
        answers = []
        for spec in self._attention:
            deadline.check("post-processing")
            placed = place_attention(
                result.outputs[spec.name], spec.attention, point, original, self.engine.input_size, heat_size
            )
            weights = [
                AttentionWeight(x=float(c[0]), y=float(c[1]), weight=float(w), inside=bool(i))
                for c, w, i in zip(placed.centres, placed.weights, placed.inside, strict=True)
            ]
            answers.append(
                AttentionMap(
                    output=spec.name,
                    kind=spec.attention.kind,
                    normalization=spec.attention.normalization,
                    grid=spec.attention.grid,
                    feature_cell=placed.feature_cell,
                    heatmap_png=png(to_uint8(placed.heatmap)),
                    weights=weights,
                )
            )
        return AttentionPoint(x=point[0], y=point[1], maps=answers)

    def _image_attention(
        self, result: InferenceResult, original: tuple[int, int], deadline: Deadline, png: Callable[[np.ndarray], str]
    ) -> list[ImageAttentionMap]:
        heat_size = fit_size(original, self.settings.max_attention_side)
        maps = []
        for spec in self._attention:
            deadline.check("post-processing")
            summary = attention_summary(result.outputs[spec.name], spec.attention)
            peak = float(summary.max())
            scaled = summary / peak if peak > 0 else summary
            maps.append(
                ImageAttentionMap(
                    output=spec.name,
                    kind=spec.attention.kind,
                    summary=SUMMARY_OF_KIND[spec.attention.kind],
                    peak=peak,
                    heatmap_png=png(to_uint8(np.clip(resize_map(scaled, heat_size), 0.0, 1.0))),
                )
            )
        return maps

    def _groups(
        self,
        result: InferenceResult,
        decoded: _Decoded,
        deadline: Deadline,
        png: Callable[[np.ndarray], str],
    ) -> dict:
        """Co-saliency groups, singletons and map at the upload's size (``service/grouping.py``)."""
        manifest = self.engine.manifest
        if self._grouping is None or manifest.regions is None:
            raise BundleError(f"bundle {manifest.name} has no grouping settings")
        deadline.check("grouping")
        size = self.engine.input_size
        original = decoded.original
        out = image_outputs(result.outputs, manifest)
        grouping = find_groups(out, decoded.image, self.engine.instance_encoders(), self._grouping, size)
        deadline.check("grouping")
        # uint8 at the upload's size (one byte a pixel), cut from the network's map
        full = np.asarray(Image.fromarray(to_uint8(np.clip(out["probability"], 0, 1))).resize(original, Image.BILINEAR))
        threshold = round(self._grouping.mask_threshold * 255)

        def member(instance: Instance) -> GroupMember:
            x0, y0, x1, y1 = image_box(instance.box, original, size)
            mask = np.where(full[y0:y1, x0:x1] >= threshold, 255, 0).astype(np.uint8)
            return GroupMember(box=(x0, y0, x1, y1), score=round(instance.score, 4), mask=png(mask))

        groups = [
            CoSalientGroup(id=i, cohesion=round(cohesion, 4), members=[member(m) for m in members])
            for i, (members, cohesion) in enumerate(zip(grouping.groups, grouping.cohesion, strict=True))
        ]
        deadline.check("grouping")
        cosal = cosaliency_map(full, grouping, size)
        return {
            "groups": groups,
            "singletons": [member(m) for m in grouping.singletons],
            "cosaliency": png(cosal),
            "groups_model": self.model_ref(),
        }

    def _postprocess(
        self, decoded: _Decoded, result: InferenceResult, options: Options, deadline: Deadline
    ) -> tuple[dict, float]:
        deadline.check("post-processing")
        start = time.perf_counter()
        encoding = [0.0]

        def png(pixels: np.ndarray) -> str:  # encoded at once, so no full-size map waits in memory for the others
            began = time.perf_counter()
            text = _b64(encode_png(pixels))
            encoding[0] += time.perf_counter() - began
            return text

        image = decoded.image
        saliency = self._saliency_map(result, image.size)
        fields: dict = {"map_size": ImageSize(width=image.size[0], height=image.size[1])}
        if "saliency" in options.outputs:
            fields["saliency_png"] = png(to_uint8(saliency))
        if "overlay" in options.outputs:
            deadline.check("post-processing")
            fields["overlay_png"] = png(overlay(image, saliency))
        if "attention" in options.outputs:
            points = options.points
            if points is None:  # found on the map, given in the upload's pixels
                sx, sy = decoded.original[0] / image.size[0], decoded.original[1] / image.size[1]
                points = [(x * sx, y * sy) for x, y in extreme_points(saliency)]
            fields["attention"] = [self._attention_point(result, p, decoded.original, deadline, png) for p in points]
            fields["attention_maps"] = self._image_attention(result, decoded.original, deadline, png)
        if "groups" in options.outputs:
            fields |= self._groups(result, decoded, deadline, png)
        seconds = time.perf_counter() - start
        self._stage_seconds("postprocess").observe(seconds - encoding[0])
        self._stage_seconds("encode").observe(encoding[0])
        return fields, seconds

    def _encode_saliency_png(self, decoded: _Decoded, result: InferenceResult, deadline: Deadline) -> bytes:
        deadline.check("post-processing")
        start = time.perf_counter()
        pixels = to_uint8(self._saliency_map(result, decoded.image.size))
        processed = time.perf_counter()
        png = encode_png(pixels)
        self._stage_seconds("postprocess").observe(processed - start)
        self._stage_seconds("encode").observe(time.perf_counter() - processed)
        return png

    def _check_points(self, options: Options, size: tuple[int, int]) -> None:
        for x, y in options.points or []:
            if not (0 <= x < size[0] and 0 <= y < size[1]):
                raise ServiceError(
                    422, "invalid_option", f"point ({x:g},{y:g}) lies outside the {size[0]}x{size[1]} image"
                )

    # --- running a request ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    async def _in_thread(
        self, pool: ThreadPoolExecutor, deadline: Deadline, stage: str, release: list[Callable[[], None]],
        work: Callable[..., T], *args: object,
    ) -> T:  # fmt: skip
        """Run ``work`` on ``pool`` within the deadline. On a timeout the request answers 504 at once, and what it
        holds (``release``) is handed back only when the thread has stopped (it checks the deadline between steps),
        so the budget always covers the memory really in use."""
        future = asyncio.get_running_loop().run_in_executor(pool, work, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), deadline.remaining())
        except TimeoutError:
            pending = list(release)
            release.clear()
            future.add_done_callback(lambda _: [undo() for undo in pending])
            raise deadline.error(stage) from None

    @contextlib.asynccontextmanager
    async def _admitted(
        self, data: bytes, deadline: Deadline
    ) -> AsyncIterator[tuple[ImageHeader, ThreadPoolExecutor, list]]:
        """The request counted as active, the upload's header read and its pixels reserved (503 when the pixel budget
        is full), and the pool that will serve it; the reservation is returned when the request (and any thread
        still working for it) ends."""
        with self._tracked():
            header = await self._in_thread(self.pool, deadline, "reading the image header", [], self._header, data)
            self.admission.admit_pixels(header.pixels)
            release = [lambda: self.admission.release_pixels(header.pixels)]
            pool = self.heavy_pool if header.pixels > self.settings.heavy_pixels else self.pool
            try:
                yield header, pool, release
            finally:
                for undo in release:
                    undo()

    async def _decode_and_infer(
        self, data: bytes, options: Options, deadline: Deadline, pool: ThreadPoolExecutor, header: ImageHeader,
        release: list,
    ) -> tuple[_Decoded, InferenceResult]:  # fmt: skip
        self._check_points(options, header.size)
        side = self._map_side(options)
        decoded = await self._in_thread(pool, deadline, "decoding", release, self._decode, data, header, side, deadline)
        return decoded, await self._infer(decoded.tensor, deadline)

    async def run(self, data: bytes, options: Options, deadline: Deadline | None = None) -> ImageResult:
        """Answer one uploaded image with the outputs ``options`` asks for, within ``deadline`` (default: a new one
        of ``request_timeout_s``).

        Raises:
            ServiceError: bad image (400/413/415), bad points (422), over capacity (503), deadline (504).
        """
        deadline = deadline or Deadline(self.settings.request_timeout_s)
        if "groups" in options.outputs and self._grouping is None and self.grouper is not None:
            # One after the other: run together, the two would hold two decoded copies of the image at once (an image
            # over half the pixel budget could never be answered), and a refusal of one would leave the other running.
            own = Options(options.outputs - {"groups"}, options.points, options.png, options.max_side)
            mine = await self.run(data, own, deadline)
            theirs = await self.grouper.run(data, Options(frozenset({"groups"})), deadline)
            grouped = {k: getattr(theirs, k) for k in ("groups", "singletons", "cosaliency", "groups_model")}
            return mine.model_copy(update=grouped)
        async with self._admitted(data, deadline) as (header, pool, release):
            decoded, result = await self._decode_and_infer(data, options, deadline, pool, header, release)
            grouping = "groups" in options.outputs and self._grouping is not None
            fields, post_s = await self._in_thread(
                self.heavy_pool if grouping else pool,
                deadline, "post-processing", release, self._postprocess, decoded, result, options, deadline,
            )  # fmt: skip
        return ImageResult(
            image=ImageSize(width=header.width, height=header.height),
            batch_size=result.batch_size,
            timings=Timings(
                decode=decoded.seconds * 1e3,
                queue=result.queue_s * 1e3,
                inference=result.inference_s * 1e3,
                postprocess=post_s * 1e3,
            ),
            **fields,
        )

    async def run_png(self, data: bytes, options: Options) -> bytes:
        """The saliency map of one uploaded image as PNG bytes (at the map size: the image's, up to ``max_side``).

        Raises:
            ServiceError: bad image (400/413/415), over capacity (503), deadline (504).
        """
        deadline = Deadline(self.settings.request_timeout_s)
        async with self._admitted(data, deadline) as (header, pool, release):
            decoded, result = await self._decode_and_infer(data, options, deadline, pool, header, release)
            return await self._in_thread(
                pool, deadline, "post-processing", release, self._encode_saliency_png, decoded, result, deadline
            )

    async def infer_encoded(self, data: bytes) -> InferenceResult:
        """One uploaded image decoded, preprocessed and run through the batcher: the raw model outputs.

        Raises:
            ServiceError: bad image (400/413/415), over capacity (503), deadline (504).
        """
        deadline = Deadline(self.settings.request_timeout_s)
        async with self._admitted(data, deadline) as (header, pool, release):
            side = self.settings.max_map_side  # decoded as /saliency does, so the maps agree
            decoded = await self._in_thread(
                pool, deadline, "decoding", release, self._decode, data, header, side, deadline
            )
            return await self._infer(decoded.tensor, deadline)

    async def infer_tensor(self, tensor: np.ndarray) -> InferenceResult:
        """One already preprocessed ``[3,S,S]`` float32 input run through the batcher: the raw model outputs.

        Raises:
            ServiceError: queue full (503), deadline (504).
        """
        with self._tracked():
            return await self._infer(tensor, Deadline(self.settings.request_timeout_s))

    async def saliency_of(self, data: bytes) -> tuple[Image.Image, np.ndarray, tuple[int, int]]:
        """The decoded image (at most ``max_map_side``), its saliency map in [0, 1] at that size, and the upload's
        own (width, height).

        Raises:
            ServiceError: bad image (400/413/415), over capacity (503), deadline (504).
        """
        deadline = Deadline(self.settings.request_timeout_s)
        async with self._admitted(data, deadline) as (header, pool, release):
            decoded, result = await self._decode_and_infer(data, Options(), deadline, pool, header, release)
            saliency = await self._in_thread(
                pool, deadline, "post-processing", release, self._saliency_map, result, decoded.image.size
            )
        return decoded.image, saliency, decoded.original
