"""Face detection + 478 landmarks with MediaPipe Tasks' FaceLandmarker.

One `FaceAnalyzer` wraps one landmarker; create it once per worker (it loads a
model and starts a thread pool) and close it when done, e.g.

    with FaceAnalyzer() as fa:
        faces = fa.detect(image_rgb)

`FaceAnalyzer(blendshapes=True)` also returns MediaPipe's 52 ARKit-style
blendshape scores per face (`Face.blendshapes`, ordered as `BLENDSHAPE_NAMES`).

Faces are found in two stages. The landmarker runs on the whole image first;
its own short-range detector misses small, turned and covered faces (masks,
scarves, hands: the faces a de-occluder exists for). Then the full-range
BlazeFace (`faces.blazeface`) looks for faces it did not cover, and each is
landmarked on an upright crop and kept only if the landmarks fit a face
(`faces.cascade`). `find` also says why an image yielded no face.

Most of a photo's cost is the detector's tiles (nine passes at 640x480 for
16 px faces, against one for the whole photo), so they run only where they
can matter: the landmarker's faces are confirmed with the whole-photo pass
and an upright check first, and beside faces already found the tiles look
only for faces down to 1 / `FACE_SCALE_SPAN` of the smallest of them
(`search_min_face_px`). A photo with no face found is still searched down to
`min_face_px`, and then, for a face that fills the photo (a tight crop, out of
the whole-photo pass's reach), once more shrunk into a padded canvas
(`cascade.tight_crop_detections`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deocc_jax.io import assets
from deocc_jax.faces import blazeface, cascade, mesh

LANDMARKER = "landmarker"
FULL_RANGE = "full_range"
# Video: the full-range pass runs at most once every this many frames (and the
# faces it added are followed from frame to frame by the landmark model alone),
# so a stream keeps its frame rate.
FULL_RANGE_EVERY = 5
# A face the full-range stage added stays tracked while its presence is this high.
MIN_TRACK_PRESENCE = 0.5
NUM_LANDMARKS = 478
# Photos: once faces are found, further faces are searched down to this many
# times smaller than the smallest of them (`search_min_face_px`).
FACE_SCALE_SPAN = 3.0
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
      source: the stage that found it: LANDMARKER or FULL_RANGE.
    """
    landmarks: np.ndarray
    bbox: np.ndarray
    blendshapes: np.ndarray | None = None
    source: str = LANDMARKER

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


@dataclasses.dataclass(frozen=True)
class FaceSearch:
    """The faces of one image and, when there are none, why.

    Attributes:
      faces: the faces found (at least `min_face_px`), landmarker's first.
      too_small: boxes (x0, y0, x1, y1) of faces found below `min_face_px`.
      rejected: faces turned away as not a face: full-range detections whose
        landmarks did not fit a face, and (photos) landmarker faces that the
        full-range detector does not confirm.
      detected: faces the detectors found, before the size and face checks.
    """
    faces: list[Face]
    too_small: list[np.ndarray]
    rejected: int
    detected: int

    @property
    def reason(self) -> str | None:
        """None when a face was found; else "none detected", "detections rejected
        as not a face" or "all below --min_face_px" (cascade's phrases)."""
        if self.faces:
            return None
        if self.too_small:
            return cascade.TOO_SMALL
        return cascade.REJECTED if self.rejected else cascade.NONE_DETECTED


def _face(landmarks: np.ndarray, blendshapes=None, source: str = LANDMARKER) -> Face:
    pts = np.asarray(landmarks, np.float32)
    bbox = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
    return Face(landmarks=pts, bbox=bbox, blendshapes=blendshapes, source=source)


def face_size(face: Face) -> float:
    """A face's size as `min_face_px` measures it: its landmark box's longer side."""
    return max(face.width, face.height)


def search_min_face_px(faces: list[Face], min_face_px: float,
                       span: float = FACE_SCALE_SPAN) -> float:
    """The smallest face a photo's full-range search looks for, given the faces already found.

    Beside faces already found, only faces down to 1 / `span` of the smallest
    of them are searched (never below `min_face_px`): the tiles that find
    smaller ones are most of the search's cost. `span` inf: down to
    `min_face_px` always.
    """
    if not faces:
        return float(min_face_px)
    return max(float(min_face_px), min(face_size(f) for f in faces) / span)


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
    return distinct_faces(faces)


def distinct_faces(faces: list[Face]) -> list[Face]:
    """`faces` less any that overlaps an earlier one by more than `cascade.SAME_FACE_IOU`.

    With several faces allowed and a low presence threshold, MediaPipe's landmarker can
    return one masked face twice (slightly shifted meshes); restored twice, it was pasted
    twice.
    """
    kept: list[Face] = []
    for f in faces:
        if not any(blazeface.box_iou(f.bbox, k.bbox[None])[0] > cascade.SAME_FACE_IOU
                   for k in kept):
            kept.append(f)
    return kept


class FaceAnalyzer:
    """Faces and their 478 landmarks in IMAGE or VIDEO mode; a context manager.

    Args:
      mode: "image" (independent photos, `detect`) or "video" (frames with
        increasing timestamps, `detect_video`; tracks faces between frames).
      num_faces: the most faces returned per image.
      min_confidence: detection / presence / tracking threshold. Occluded faces
        score low, so the default (0.3) is below MediaPipe's 0.5.
      model_path: explicit face_landmarker.task; else `assets.resolve_model`.
      blendshapes: also compute the 52 blendshape scores of each face
        (`Face.blendshapes`); off by default since few callers need them.
      full_range: add the full-range stage (module docstring); off means the
        landmarker alone.
      min_face_px: faces whose box's longer side (pixels) is below this are
        reported in `FaceSearch.too_small` instead of returned.
      full_range_model: explicit face_detection_full_range.tflite.
      full_range_every: video mode: the most frames between two full-range
        passes.
      face_scale_span: image mode: beside faces found, search further faces
        down to 1 / this of the smallest (`search_min_face_px`); inf: always
        down to `min_face_px`.
    """

    def __init__(self, mode: str = "image", num_faces: int = 1, min_confidence: float = 0.3,
                 model_path: str | None = None, blendshapes: bool = False, *,
                 full_range: bool = True, min_face_px: float = cascade.DEFAULT_MIN_FACE_PX,
                 full_range_model: str | None = None, full_range_every: int = FULL_RANGE_EVERY,
                 face_scale_span: float = FACE_SCALE_SPAN):
        # MediaPipe loads models and threads: only where faces are found.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core import base_options

        if mode not in ("image", "video"):
            raise ValueError(f"mode must be 'image' or 'video', got {mode!r}")
        if min_face_px < 0:
            raise ValueError(f"min_face_px must be >= 0, got {min_face_px}")
        if full_range_every < 1:
            raise ValueError(f"full_range_every must be >= 1, got {full_range_every}")
        if not face_scale_span >= 1:
            raise ValueError(f"face_scale_span must be >= 1, got {face_scale_span}")
        self.face_scale_span = float(face_scale_span)
        self.mode = mode
        self.blendshapes = bool(blendshapes)
        self.num_faces = int(num_faces)
        self.min_face_px = float(min_face_px)
        self.full_range_every = int(full_range_every)
        self._detector = self._mesh = None
        if full_range:
            # Photos are also searched in tiles for faces down to min_face_px;
            # a stream gets one whole-frame pass (faces from 1/16 of the frame's
            # longer side: 40 px at 640x480), which keeps it at frame rate.
            self._detector = blazeface.FullRangeDetector(
                full_range_model, min_score=cascade.CONFIRM_SCORE,
                min_face_px=self.min_face_px if mode == "image" else 0)
            self._mesh = mesh.FaceMesh(model_path, blendshapes=self.blendshapes)
        self._tracked: list[np.ndarray] = []   # video: faces the full-range stage added
        self._since_full_range = self.full_range_every  # video: run it on the first frame
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
        """Faces in one uint8 RGB image (IMAGE mode), landmarker's first."""
        return self.find(image_rgb).faces

    def detect_video(self, image_rgb: np.ndarray, timestamp_ms: int) -> list[Face]:
        """Faces in one video frame; timestamps must increase between calls."""
        return self.find_video(image_rgb, timestamp_ms).faces

    def find(self, image_rgb: np.ndarray) -> FaceSearch:
        """The faces of one uint8 RGB image (IMAGE mode), or why there are none."""
        if self.mode != "image":
            raise RuntimeError("find() needs mode='image'; use find_video() in video mode")
        result = self._landmarker.detect(_as_srgb(image_rgb))
        first = faces_from_result(result, image_rgb.shape[1], image_rgb.shape[0])
        return self._second_stage(image_rgb, first, run_detector=True)

    def find_video(self, image_rgb: np.ndarray, timestamp_ms: int) -> FaceSearch:
        """`find` for one video frame; timestamps must increase between calls.

        Faces the full-range stage added are followed with the landmark model
        on the region of their last landmarks (as MediaPipe tracks its own);
        the detector itself runs at most every `full_range_every` frames.
        """
        if self.mode != "video":
            raise RuntimeError("find_video() needs mode='video'")
        result = self._landmarker.detect_for_video(_as_srgb(image_rgb), int(timestamp_ms))
        first = faces_from_result(result, image_rgb.shape[1], image_rgb.shape[0])
        if self._mesh is not None and self._tracked:
            boxes = [f.bbox for f in first]
            for prev in self._tracked:
                if len(first) >= self.num_faces:
                    break
                r = self._mesh.run(image_rgb, mesh.roi_from_landmarks(prev))
                box = cascade.landmark_box(r.landmarks)
                if r.presence < MIN_TRACK_PRESENCE or any(
                        blazeface.box_iou(box, b[None])[0] > cascade.SAME_FACE_IOU for b in boxes):
                    continue
                first.append(self._cascade_face(r.landmarks))
                boxes.append(box)
        self._since_full_range += 1
        due = self._since_full_range >= self.full_range_every
        if due:
            self._since_full_range = 0
        search = self._second_stage(image_rgb, first, run_detector=due)
        self._tracked = [f.landmarks for f in search.faces if f.source == FULL_RANGE]
        return search

    def _cascade_face(self, landmarks: np.ndarray) -> Face:
        shapes = self._mesh.blendshapes(landmarks) if self.blendshapes else None
        return _face(landmarks, shapes, FULL_RANGE)

    def _second_stage(self, image_rgb: np.ndarray, first: list[Face], run_detector: bool
                      ) -> FaceSearch:
        """Adds the full-range stage's faces to `first`, then applies `min_face_px`."""
        detected, rejected = len(first), 0
        faces, too_small = list(first), []
        detections = None
        if self._detector is not None and run_detector:
            if self.mode == "image":
                # Photos only: in a stream the landmarker's faces are tracked
                # between full-range passes and must not blink in and out.
                faces, whole, detections = self._confirmed(image_rgb, first)
                rejected = len(first) - len(faces)
                if detections is None and len(faces) < self.num_faces:
                    detections = self._detector.detect(
                        image_rgb, min_face_px=search_min_face_px(faces, self.min_face_px,
                                                              self.face_scale_span),
                        whole=whole)
            else:
                detections = self._detector.detect(image_rgb)
        if detections is not None and len(faces) < self.num_faces:
            found = cascade.search(image_rgb, detections,
                                   [f.landmarks for f in first], self._mesh, self._detector,
                                   max_new=self.num_faces - len(faces), min_face_px=self.min_face_px)
            rejected += found.rejected
            faces += [self._cascade_face(lm) for lm in found.landmarks]
            detected += found.detected
            too_small = list(found.too_small)
        if self.mode == "image" and detections is not None and not faces:
            # A face that fills the photo (a tight crop) is beyond the whole-photo
            # pass; the landmarker's faces turned away above are no reason to skip
            # it (in tight crops they lay on the background or on the mouth). What it
            # turns away is not counted in `rejected`: a photo without a tight face
            # keeps the reason the photo's own search gave (a cat's head filling
            # the photo fires the detector there, and is no rejected face).
            tight = cascade.search(image_rgb, cascade.tight_crop_detections(image_rgb, self._detector),
                                   [], self._mesh, self._detector, max_new=self.num_faces,
                                   min_face_px=self.min_face_px)
            faces += [self._cascade_face(lm) for lm in tight.landmarks]
            detected += tight.detected
            too_small += list(tight.too_small)
        kept = [f for f in faces if face_size(f) >= self.min_face_px]
        too_small += [f.bbox for f in faces if face_size(f) < self.min_face_px]
        return FaceSearch(faces=kept, too_small=too_small, rejected=rejected, detected=detected)

    def _confirmed(self, image_rgb: np.ndarray, first: list[Face]
                   ) -> tuple[list[Face], blazeface.Candidates, list[blazeface.Detection] | None]:
        """The landmarker's faces that the full-range detector confirms (photos), in order.

        A face is kept when a detection at least `cascade.STRONG_CONFIRM_SCORE`
        sure lies in it, or when `cascade.verify` agrees. The whole-photo pass
        and the upright check settle almost every face, so the tiles (most of
        the detector's cost) run here only for a face that neither confirms.

        Returns:
          The faces kept, the whole-photo pass, and the detections with tiles
          down to `min_face_px` when they were run (else None).
        """
        whole = self._detector.whole_pass(image_rgb)
        coarse = blazeface.merge([whole])
        unsure = [i for i, f in enumerate(first) if not cascade.keep_landmarker_face(
            image_rgb, f.landmarks, coarse, self._detector)]
        fine = None
        if unsure:
            fine = self._detector.detect(image_rgb, whole=whole)
            unsure = [i for i in unsure if cascade.confirm_score(first[i].landmarks, fine)
                      < cascade.STRONG_CONFIRM_SCORE]
        return [f for i, f in enumerate(first) if i not in unsure], whole, fine

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None
        for part in (self._detector, self._mesh):
            if part is not None:
                part.close()
        self._detector = self._mesh = None

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def largest_face(faces: list[Face]) -> Face | None:
    """The face with the largest landmark bounding box, or None."""
    return max(faces, key=lambda f: f.area) if faces else None
