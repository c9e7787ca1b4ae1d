"""One request's photo through infer's pipeline, with the model call shared between requests.

    decode (infer_lib.decode_photo: the prep decoder, pixel limit, alpha kept)
    -> faces (MediaPipe, one FaceAnalyzer per worker thread)
    -> frames.restore_frame: align, model (through the MicroBatcher), blend
    -> PNG (infer_lib.encode_image: stored, or with --compress_png the bytes `infer` writes)

A photo alone in its model call comes out with the pixels `python -m
deocc_jax.infer` writes (with --compress_png, byte for byte its file); when
crops of several photos share a call, XLA's batched convolutions may round a
pixel differently (at most one grey level).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from deocc_jax.restoration import infer_lib
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.artifacts.predictors import Predictor
from deocc_jax.restoration import frames
from deocc_jax.serving.batcher import Expected, MicroBatcher
from deocc_jax.serving.config import ServeConfig


class Cancelled(Exception):
    """The request gave up (its deadline passed) before this stage."""


@dataclasses.dataclass
class PhotoResult:
    """Attributes: faces found; image: the response's image bytes and their content type;
    mask_png: the predicted occlusion mask as a PNG (only when asked for)."""
    faces: int
    image: bytes
    content_type: str
    mask_png: bytes | None = None


class _BatchedModel:
    """A Predictor whose calls go through the MicroBatcher (what `frames.run_model` calls)."""

    def __init__(self, model: Predictor, expected: Expected, owner: object,
                 cancelled: threading.Event, timeout_s: float):
        self.resolution = model.resolution
        self.guided = False
        self.description = model.description
        self._expected, self._owner = expected, owner
        self._cancelled, self._timeout_s = cancelled, timeout_s

    def __call__(self, images_: np.ndarray, masks=None) -> dict[str, np.ndarray]:
        if self._cancelled.is_set():
            raise Cancelled()
        futures = self._expected.submit(images_, self._owner)
        try:
            parts = [f.result(self._timeout_s) for f in futures]
        finally:
            for f in futures:
                f.cancel()  # no-op once done; drops chunks not yet run when we give up
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class PhotoService:
    """The model, its batcher and one face finder per worker thread.

    Args:
      model: a blind Predictor (guided models need a mask no request carries).
      config: limits and batching.
      on_batch, on_queue: see `MicroBatcher`.
    """

    def __init__(self, model: Predictor, config: ServeConfig, on_batch=lambda s: None,
                 on_queue=lambda n: None):
        frames.check_model(model, None)
        self.model = model
        self.config = config
        self.batcher = MicroBatcher(model, config.max_batch, config.max_wait_ms / 1000.0,
                                    on_batch=on_batch, on_queue=on_queue)
        self._local = threading.local()
        self._analyzers: list[FaceAnalyzer] = []
        self._lock = threading.Lock()

    def _analyzer(self) -> FaceAnalyzer:
        analyzer = getattr(self._local, "analyzer", None)
        if analyzer is None:
            analyzer = FaceAnalyzer(mode="image", num_faces=self.config.max_faces,
                                    min_confidence=self.config.min_confidence,
                                    min_face_px=self.config.min_face_px,
                                    model_path=self.config.landmarker_model)
            self._local.analyzer = analyzer
            with self._lock:
                self._analyzers.append(analyzer)
        return analyzer

    def warm_up(self) -> None:
        """Compiles the model for every batch size it will see (powers of two up to
        max_batch: `predictors` pads to them) and starts this thread's face finder."""
        r = self.model.resolution
        n = 1
        while True:
            self.model(np.zeros((n, r, r, 3), np.uint8))
            if n >= self.config.max_batch:
                break
            n *= 2
        self._analyzer().detect(np.zeros((64, 64, 3), np.uint8))

    def restore(self, data: bytes, content_type: str, *, want_mask: bool = False,
                owner: object = None, cancelled: threading.Event | None = None) -> PhotoResult:
        """De-occludes one encoded photo (runs in a worker thread; blocks on the model).

        Args:
          data: the encoded photo (JPEG, PNG, WebP...).
          content_type: the request's type, returned with an unchanged photo.
          want_mask: also return the predicted mask as a PNG.
          owner: identifies the request to the batcher (batch statistics).
          cancelled: set when the request gives up; checked between stages.

        Raises:
          deocc_jax.io.images.DecodeError: not an image, truncated, or over the pixel limit.
          Cancelled: `cancelled` was set.
        """
        cancelled = cancelled or threading.Event()
        compress = self.config.compress_png
        # Announced before decoding: crops already queued wait for this request's
        # (at most max_wait_ms) instead of each running alone.
        with self.batcher.expect() as expected:
            image, alpha = infer_lib.decode_photo(data, self.config.max_pixels, name="request body")
            if cancelled.is_set():
                raise Cancelled()
            faces = self._analyzer().detect(image)
            if not faces:
                # As infer does: a photo without a face goes back untouched, bytes and all.
                mask = infer_lib.encode_image(np.zeros(image.shape[:2], np.uint8),
                                              compress=compress) if want_mask else None
                return PhotoResult(0, data, content_type, mask)
            model = _BatchedModel(self.model, expected, owner, cancelled, self.config.timeout_s)
            result = frames.restore_frame(image, [f.landmarks for f in faces], model)
        if cancelled.is_set():
            raise Cancelled()
        png = infer_lib.encode_image(result.image, alpha, ".png", compress=compress)
        mask = infer_lib.encode_image(result.mask_image(), None, ".png",
                                      compress=compress) if want_mask else None
        return PhotoResult(len(faces), png, "image/png", mask)

    def close(self) -> None:
        self.batcher.close()
        with self._lock:
            for a in self._analyzers:
                a.close()
            self._analyzers.clear()
