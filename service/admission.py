"""Admission control: bound what admitted requests hold together (count, upload bytes, decoded pixels).

A request is admitted before its body is read (count and announced bytes) and again before its image is decoded
(pixels, read from the image header). What does not fit now is refused with 503 and ``Retry-After`` without any
work done; what could never fit (more than the whole budget) is refused with 413 naming the limit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from service.errors import ServiceError


@dataclass
class Usage:
    requests: int = 0
    bytes: int = 0
    pixels: int = 0


class Admission:
    """Counters with limits, shared by the event loop and worker threads.

    Args:
        max_requests: requests admitted at once.
        max_bytes: upload bytes they may hold together.
        max_pixels: decoded pixels they may hold together.
    """

    def __init__(self, max_requests: int, max_bytes: int, max_pixels: int) -> None:
        self.limits = Usage(max_requests, max_bytes, max_pixels)
        self.usage = Usage()
        self._lock = threading.Lock()

    def admit_request(self, body_bytes: int) -> None:
        """Admit one request announcing ``body_bytes``; pair with :meth:`release_request`.

        Raises:
            ServiceError: 413 if the body could never fit the byte budget, 503 if the budget is full now.
        """
        if body_bytes > self.limits.bytes:
            raise ServiceError(
                413, "upload_too_large", f"a body of {body_bytes} bytes exceeds the {self.limits.bytes}-byte budget "
                "of all requests in flight (SALIENCY_MAX_INFLIGHT_BYTES)",
            )  # fmt: skip
        with self._lock:
            if self.usage.requests >= self.limits.requests:
                raise _busy(f"{self.usage.requests} requests in flight (SALIENCY_MAX_INFLIGHT_REQUESTS)")
            if self.usage.bytes + body_bytes > self.limits.bytes:
                raise _busy(f"{self.usage.bytes} upload bytes in flight (SALIENCY_MAX_INFLIGHT_BYTES)")
            self.usage.requests += 1
            self.usage.bytes += body_bytes

    def release_request(self, body_bytes: int) -> None:
        with self._lock:
            self.usage.requests -= 1
            self.usage.bytes -= body_bytes

    def admit_pixels(self, pixels: int) -> None:
        """Reserve ``pixels`` decoded pixels before decoding; pair with :meth:`release_pixels`.

        Raises:
            ServiceError: 503 if the pixel budget is full now (``pixels`` alone always fits: the per-image limit
                is at most the budget).
        """
        with self._lock:
            if self.usage.pixels + pixels > self.limits.pixels:
                raise _busy(f"{self.usage.pixels} decoded pixels in flight (SALIENCY_MAX_INFLIGHT_PIXELS)")
            self.usage.pixels += pixels

    def release_pixels(self, pixels: int) -> None:
        with self._lock:
            self.usage.pixels -= pixels


def _busy(what: str) -> ServiceError:
    return ServiceError(503, "overloaded", f"the server is at capacity ({what}); retry shortly", {"Retry-After": "1"})
