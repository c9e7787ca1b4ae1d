"""MediaPipe's full-range BlazeFace: faces of any size, also masked ones, with 6 keypoints.

The face landmarker's own detector is the short-range BlazeFace (128 px input,
faces that fill much of the frame, trained on faces whose mouth and nose show).
The full-range model (`face_detection_full_range.tflite`, a legacy MediaPipe
Solutions graph model without Tasks metadata) sees a 192 px letterboxed frame
and finds small, distant and covered faces. Its outputs are decoded here as
MediaPipe's graph does (`face_detection_full_range.pbtxt`):

- one SSD layer of stride 4: a 48 x 48 grid, one anchor per cell, centred at
  ((x + 0.5) / 48, (y + 0.5) / 48), fixed anchor size 1;
- regressors [2304, 16]: box centre = anchor + r[0:2] / 192, size = r[2:4] /
  192, then six keypoints (right eye, left eye, nose tip, mouth, right and
  left ear tragion), each anchor + r[4 + 2k : 6 + 2k] / 192;
- score = sigmoid(logit), logits clipped to +-100;
- weighted non-maximum suppression (IoU 0.3): overlapping detections are
  averaged, weighted by score, and keep the best one's score.

"Right eye" is the subject's right eye: on the image's left in a frontal face.

The model finds faces down to about `MIN_INPUT_FACE_PX` pixels of its input
(measured: faces/ photos shrunk and pasted into a 192 px scene were found 26 of
30 times at 10 px, 28 at 12, all from 20). A photo in which the smallest face
wanted (`min_face_px`) would shrink below that in one letterboxed pass is also
searched in overlapping tiles, at as many tile sizes (4x apart) as it takes to
cover every face size between `min_face_px` and what the whole-photo pass sees.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import cv2
import numpy as np

from deocc_jax.io import assets

MODEL_NAME = "face_detection_full_range.tflite"
INPUT_SIZE = 192
GRID = 48                  # 192 / stride 4
NUM_ANCHORS = GRID * GRID  # 2304
NUM_KEYPOINTS = 6
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH, RIGHT_EAR, LEFT_EAR = 0, 1, 2, 3, 4, 5
SCORE_CLIP = 100.0
NMS_IOU = 0.3
# Google's graph keeps scores >= 0.6. Covered faces score lower (on real masked
# photos the landmarker missed, 29 of 49 were found at 0.5, 41 at 0.35); the
# landmark check that follows (`faces.cascade`) is what rejects non-faces, so
# the detector may be generous.
DEFAULT_MIN_SCORE = 0.3
MIN_INPUT_FACE_PX = 12
TILE_OVERLAP = 0.25


@dataclasses.dataclass(frozen=True)
class Detection:
    """One full-range BlazeFace detection in image pixels.

    Attributes:
      box: float32 [4], (x0, y0, x1, y1).
      keypoints: float32 [6, 2], (x, y) in `KEYPOINT_NAMES` order.
      score: detection score in [0, 1].
    """
    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """The box's longer side, in pixels: the face size `min_face_px` compares with."""
        return max(self.width, self.height)


def anchors() -> np.ndarray:
    """float32 [2304, 2] anchor centres (x, y) in [0, 1], row-major over the 48 x 48 grid."""
    c = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    ys, xs = np.meshgrid(c, c, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def sigmoid_scores(logits: np.ndarray) -> np.ndarray:
    """Scores from raw logits, clipped as MediaPipe does (score_clipping_thresh 100)."""
    x = np.clip(np.asarray(logits, np.float64).reshape(-1), -SCORE_CLIP, SCORE_CLIP)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def decode_boxes(regressors: np.ndarray, anchor_xy: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and keypoints of every anchor, in the model input's [0, 1] coordinates.

    Args:
      regressors: float [2304, 16] (a leading batch of 1 is dropped).
      anchor_xy: [2304, 2] anchor centres; default `anchors()`.

    Returns:
      boxes float32 [N, 4] (x0, y0, x1, y1) and keypoints float32 [N, 6, 2].
    """
    r = np.asarray(regressors, np.float32).reshape(-1, 4 + 2 * NUM_KEYPOINTS)
    a = anchors() if anchor_xy is None else np.asarray(anchor_xy, np.float32)
    centre = a + r[:, 0:2] / INPUT_SIZE
    half = r[:, 2:4] / INPUT_SIZE / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = a[:, None, :] + r[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / INPUT_SIZE
    return boxes.astype(np.float32), keypoints.astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box with each of `boxes` [N, 4]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(np.asarray(box, np.float64)) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression.

    Best first: every remaining detection overlapping the best one by more than
    `iou_threshold` (the best one included) is merged into one, boxes and
    keypoints averaged with the scores as weights; the merged detection keeps
    the best score.

    Returns:
      [(box [4], keypoints [6, 2], score)], best first.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    remaining = list(order)
    out = []
    while remaining:
        best = remaining[0]
        ious = box_iou(boxes[best], boxes[remaining])
        group = [i for i, iou in zip(remaining, ious) if iou > iou_threshold or i == best]
        w = np.asarray(scores, np.float64)[group]
        w = w / w.sum()
        box = (np.asarray(boxes, np.float64)[group] * w[:, None]).sum(0)
        kps = (np.asarray(keypoints, np.float64)[group] * w[:, None, None]).sum(0)
        out.append((box.astype(np.float32), kps.astype(np.float32), float(scores[best])))
        taken = set(group)
        remaining = [i for i in remaining if i not in taken]
    return out


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the model's square input: input = image * scale + pad."""
    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Input-relative [0, 1] coordinates (..., 2) to image pixels."""
        return ((np.asarray(xy, np.float64) * INPUT_SIZE - [self.pad_x, self.pad_y])
                / self.scale).astype(np.float32)


def letterbox(image_rgb: np.ndarray, size: int = INPUT_SIZE, shrink: float = 1.0
              ) -> tuple[np.ndarray, Letterbox]:
    """The image scaled to fit `size`^2 keeping its aspect, centred on black; float32 in [-1, 1].

    Args:
      image_rgb: uint8 [H, W, 3].
      size: the model's input side.
      shrink: the image's longer side is `size / shrink` (> 1: a margin of black
        around it, so that a face filling the image is small enough to detect).

    Returns:
      float32 [size, size, 3] and the Letterbox that maps model coordinates back.
    """
    h, w = image_rgb.shape[:2]
    scale = size / shrink / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image_rgb, (nw, nh), interpolation=interp)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)  # black: MediaPipe's zero-border letterbox
    canvas[py:py + nh, px:px + nw] = small
    x = canvas.astype(np.float32) / 127.5 - 1.0
    return x, Letterbox(scale=nw / w, pad_x=float(px), pad_y=float(py))


def tiles(width: int, height: int, tile_side: int, overlap: float = TILE_OVERLAP
          ) -> list[tuple[int, int, int, int]]:
    """Overlapping square-ish windows (x0, y0, x1, y1) covering a width x height image.

    Neighbouring tiles overlap by `overlap` of a tile, so a face up to that
    size lies wholly inside at least one tile.
    """
    def starts(n: int) -> list[int]:
        if n <= tile_side:
            return [0]
        step = tile_side * (1.0 - overlap)
        k = int(np.ceil((n - tile_side) / step)) + 1
        return [round(i * (n - tile_side) / (k - 1)) for i in range(k)]
    return [(x, y, min(x + tile_side, width), min(y + tile_side, height))
            for y in starts(height) for x in starts(width)]


def tile_sides(width: int, height: int, min_face_px: float) -> list[int]:
    """Tile sizes, smallest first, so that every face of at least `min_face_px` is seen.

    A tile of side T shows a face at MIN_INPUT_FACE_PX when the face is
    T * MIN_INPUT_FACE_PX / 192 wide, and holds whole every face up to
    TILE_OVERLAP * T; so sizes grow 4x (= 1 / TILE_OVERLAP) until the
    whole-photo pass takes over. Empty when that pass alone suffices.
    """
    longest = max(width, height)
    if min_face_px <= 0:
        return []
    side = max(INPUT_SIZE, int(np.ceil(min_face_px * INPUT_SIZE / MIN_INPUT_FACE_PX)))
    sides = []
    while side < longest:
        sides.append(side)
        side = int(side / TILE_OVERLAP)
    return sides


class Candidates(NamedTuple):
    """Detections of one pass before NMS, in image pixels: boxes [N, 4], keypoints [N, 6, 2], scores [N]."""
    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray


def merge(parts: list[Candidates]) -> list[Detection]:
    """The detections of several passes (whole image, tiles), merged by weighted NMS, best first."""
    boxes = np.concatenate([p.boxes for p in parts]).reshape(-1, 4)
    kps = np.concatenate([p.keypoints for p in parts]).reshape(-1, NUM_KEYPOINTS, 2)
    scores = np.concatenate([p.scores for p in parts])
    return [Detection(box=b, keypoints=k, score=s) for b, k, s in weighted_nms(boxes, kps, scores)]


class FullRangeDetector:
    """The full-range BlazeFace in LiteRT's interpreter.

    Args:
      model_path: explicit face_detection_full_range.tflite; else
        `assets.resolve_model`.
      min_score: detections scoring below this are dropped before NMS.
      min_face_px: the smallest face to find (pixels); sets the tiles
        (`tile_sides`). 0: one whole-image pass only.
      num_threads: interpreter threads (None: LiteRT's default).
    """

    def __init__(self, model_path: str | None = None, *, min_score: float = DEFAULT_MIN_SCORE,
                 min_face_px: float = 0, num_threads: int | None = None):
        from ai_edge_litert import interpreter as litert  # LiteRT only where it is used

        path = assets.resolve_model(MODEL_NAME, model_path)
        self.min_score = float(min_score)
        self.min_face_px = float(min_face_px)
        self._interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        inp = self._interpreter.get_input_details()
        if len(inp) != 1 or tuple(inp[0]["shape"]) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"{path}: expected one [1, {INPUT_SIZE}, {INPUT_SIZE}, 3] input, "
                             f"got {[tuple(d['shape']) for d in inp]}")
        self._input = inp[0]["index"]
        self._regressors = self._scores = None
        for d in self._interpreter.get_output_details():
            shape = tuple(d["shape"])
            if shape == (1, NUM_ANCHORS, 16):
                self._regressors = d["index"]
            elif shape == (1, NUM_ANCHORS, 1):
                self._scores = d["index"]
        if self._regressors is None or self._scores is None:
            raise ValueError(f"{path}: not the full-range BlazeFace (outputs "
                             f"{[tuple(d['shape']) for d in self._interpreter.get_output_details()]})")

    def raw(self, image_rgb: np.ndarray, shrink: float = 1.0
            ) -> tuple[np.ndarray, np.ndarray, Letterbox]:
        """One letterboxed pass (`letterbox`'s `shrink`): regressors [2304, 16], logits [2304],
        and the letterbox."""
        x, box = letterbox(image_rgb, shrink=shrink)
        self._interpreter.set_tensor(self._input, x[None])
        self._interpreter.invoke()
        reg = self._interpreter.get_tensor(self._regressors)[0]
        logits = self._interpreter.get_tensor(self._scores)[0, :, 0]
        return reg, logits, box

    def _candidates(self, image_rgb: np.ndarray, x0: int = 0, y0: int = 0,
                    max_size: float | None = None, shrink: float = 1.0) -> Candidates:
        reg, logits, lb = self.raw(image_rgb, shrink)
        scores = sigmoid_scores(logits)
        keep = scores >= self.min_score
        if max_size is not None:
            # A tile holds whole only faces up to its overlap; larger ones are cut
            # by its edge, and a coarser pass sees them whole.
            keep &= np.maximum(reg[:, 2], reg[:, 3]) / lb.scale <= max_size  # input px -> image px
        boxes, kps = decode_boxes(reg[keep], anchors()[keep])
        boxes = lb.to_image(boxes.reshape(-1, 2, 2)).reshape(-1, 4) + [x0, y0, x0, y0]
        kps = lb.to_image(kps) + [x0, y0]
        return Candidates(boxes, kps, scores[keep])

    def whole_pass(self, image_rgb: np.ndarray, shrink: float = 1.0) -> Candidates:
        """The one letterboxed pass over the whole image, before NMS (`detect`'s `whole`);
        `shrink` as in `letterbox`."""
        image_rgb = np.asarray(image_rgb)
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[-1] != 3:
            raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image_rgb.dtype} {image_rgb.shape}")
        return self._candidates(image_rgb, shrink=shrink)

    def detect(self, image_rgb: np.ndarray, min_face_px: float | None = None,
               whole: Candidates | None = None) -> list[Detection]:
        """Faces in one uint8 RGB image, best first, in image pixels.

        Args:
          image_rgb: uint8 [H, W, 3].
          min_face_px: the smallest face to search tiles for; None: the
            detector's own `min_face_px`.
          whole: `whole_pass` of this image when already run (it is not run again).
        """
        parts = [whole if whole is not None else self.whole_pass(image_rgb)]
        h, w = image_rgb.shape[:2]
        smallest = self.min_face_px if min_face_px is None else float(min_face_px)
        for side in tile_sides(w, h, smallest):
            for (tx0, ty0, tx1, ty1) in tiles(w, h, side):
                parts.append(self._candidates(image_rgb[ty0:ty1, tx0:tx1], tx0, ty0,
                                              max_size=TILE_OVERLAP * side))
        return merge(parts)

    def close(self) -> None:
        self._interpreter = None

    def __enter__(self) -> "FullRangeDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
