"""Service settings from the environment (prefix ``SALIENCY_``), validated so that nonsense refuses to start."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ALL_MODELS = "all"
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _comma_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value if str(item).strip()]
    raise ValueError("expected a comma-separated list")


class Settings(BaseSettings):
    """Everything the server can be told; each field reads ``SALIENCY_<NAME>`` from the environment.

    Attributes:
        host, port: where uvicorn listens (loopback by default).
        bundle: the default model: a bundle name under ``bundles/`` or a bundle folder.
        models: more models served beside it, each picked per request with ``model=<name>``: a comma list of bundle
            names or folders, ``all`` for every bundle under ``bundles/`` (the default), empty for the default only.
        memory_budget_mib: the most resident memory (MiB) the process may hold once its models are loaded and
            warmed up; past it the server refuses to start and says what each model cost (0 = no budget).
        variant: ``auto`` (int8 when the bundle ships one, else the manifest's default), or a variant name.
        providers: ``auto`` (TensorRT → CUDA → CPU, whichever the session really gets) or a comma list of
            ``tensorrt``, ``cuda``, ``cpu`` in order of preference.
        max_batch_size, max_delay_ms: dynamic batching limits.
        queue_size: images waiting for inference before new ones are refused with 503.
        request_timeout_s: the deadline of a whole request (decode, queue, inference, post-processing, encoding);
            past it the answer is 504 and the request's remaining work is dropped.
        intra_op_threads: ONNX Runtime threads per inference (0 = ONNX Runtime's default, one per core).
        intra_op_spinning: let idle ONNX Runtime threads spin (off: far slower on shared cores, see ``Engine``).
        max_upload_bytes: largest accepted image file; max_pixels: largest width × height (decompression bombs).
        max_batch_images: most images in one ``/saliency/batch`` (or KServe v2) request.
        max_map_side: longest side of returned saliency maps and overlays; larger images get maps scaled to fit
            (the response's ``map_size`` says so). Clients may ask for less with ``max_side``.
        max_attention_side: longest side of returned attention heatmaps.
        max_inflight_requests: requests admitted at once (body read through answer); more get 503 before their
            body is read.
        max_inflight_bytes: upload bytes the admitted requests may hold together (by Content-Length).
        max_inflight_pixels: decoded pixels the admitted requests may hold together, counted from the image header
            before decoding; a request that would pass it gets 503.
        heavy_pixels: images larger than this are decoded and post-processed on a separate single thread (the one
            grouping runs on), so they never hold up small ones.
        body_timeout_s: longest wait for the next chunk of a request body (slow uploads get 408).
        header_timeout_s: longest time a connection may take to send its request line and headers.
        max_header_bytes: largest request head (request line plus headers).
        max_connections: concurrent connections; more are answered 503 by the HTTP server.
        api_keys: comma list; empty switches authentication off.
        cors_origins: comma list of allowed origins; empty switches CORS off.
        log_json: one JSON object per log line (else plain text); log_level: logging level name.
        drain_timeout_s: how long shutdown waits for admitted requests to finish; at least ``request_timeout_s``
            so that every admitted request can finish (or meet its deadline) before the process exits.
    """

    model_config = SettingsConfigDict(env_prefix="SALIENCY_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    bundle: str = "default"
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [ALL_MODELS])
    memory_budget_mib: int = Field(default=0, ge=0)
    variant: str = "auto"
    providers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_delay_ms: float = Field(default=5.0, ge=0.0, le=1000.0)
    queue_size: int = Field(default=64, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0.0)
    intra_op_threads: int = Field(default=0, ge=0)
    intra_op_spinning: bool = False
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_batch_images: int = Field(default=16, ge=1)
    max_map_side: int = Field(default=2048, ge=16)
    max_attention_side: int = Field(default=512, ge=16)
    max_inflight_requests: int = Field(default=64, ge=1)
    max_inflight_bytes: int = Field(default=192 * 1024 * 1024, ge=1024)
    max_inflight_pixels: int = Field(default=64_000_000, ge=1)
    heavy_pixels: int = Field(default=4_000_000, ge=1)
    body_timeout_s: float = Field(default=20.0, gt=0.0)
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_connections: int = Field(default=256, ge=1)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_json: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    drain_timeout_s: float = Field(default=35.0, ge=0.0)

    @field_validator("providers", "models", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> list[str]:
        return _comma_list(value)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        if value not in ("auto", "fp32", "fp16", "int8"):
            raise ValueError(f"unknown variant {value!r}: use auto, fp32, fp16 or int8")
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        names = [v.lower() for v in value] or ["auto"]
        if names == ["auto"]:
            return names
        unknown = [n for n in names if n not in PROVIDER_ALIASES]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}: use auto or a comma list of {sorted(PROVIDER_ALIASES)}")
        return names

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.queue_size < self.max_batch_size:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be at least max_batch_size ({self.max_batch_size}), "
                "or no full batch could ever form"
            )
        return self

    @model_validator(mode="after")
    def _limits_fit_together(self) -> Settings:
        if self.drain_timeout_s < self.request_timeout_s:
            raise ValueError(
                f"drain_timeout_s ({self.drain_timeout_s:g}) must be at least request_timeout_s "
                f"({self.request_timeout_s:g}), or shutdown would cut admitted requests off"
            )
        if self.max_inflight_pixels < self.max_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels}) must be at least max_pixels ({self.max_pixels}), "
                "or the largest accepted image could never be admitted"
            )
        if self.max_inflight_bytes < self.max_upload_bytes:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_upload_bytes "
                f"({self.max_upload_bytes}), or the largest accepted upload could never be admitted"
            )
        return self

    def engine_kwargs(self) -> dict[str, object]:
        """Keyword arguments of ``service.engine.Engine`` from these settings, all but the bundle."""
        return {
            "variant": self.variant,
            "providers": self.provider_preference(),
            "intra_op_threads": self.intra_op_threads,
            "spinning": self.intra_op_spinning,
        }

    def provider_preference(self) -> list[str]:
        """ONNX Runtime provider names to ask for, best first."""
        names = ["tensorrt", "cuda", "cpu"] if self.providers == ["auto"] else self.providers
        return [PROVIDER_ALIASES[n] for n in names]
