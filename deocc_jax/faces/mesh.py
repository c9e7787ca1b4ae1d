"""MediaPipe's 478-point face landmark model on a region of interest that we choose.

The Tasks FaceLandmarker only looks where its own short-range detector points
it. To landmark faces that another detector found (`faces.blazeface`), this
module runs the same landmark model (`face_landmarks_detector.tflite`, read from
inside `face_landmarker.task`) with LiteRT on an upright square crop, as
MediaPipe's graph does:

- the region: centred on the detection box, rotated so that the eyes are
  level, side 1.5 x the box's longer side (MediaPipe's `square_long`, scale 1.5);
- the crop: 256 x 256 RGB in [0, 1], zero outside the photo; small faces are
  simply upscaled to it, large ones area-averaged first;
- outputs: 478 (x, y, z) in crop pixels and a face-presence logit.

A second pass re-centres the region on the first pass's landmarks (their box,
rotated by the eye corners 33 -> 263), as MediaPipe's tracking does between
video frames: detector boxes of covered faces are loose, landmark boxes are not.
"""

from __future__ import annotations

import dataclasses
import zipfile

import cv2
import numpy as np

from deocc_jax.io import assets
from deocc_jax.faces import align

INPUT_SIZE = 256
NUM_LANDMARKS = 478
ROI_SCALE = 1.5
LANDMARK_MODEL = "face_landmarks_detector.tflite"  # member of face_landmarker.task
BLENDSHAPE_MODEL = "face_blendshapes.tflite"
# The 146 landmarks the blendshape model reads (MediaPipe's face_blendshapes_graph.cc,
# kLandmarksSubsetIdxs), as (x, y) in image pixels.
BLENDSHAPE_SUBSET = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136,
    144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172,
    173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283,
    284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324,
    332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382, 384, 385,
    386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477)
# Outer corners of the subject's right and left eye: the landmarks' rotation vector.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263


@dataclasses.dataclass(frozen=True)
class Roi:
    """A square region of a photo, in continuous pixel coordinates (pixel centres at i + 0.5).

    Attributes:
      centre: (x, y).
      side: the square's side in pixels.
      angle: the rotation of the face in the photo, radians: the angle of the
        right-eye -> left-eye vector in image coordinates (y down). The crop
        turns it back to 0.
    """
    centre: tuple[float, float]
    side: float
    angle: float

    def matrix(self, size: int = INPUT_SIZE) -> np.ndarray:
        """2x3 similarity mapping continuous photo coordinates to continuous crop coordinates."""
        s = size / self.side
        c, n = np.cos(-self.angle) * s, np.sin(-self.angle) * s
        cx, cy = self.centre
        rot = np.array([[c, -n], [n, c]])
        t = np.array([size / 2.0, size / 2.0]) - rot @ np.array([cx, cy])
        return np.concatenate([rot, t[:, None]], axis=1)


def roi_from_points(box: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray,
                    scale: float = ROI_SCALE) -> Roi:
    """MediaPipe's region from a face box (x0, y0, x1, y1) and two eye points."""
    box = np.asarray(box, np.float64)
    d = np.asarray(left_eye, np.float64) - np.asarray(right_eye, np.float64)
    return Roi(centre=(float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2)),
               side=float(max(box[2] - box[0], box[3] - box[1]) * scale),
               angle=float(np.arctan2(d[1], d[0])))


def roi_from_landmarks(landmarks: np.ndarray, scale: float = ROI_SCALE) -> Roi:
    """The region MediaPipe tracks a face with from its previous 478 landmarks."""
    pts = np.asarray(landmarks, np.float64)
    box = np.concatenate([pts.min(0), pts.max(0)])
    return roi_from_points(box, pts[RIGHT_EYE_OUTER], pts[LEFT_EYE_OUTER], scale)


def centre_convention(M: np.ndarray) -> np.ndarray:
    """The same map for OpenCV, whose pixel centres sit at integers: x' = M(x + .5) - .5."""
    M = np.asarray(M, np.float64).copy()
    M[:, 2] += M[:, :2].sum(1) * 0.5 - 0.5
    return M


@dataclasses.dataclass(frozen=True)
class MeshResult:
    """The landmark model's answer for one region.

    Attributes:
      landmarks: float32 [478, 2], (x, y) in photo pixels (continuous, as the
        Tasks landmarker reports them).
      presence: face-presence score in [0, 1].
      roi: the region the model saw.
    """
    landmarks: np.ndarray
    presence: float
    roi: Roi


def read_task_member(task_path: str, member: str) -> bytes:
    """The bytes of one model inside a MediaPipe .task bundle (a zip)."""
    with zipfile.ZipFile(task_path) as z:
        return z.read(member)


class FaceMesh:
    """The landmark model of `face_landmarker.task` on regions we choose.

    Args:
      landmarker_model: explicit face_landmarker.task; else `assets.resolve_model`.
      num_threads: interpreter threads (None: LiteRT's default).
      blendshapes: also load the blendshape model (`blendshapes`).
    """

    def __init__(self, landmarker_model: str | None = None, num_threads: int | None = None,
                 blendshapes: bool = False):
        from ai_edge_litert import interpreter as litert  # LiteRT only where it is used

        path = assets.resolve_model("face_landmarker.task", landmarker_model)
        self._interpreter = litert.Interpreter(model_content=read_task_member(path, LANDMARK_MODEL),
                                               num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._shapes = None
        if blendshapes:
            self._shapes = litert.Interpreter(
                model_content=read_task_member(path, BLENDSHAPE_MODEL), num_threads=num_threads)
            self._shapes.allocate_tensors()
        self._landmarks = self._presence = None
        for d in self._interpreter.get_output_details():
            size = int(np.prod(d["shape"]))
            if size == NUM_LANDMARKS * 3:
                self._landmarks = d["index"]
            elif tuple(d["shape"]) == (1, 1, 1, 1):
                self._presence = d["index"]
        if self._landmarks is None or self._presence is None:
            raise ValueError(f"{path}: {LANDMARK_MODEL} lacks the 1434-value landmark output "
                             "or the [1,1,1,1] presence output")

    def crop(self, image_rgb: np.ndarray, roi: Roi) -> np.ndarray:
        """The model's uint8 [256, 256, 3] input for `roi` (zero outside the photo)."""
        return align.warp_to_crop(image_rgb, centre_convention(roi.matrix()), INPUT_SIZE,
                                  border_mode=cv2.BORDER_CONSTANT)

    def run(self, image_rgb: np.ndarray, roi: Roi) -> MeshResult:
        """The 478 landmarks and presence score of the face in `roi`."""
        x = self.crop(image_rgb, roi).astype(np.float32) / 255.0
        self._interpreter.set_tensor(self._input, x[None])
        self._interpreter.invoke()
        pts = self._interpreter.get_tensor(self._landmarks).reshape(NUM_LANDMARKS, 3)[:, :2]
        logit = float(self._interpreter.get_tensor(self._presence).reshape(()))
        presence = float(1.0 / (1.0 + np.exp(-np.clip(logit, -100, 100))))
        inv = align.inverse_matrix(roi.matrix())
        return MeshResult(align.transform_landmarks(pts, inv), presence, roi)

    def refine(self, image_rgb: np.ndarray, roi: Roi, passes: int = 2) -> MeshResult:
        """`run` on `roi`, then again on the region of the landmarks found (`passes` in all)."""
        result = self.run(image_rgb, roi)
        for _ in range(passes - 1):
            result = self.run(image_rgb, roi_from_landmarks(result.landmarks))
        return result

    def blendshapes(self, landmarks: np.ndarray) -> np.ndarray:
        """float32 [52] blendshape scores of a face's [478, 2] pixel landmarks."""
        if self._shapes is None:
            raise RuntimeError("FaceMesh was made without blendshapes=True")
        pts = np.asarray(landmarks, np.float32)[list(BLENDSHAPE_SUBSET)][None]
        self._shapes.set_tensor(self._shapes.get_input_details()[0]["index"], pts)
        self._shapes.invoke()
        return self._shapes.get_tensor(self._shapes.get_output_details()[0]["index"]).reshape(-1)

    def close(self) -> None:
        self._interpreter = self._shapes = None
