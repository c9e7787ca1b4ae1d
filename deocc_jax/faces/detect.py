"""Face detection + 478 landmarks with MediaPipe Tasks' FaceLandmarker.

One `FaceAnalyzer` wraps one landmarker; create it once per worker (it loads a
model and starts a thread pool) and close it when done, e.g.

    with FaceAnalyzer() as fa:
        faces = fa.detect(image_rgb)

`FaceAnalyzer(blendshapes=True)` also returns MediaPipe's 52 ARKit-style
blendshape scores per face (`Face.blendshapes`, ordered as `BLENDSHAPE_NAMES`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deocc_jax import assets

NUM_LANDMARKS = 478
# MediaPipe's blendshape categories in index order (face_landmarker.task v1).
# "_neutral" is a placeholder that the model scores 0; the other 51 are expressions.
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
NUM_BLENDSHAPES = len(BLENDSHAPE_NAMES)  # 52


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face.

    Attributes:
      landmarks: float32 [478, 2], (x, y) in image pixels.
      bbox: float32 [4], (x0, y0, x1, y1) of the landmarks in image pixels.
      blendshapes: float32 [52] scores in [0, 1] ordered as `BLENDSHAPE_NAMES`,
        or None when the analyzer was made without `blendshapes=True`.
    """
    landmarks: np.ndarray
    bbox: np.ndarray
    blendshapes: np.ndarray | None = None

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
    import mediapipe as mp  # MediaPipe loads models and threads: only where faces are found
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image_rgb))


def _blendshape_scores(categories) -> np.ndarray:
    """float32 [52] from one face's blendshape Category list, placed by category index."""
    scores = np.zeros(NUM_BLENDSHAPES, np.float32)
    for c in categories:
        # A model whose categories differ from ours would silently mean other expressions.
        if c.index >= NUM_BLENDSHAPES or c.category_name != BLENDSHAPE_NAMES[c.index]:
            raise ValueError(f"unexpected blendshape category {c.index} {c.category_name!r} "
                             f"(expected MediaPipe's {NUM_BLENDSHAPES} ARKit blendshapes)")
        scores[c.index] = c.score
    return scores


def faces_from_result(result, width: int, height: int) -> list[Face]:
    """Converts a FaceLandmarkerResult (normalised coords) into pixel-space Faces.

    Blendshapes are attached when the result has them (one list per face).
    """
    faces = []
    shapes = getattr(result, "face_blendshapes", None) or []
    for i, lms in enumerate(result.face_landmarks):
        pts = np.array([(p.x * width, p.y * height) for p in lms], np.float32)
        bbox = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
        bs = _blendshape_scores(shapes[i]) if i < len(shapes) else None
        faces.append(Face(landmarks=pts, bbox=bbox, blendshapes=bs))
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
      blendshapes: also compute the 52 blendshape scores of each face
        (`Face.blendshapes`); off by default since few callers need them.
    """

    def __init__(self, mode: str = "image", num_faces: int = 1, min_confidence: float = 0.3,
                 model_path: str | None = None, blendshapes: bool = False):
        # MediaPipe loads models and threads: only where faces are found.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        if mode not in ("image", "video"):
            raise ValueError(f"mode must be 'image' or 'video', got {mode!r}")
        self.mode = mode
        self.blendshapes = bool(blendshapes)
        path = assets.resolve_model("face_landmarker.task", model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=base_options.BaseOptions(model_asset_path=path),
            running_mode=(vision.RunningMode.IMAGE if mode == "image" else vision.RunningMode.VIDEO),
            num_faces=num_faces,
            output_face_blendshapes=bool(blendshapes),
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
