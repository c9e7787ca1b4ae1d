"""The second stage of face finding: full-range detections landmarked on upright crops.

MediaPipe's face landmarker finds a face only where its short-range detector
does: faces that fill much of the frame with mouth and nose showing. After it
has run, `search` takes the full-range BlazeFace's detections (`blazeface`)
that no landmarked face already covers, landmarks each on an enlarged crop
turned upright by the detection's eye keypoints (`mesh`, two passes as
MediaPipe tracks), and keeps it only if the two models agree on a face: a
false face is worse than a missed one, since the restorer would paint a face
into a clock or a texture. Agreement (`verify`): the landmark model's
presence score, then the detector run again on the face turned upright by
its landmarks (where the detector's keypoints are accurate; on a turned face
they drift by most of an eye distance) must find it, with its eyes on the
landmarks' eyes and an eye distance that fits its box. The landmark model's
presence score is not left-right symmetric: on a head turned one way above a
mask it is often near 0 and on the mirror image near 1, so a detection in
which neither pass sees a face is tried again on the photo flipped
left-right (`mirror_detection`, `landmarks.unmirror`), with the same checks
on the second pass.

The landmarker itself also finds faces in a few photos with none (a clock, a
colour wheel, microscopy images, with presence scores near 1), so in photos
its faces are kept only where the full-range detector sees a face too
(`keep_landmarker_face`): surely in the photo, or on the upright face with
its eyes where the landmarks put them (`verify`). Tight face crops (UTKFace),
which the full-range model misses whole, pass the upright check. Where the
landmarker's mesh in such a crop lies off the face (on the background, on the
mouth), nothing confirms it; a photo left without a face is shown to the
detector once more shrunk into a padded canvas (`tight_crop_detections`), where
a face that fills the photo is a third of the input, and what it finds there
goes through the same checks.

The thresholds were set on ../shared/data/real_masked (199 real photos of
people in masks) and 52 photos with no face (benchmarks/detection.py, whose
JSON holds the resulting counts): the detector's best score inside the
landmarker's false faces was at most 0.38.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from deocc_jax.faces import align, blazeface, mesh
from deocc_jax.faces import landmarks as lmk

# The landmark model's face-presence score a kept face needs.
MIN_PRESENCE = 0.5
# The landmarks' eye centres must lie within this fraction of the upright
# detection's eye distance from its eye keypoints (both eyes).
MAX_EYE_OFFSET = 0.5
# The same for faces MediaPipe's own detector proposed: on a head turned 45 degrees
# the full-range detector's eye keypoints drift by up to about 0.6 eye distances
# (LFW's profile photos); 1.0 let a microscopy image through (benchmarks.detection).
LANDMARKER_MAX_EYE_OFFSET = 0.7
# Detections at least this sure count (the upright one in `verify` too). A
# landmarker face is kept when `verify` agrees or when a whole-photo detection
# at least STRONG_CONFIRM_SCORE sure lies centred in it (the landmarker's false
# faces scored at most 0.38 there).
CONFIRM_SCORE = 0.3
STRONG_CONFIRM_SCORE = 0.6
# Landmark eye distance over the detection box's side: a face's proportions.
EYE_TO_BOX = (0.2, 0.65)
# The upright re-detection: the region of the landmarks at this scale (the face
# a third of the crop, where the full-range detector is surest) fed whole to it.
# At 2.0 clear faces in small photos scored 0 to 0.3; at 3.0, 0.68 to 0.9, and
# the landmarker's false faces at most 0.4, none with its eyes on the landmarks'.
UPRIGHT_SCALE = 3.0
# A mirror image swaps the subject's right and left eye and ear keypoints.
MIRROR_KEYPOINTS = (blazeface.LEFT_EYE, blazeface.RIGHT_EYE, blazeface.NOSE_TIP, blazeface.MOUTH,
                    blazeface.LEFT_EAR, blazeface.RIGHT_EAR)
# The most detections landmarked per image (noise can fire many).
MAX_CHECKS = 16
# Tight crops (UTKFace): a face that fills the photo is beyond the whole-photo
# pass's reach (40 faces/ portraits cropped so the landmark box spans 0.8, 1.0,
# 1.1 of the photo's side: found 40, 35, 12 times), so a photo in which no face
# was found is shown to the detector once more shrunk into a black canvas
# TIGHT_CROP_SCALE times its longer side, the face a third of the input as in
# `upright_detection` (the same crops at 1.0 and 1.1: 40 of 40). Only detections
# at least TIGHT_FACE_SHARE of the photo's shorter side count there: smaller faces
# are the whole-photo pass's, and the one no-face photo that passed the checks
# from this canvas (colour wheel, turned and enlarged) did so with a box of 0.8
# of its side; the tight faces recovered in UTKFace spanned at least 0.99.
TIGHT_CROP_SCALE = UPRIGHT_SCALE
TIGHT_FACE_SHARE = 0.9
# A detection is the same face as a landmarked one when its box centre lies in
# that face's landmark box, or when the two landmark boxes overlap this much.
SAME_FACE_IOU = 0.3
# Smallest face handled by default: the face box's longer side, photo px.
# Measured (benchmarks/detection.py, "min_face_px" sweep: 20 faces/ photos
# shrunk and pasted into a 1280 x 960 scene): 19 of 20 found at 12 and 16 px,
# all from 20; the median 5-point landmark error 0.106 eye distances at 12 px,
# 0.057 at 16, 0.048 at 20. Smaller faces also cost more: photos are searched
# in tiles of 16 x min_face_px.
DEFAULT_MIN_FACE_PX = 16

NONE_DETECTED = "none detected"
REJECTED = "detections rejected as not a face"
TOO_SMALL = "all below --min_face_px"


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    pts = np.asarray(landmarks, np.float64)
    return np.concatenate([pts.min(0), pts.max(0)])


def covered(det: blazeface.Detection, boxes: list[np.ndarray]) -> bool:
    """Whether a detection is a face already found (its centre inside one of `boxes`)."""
    cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
    return any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes)


def confirm_score(landmarks: np.ndarray, detections: list[blazeface.Detection]) -> float:
    """The best score of the full-range detections centred in the face (0 if none)."""
    box = landmark_box(landmarks)
    return max([d.score for d in detections if covered(d, [box])], default=0.0)


def keep_landmarker_face(image_rgb: np.ndarray, landmarks: np.ndarray,
                         detections: list[blazeface.Detection],
                         detector: blazeface.FullRangeDetector) -> bool:
    """Whether a face the landmarker found in a photo is confirmed by the full-range detector."""
    if confirm_score(landmarks, detections) >= STRONG_CONFIRM_SCORE:
        return True
    return verify(image_rgb, landmarks, detector, LANDMARKER_MAX_EYE_OFFSET) is None


def upright_detection(image_rgb: np.ndarray, landmarks: np.ndarray,
                      detector: blazeface.FullRangeDetector
                      ) -> tuple[blazeface.Detection | None, np.ndarray]:
    """The detector run again on the face turned upright by its landmarks.

    The detector's keypoints are accurate on upright faces and drift on turned
    ones, so the agreement of the two models is judged on this crop.

    Returns:
      The detection whose box holds the landmarks' nose tip (None if none),
      and the landmarks, both in the crop's pixels.
    """
    roi = mesh.roi_from_landmarks(landmarks, UPRIGHT_SCALE)
    M = roi.matrix(blazeface.INPUT_SIZE)
    crop = align.warp_to_crop(image_rgb, mesh.centre_convention(M), blazeface.INPUT_SIZE,
                              border_mode=cv2.BORDER_CONSTANT)
    pts = align.transform_landmarks(landmarks, M)
    nose = pts[lmk.NOSE_TIP]
    hits = [d for d in detector.detect(crop)
            if d.box[0] <= nose[0] <= d.box[2] and d.box[1] <= nose[1] <= d.box[3]]
    return (hits[0] if hits else None), pts


def fits_face(det: blazeface.Detection | None, landmarks: np.ndarray,
              max_eye_offset: float = MAX_EYE_OFFSET) -> str | None:
    """None when a detection and landmarks agree on a face, else why not (one phrase).

    Args:
      det: the detection (upright, see `upright_detection`), or None.
      landmarks: [478, 2] in `det`'s coordinates.
      max_eye_offset: how far (in eye distances) the landmarks' eyes may be from
        the detector's.
    """
    if det is None or det.score < CONFIRM_SCORE:
        return "no detection on the upright face"
    right, left = lmk.eye_centres(landmarks)
    kp_r, kp_l = det.keypoints[blazeface.RIGHT_EYE], det.keypoints[blazeface.LEFT_EYE]
    eye_dist = float(np.linalg.norm(kp_l - kp_r))
    if eye_dist <= 0:
        return "detector eyes coincide"
    offset = max(np.linalg.norm(right - kp_r), np.linalg.norm(left - kp_l)) / eye_dist
    if offset > max_eye_offset:
        return f"landmark eyes {offset:.2f} eye distances from the detector's"
    ratio = float(np.linalg.norm(left - right)) / max(det.size, 1e-6)
    if not EYE_TO_BOX[0] <= ratio <= EYE_TO_BOX[1]:
        return f"eye distance / box {ratio:.2f} outside {EYE_TO_BOX}"
    return None


def verify(image_rgb: np.ndarray, landmarks: np.ndarray, detector: blazeface.FullRangeDetector,
           max_eye_offset: float = MAX_EYE_OFFSET) -> str | None:
    """None when the face's landmarks and an upright re-detection agree; else why not."""
    upright, pts = upright_detection(image_rgb, landmarks, detector)
    return fits_face(upright, pts, max_eye_offset)


def landmark_detection(image_rgb: np.ndarray, det: blazeface.Detection, face_mesh: mesh.FaceMesh,
                       detector: blazeface.FullRangeDetector, *, refined_only: bool = False
                       ) -> tuple[np.ndarray, str | None, bool]:
    """Landmarks a detection on an upright crop and checks that they fit a face.

    Args:
      image_rgb: uint8 [H, W, 3].
      det: the detection.
      face_mesh: the landmark model.
      detector: the full-range detector (for `verify`).
      refined_only: accept only the second pass (on the first one's
        landmarks), not the first pass alone.

    Returns:
      The landmarks [478, 2], None when they pass `verify` (else why not), and
      whether either pass saw a face (presence at least MIN_PRESENCE).
    """
    roi = mesh.roi_from_points(det.box, det.keypoints[blazeface.RIGHT_EYE],
                               det.keypoints[blazeface.LEFT_EYE])
    # The second pass (on the first one's landmarks) is the more accurate
    # when it still sees a face; on turned, covered faces it can drift off.
    first = face_mesh.run(image_rgb, roi)
    second = face_mesh.run(image_rgb, mesh.roi_from_landmarks(first.landmarks))
    why, present = "face presence too low", False
    for r in (second,) if refined_only else (second, first):
        if r.presence >= MIN_PRESENCE:
            present = True
            why = verify(image_rgb, r.landmarks, detector)
            if why is None:
                return r.landmarks, None, True
        else:
            why = f"face presence {r.presence:.2f} < {MIN_PRESENCE}"
    return second.landmarks, why, present


def tight_crop_detections(image_rgb: np.ndarray, detector: blazeface.FullRangeDetector
                          ) -> list[blazeface.Detection]:
    """Faces that fill the photo: the detector run on the photo shrunk into a padded canvas.

    Returns:
      The detections whose box is at least TIGHT_FACE_SHARE of the photo's
      shorter side, best first, in photo pixels; for `search`, which checks
      them as any other.
    """
    h, w = image_rgb.shape[:2]
    detections = blazeface.merge([detector.whole_pass(image_rgb, shrink=TIGHT_CROP_SCALE)])
    return [d for d in detections if d.size >= TIGHT_FACE_SHARE * min(h, w)]


def mirror_detection(det: blazeface.Detection, width: float) -> blazeface.Detection:
    """The detection of the same face in the photo flipped left-right (`width` px wide)."""
    box = np.array([width - det.box[2], det.box[1], width - det.box[0], det.box[3]], np.float32)
    kps = det.keypoints[list(MIRROR_KEYPOINTS)].copy()
    kps[:, 0] = width - kps[:, 0]
    return blazeface.Detection(box=box, keypoints=kps, score=det.score)


@dataclasses.dataclass
class SearchResult:
    """What the full-range stage found beyond the faces already landmarked.

    Attributes:
      landmarks: [478, 2] arrays of the faces it added, best detection first.
      detected: faces it confirmed, of any size.
      rejected: detections it turned away as not a face.
      too_small: boxes (x0, y0, x1, y1) of confirmed faces below `min_face_px`.
      reasons: why each rejected detection was turned away.
    """
    landmarks: list[np.ndarray] = dataclasses.field(default_factory=list)
    detected: int = 0
    rejected: int = 0
    too_small: list[np.ndarray] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)


def search(image_rgb: np.ndarray, detections: list[blazeface.Detection],
           found: list[np.ndarray], face_mesh: mesh.FaceMesh,
           detector: blazeface.FullRangeDetector, *, max_new: int,
           min_face_px: float = DEFAULT_MIN_FACE_PX) -> SearchResult:
    """Landmarks faces that the full-range detector found and the landmarker did not.

    Args:
      image_rgb: uint8 [H, W, 3].
      detections: `FullRangeDetector.detect` output, best first.
      found: [478, 2] landmarks of the faces already found (not searched again).
      face_mesh: the landmark model.
      detector: the full-range detector (for `upright_detection`).
      max_new: the most faces to add.
      min_face_px: faces whose box's longer side is below this are checked
        like the others but reported in `too_small`, not returned.
    """
    out = SearchResult()
    boxes = [landmark_box(f) for f in found]
    checks = 0
    flipped = None
    for det in detections:
        if len(out.landmarks) >= max_new or checks >= MAX_CHECKS:
            break
        if covered(det, boxes):
            continue
        checks += 1
        landmarks, why, present = landmark_detection(image_rgb, det, face_mesh, detector)
        if not present:
            # The landmark model's face presence is not left-right symmetric: on
            # heads turned one way above a mask it is near 0, on their mirror
            # image often near 1. The mirrored photo goes through the same
            # checks, and its face must hold in the second pass: the clock that
            # passes them mirrored sees its presence fall from 0.55 to 0.06 there.
            if flipped is None:
                flipped = np.ascontiguousarray(image_rgb[:, ::-1])
            width = image_rgb.shape[1]
            m_landmarks, m_why, _ = landmark_detection(flipped, mirror_detection(det, width),
                                                       face_mesh, detector, refined_only=True)
            if m_why is None:
                landmarks, why = lmk.unmirror(m_landmarks, width), None
        box = landmark_box(landmarks)
        if why is not None:
            out.rejected += 1
            out.reasons.append(why)
        elif any(blazeface.box_iou(box, b[None])[0] > SAME_FACE_IOU for b in boxes):
            continue  # a second detection of a face already found (e.g. by a tile)
        elif det.size < min_face_px:
            out.detected += 1
            out.too_small.append(det.box)
            boxes.append(box)
        else:
            out.detected += 1
            out.landmarks.append(landmarks)
            boxes.append(box)
    return out
