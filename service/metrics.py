"""Prometheus metrics of one app instance (names are a contract with deploy/'s dashboards and alerts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Inference on 2 CPU cores takes milliseconds; these buckets resolve 1 ms to 5 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
STAGES = ("decode", "preprocess", "postprocess", "encode")


class ServiceMetrics:
    """Every metric the service exports, in a registry of its own so several apps can live in one process.

    Args:
        registry: where to register; a fresh one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "saliency_requests_total", "HTTP requests by route, method, status, protocol and model (empty: none)",
            ["route", "method", "status", "protocol", "model"],
            registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "saliency_request_latency_seconds", "End-to-end HTTP latency (groups: whether outputs asked for groups)",
            ["route", "protocol", "groups"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "saliency_queue_wait_seconds", "Time an image waited for its batch to start", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "saliency_inference_seconds", "ONNX Runtime time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "saliency_batch_size", "Images per batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("saliency_queue_depth", "Images waiting for inference", ["model"], registry=r)
        self.inflight = Gauge("saliency_inflight_requests", "HTTP requests being served", registry=r)
        self.errors = Counter("saliency_errors_total", "Error responses by error code", ["code"], registry=r)
        self.stage_seconds = Histogram(
            "saliency_stage_seconds", "Per-image time in each CPU stage", ["model", "stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "saliency_model_info", "Each served model (value 1)", ["name", "version", "variant", "provider"], registry=r
        )

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
