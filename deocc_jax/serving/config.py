"""The service's settings (the `deocc_jax.serve` flags), checked in one place."""

from __future__ import annotations

import dataclasses

from deocc_jax import errors
from deocc_jax.faces.cascade import DEFAULT_MIN_FACE_PX


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of the HTTP service.

    Attributes:
      max_batch: the most face crops per model call.
      max_wait_ms: how long the first crop may wait for crops of requests still on their
        way (decoding, finding faces) before the model runs; it never waits for none. About
        as long as face finding (~100 ms a photo on a CPU): shorter waits break batches up.
      max_body_mb: the largest request body (MiB); more -> 413 before decoding.
      max_pixels: the largest decoded photo (pixels, judged from the header); more -> 413.
      max_queue: de-occlusion requests admitted at once (in any stage); more -> 503.
      timeout_s: per-request deadline (body, decoding, faces, model, encoding); over -> 504.
      workers: threads that decode, find faces, blend and encode (one MediaPipe each).
      max_faces: the most faces restored per photo.
      min_confidence: MediaPipe's detection threshold.
      min_face_px: the smallest face restored (box side, pixels), as infer's flag.
      landmarker_model: explicit face_landmarker.task path (else DEOCC_ASSETS_DIR, cache).
      compress_png: compress the response PNG as `infer` does (its bytes, about 2.3x smaller);
        else stored uncompressed (the same pixels, about 8x faster to encode).
    """
    max_batch: int = 8
    max_wait_ms: float = 100.0
    max_body_mb: float = 20.0
    max_pixels: int = 16_000_000
    max_queue: int = 64
    timeout_s: float = 30.0
    workers: int = 4
    max_faces: int = 8
    min_confidence: float = 0.3
    min_face_px: float = DEFAULT_MIN_FACE_PX
    landmarker_model: str | None = None
    compress_png: bool = False

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def validate(self) -> "ServeConfig":
        """Returns self; raises errors.InvalidInputError naming the flag otherwise."""
        positive = {"max_batch": self.max_batch, "max_body_mb": self.max_body_mb,
                    "max_pixels": self.max_pixels, "max_queue": self.max_queue,
                    "timeout_s": self.timeout_s, "workers": self.workers,
                    "max_faces": self.max_faces}
        for name, value in positive.items():
            if not value > 0:
                raise errors.InvalidInputError(f"--{name}: must be positive, got {value}")
        if self.max_wait_ms < 0:
            raise errors.InvalidInputError(f"--max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        return self
