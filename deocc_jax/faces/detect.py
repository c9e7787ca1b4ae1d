"""Face detection + 478 landmarks with MediaPipe Tasks' FaceLandmarker.

One `FaceAnalyzer` wraps one landmarker; create it once per worker (it loads a
model and starts a thread pool) and close it when done, e.g.

    with FaceAnalyzer() as fa:
        faces = fa.detect(image_rgb)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deocc_jax import assets

NUM_LANDMARKS = 478


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
      landmarks: float32 [478, 2], (x, y) in image pixels.
      bbox: float32 [4], (x0, y0, x1, y1) of the landmarks in image pixels.
    """
    landmarks: np.ndarray
    bbox: np.ndarray

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return self.width * self.height


def _as_srgb(image_rgb: np.ndarray):
    import mediapipe as mp
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image_rgb))


def faces_from_result(result, width: int, height: int) -> list[Face]:
    """Converts a FaceLandmarkerResult (normalised coords) into pixel-space Faces."""
    faces = []
    for lms in result.face_landmarks:
        pts = np.array([(p.x * width, p.y * height) for p in lms], np.float32)
        bbox = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
        faces.append(Face(landmarks=pts, bbox=bbox))
    return faces


class FaceAnalyzer:
    """MediaPipe FaceLandmarker in IMAGE or VIDEO mode; a context manager.

    Args:
      mode: "image" (independent photos, `detect`) or "video" (frames with
        increasing timestamps, `detect_video`; tracks faces between frames).
      num_faces: the most faces returned per image.
      min_confidence: detection / presence / tracking threshold. Occluded faces
        score low, so the default (0.3) is below MediaPipe's 0.5.
      model_path: explicit face_landmarker.task; else `assets.resolve_model`.
    """

    def __init__(self, mode: str = "image", num_faces: int = 1, min_confidence: float = 0.3,
                 model_path: str | None = None):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        if mode not in ("image", "video"):
            raise ValueError(f"mode must be 'image' or 'video', got {mode!r}")
        self.mode = mode
        path = assets.resolve_model("face_landmarker.task", model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=base_options.BaseOptions(model_asset_path=path),
            running_mode=(vision.RunningMode.IMAGE if mode == "image" else vision.RunningMode.VIDEO),
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in one uint8 RGB image (IMAGE mode), in MediaPipe's order."""
        if self.mode != "image":
            raise RuntimeError("detect() needs mode='image'; use detect_video() in video mode")
        result = self._landmarker.detect(_as_srgb(image_rgb))
        return faces_from_result(result, image_rgb.shape[1], image_rgb.shape[0])

    def detect_video(self, image_rgb: np.ndarray, timestamp_ms: int) -> list[Face]:
        """Faces in one video frame; timestamps must increase between calls."""
        if self.mode != "video":
            raise RuntimeError("detect_video() needs mode='video'")
        result = self._landmarker.detect_for_video(_as_srgb(image_rgb), int(timestamp_ms))
        return faces_from_result(result, image_rgb.shape[1], image_rgb.shape[0])

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def largest_face(faces: list[Face]) -> Face | None:
    """The face with the largest landmark bounding box, or None."""
    return max(faces, key=lambda f: f.area) if faces else None
