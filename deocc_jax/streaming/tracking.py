"""Face landmarks in every frame of a stream without a full search on every frame.

Two ways, both followed by optional one-euro smoothing:

* "mediapipe": MediaPipe's FaceLandmarker in VIDEO mode on every frame. It
  already tracks: the face detector runs only when no face is tracked, and the
  478-point landmark model refines the previous frame's face region.
* "flow": the landmarker on every `detect_every`-th frame (a keyframe); in
  between, each face is followed with pyramidal Lucas-Kanade optical flow on a
  subset of its landmarks (forward-backward checked) and moved as a rigid
  similarity fitted to the points that track well. A face whose points stop
  tracking forces a keyframe on the next frame.

`streaming.flicker.measure_tracking` compares them (time per frame, error and
jitter against known landmark motion). Measured on the embedded portraits
panned at 640x480 (2-core CPU shared with other jobs): "mediapipe" 18.6 ms per
frame, jitter 0.97 px; "flow" with a keyframe every 5 frames 7.9 ms per frame
(3.2 ms between keyframes), jitter 0.26 px, the same error against the truth
(4.9 vs 5.0 px). Flow is the default: cheaper and steadier. Its limit: between
keyframes a face moves as a rigid similarity, so expressions and head turns
reach the landmarks at the next keyframe (5 frames = 0.2 s at 25 fps).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from deocc_jax.faces import align
from deocc_jax.faces.detect import FaceAnalyzer
from deocc_jax.io import timing
from deocc_jax.restoration import smoothing
from deocc_jax.restoration.smoothing import DEFAULT_BETA, DEFAULT_MIN_CUTOFF

METHODS = ("mediapipe", "flow")
# Landmarks followed by optical flow: every 4th of the 478 points covers the
# whole face (oval, eyes, nose, mouth) evenly at a quarter of the cost.
FLOW_POINTS = np.arange(0, 468, 4)
# Lucas-Kanade window and pyramid depth; forward-backward error allowed (px).
LK_PARAMS = dict(winSize=(21, 21), maxLevel=3,
                 criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
MAX_FB_ERROR_PX = 1.0
# A face keeps being tracked only while this fraction of its points pass the check.
MIN_GOOD_FRACTION = 0.5


@dataclasses.dataclass
class TrackerOptions:
    """How faces are followed.

    Attributes:
      method: "mediapipe" or "flow" (see the module docstring).
      detect_every: "flow" only: run the landmarker every n-th frame.
      max_faces: the most faces tracked.
      min_confidence: MediaPipe detection / tracking threshold.
      landmarker_model: explicit face_landmarker.task path.
      smoothing: one-euro smoothing of the landmarks.
      min_cutoff, beta: one-euro parameters (Hz, face sizes per second).
    """
    method: str = "flow"
    detect_every: int = 5
    max_faces: int = 4
    min_confidence: float = 0.3
    landmarker_model: str | None = None
    smoothing: bool = True
    min_cutoff: float = DEFAULT_MIN_CUTOFF
    beta: float = DEFAULT_BETA


class LandmarkTracker:
    """[478, 2] pixel landmarks of each face, frame after frame; a context manager.

    Frames must come with increasing times (a stream may skip frames).

    Args:
      options: a TrackerOptions.
    """

    def __init__(self, options: TrackerOptions | None = None):
        self.options = options = options or TrackerOptions()
        if options.method not in METHODS:
            raise ValueError(f"tracking method must be one of {METHODS}, got {options.method!r}")
        if options.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {options.detect_every}")
        self._analyzer = FaceAnalyzer(mode="video", num_faces=options.max_faces,
                                      min_confidence=options.min_confidence,
                                      model_path=options.landmarker_model)
        self._smoother = (smoothing.LandmarkSmoother(options.min_cutoff, options.beta)
                          if options.smoothing else None)
        self._to_ms = timing.MonotonicMs()
        self._since_detect = 0
        self._force_detect = True
        self._prev_gray: np.ndarray | None = None
        self._faces: list[np.ndarray] = []
        self.keyframes = 0
        self.frames = 0

    def __call__(self, rgb: np.ndarray, time_s: float) -> list[np.ndarray]:
        """Landmarks of every face in `rgb` (uint8 [H, W, 3]) taken at `time_s` seconds."""
        self.frames += 1
        ms = self._to_ms(time_s)
        if self.options.method == "mediapipe":
            faces = [f.landmarks for f in self._analyzer.detect_video(rgb, ms)]
            self.keyframes += 1
        else:
            faces = self._flow_step(rgb, ms)
        if self._smoother is not None:
            faces = self._smoother(faces, time_s)
        return faces

    def _flow_step(self, rgb: np.ndarray, ms: int) -> list[np.ndarray]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        due = self._force_detect or self._since_detect + 1 >= self.options.detect_every
        if not due:
            tracked = [self._follow(self._prev_gray, gray, lm) for lm in self._faces]
            if all(t is not None for t in tracked):
                self._faces = tracked
                self._since_detect += 1
                self._prev_gray = gray
                return [f.copy() for f in self._faces]
        self._faces = [f.landmarks for f in self._analyzer.detect_video(rgb, ms)]
        self.keyframes += 1
        self._since_detect = 0
        # With no face found, look again on the next frame rather than in k frames.
        self._force_detect = not self._faces
        self._prev_gray = gray
        return [f.copy() for f in self._faces]

    @staticmethod
    def _follow(prev: np.ndarray, cur: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """The landmarks moved by the similarity that flow finds, or None if tracking failed."""
        p0 = landmarks[FLOW_POINTS].astype(np.float32).reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **LK_PARAMS)
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **LK_PARAMS)
        fb = np.linalg.norm((p0 - p0b).reshape(-1, 2), axis=1)
        good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < MAX_FB_ERROR_PX)
        if good.mean() < MIN_GOOD_FRACTION:
            return None
        # A rigid (similarity) motion of the whole face: one estimate from ~60
        # points is steadier than moving each landmark by its own flow vector.
        M = align.umeyama_similarity(p0.reshape(-1, 2)[good], p1.reshape(-1, 2)[good])
        return align.transform_landmarks(landmarks, M)

    def close(self) -> None:
        """Releases the landmarker."""
        self._analyzer.close()

    def __enter__(self) -> "LandmarkTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
