"""Face-aware metrics: is the restored face the right face, not only the right pixels?

PSNR/SSIM reward blur. These three metrics compare a restored aligned crop with
its clean original through face models instead:

  expression_error   mean |restored - clean| over MediaPipe's 51 expression
                     blendshapes (jawOpen, mouthSmileLeft, ...; scores in
                     [0, 1]; the 52nd, "_neutral", is a placeholder the model
                     scores 0 and is left out).
  landmark_nme       mean distance between the restored and clean MediaPipe
                     landmarks that lie inside the true occluder mask (in the
                     clean image), divided by the clean inter-ocular distance
                     (outer eye corners, the 300-W convention).
  identity_distance  Euclidean distance between dlib's ResNet face descriptors
                     (128-d; dlib's same-person threshold is 0.6) of the
                     restored and clean crops. Both chips are cut with the
                     clean face's 5-point alignment: the crops are registered,
                     so the distance measures pixels, not landmark jitter.

Lower is better for all three; a clean image scores exactly 0 against itself
(both models are deterministic). A face MediaPipe does not find is missing:
its values are NaN, never 0, and `aggregate` reports means over the images
where the value exists together with found/missing counts. Identity needs the
optional extra `requirements-eval.txt`; without it the metric is reported as
unavailable, with the install command, and the other two carry on.

Usage (the evaluator compares several methods on the same clean images, so
the clean analysis runs once):

    with FaceMetrics() as fm:
        ref = fm.reference(clean, mask)             # uint8 [N,R,R,3], [N,R,R,1]
        for name, restored in outputs.items():
            per_image[name] = fm.per_image(ref, restored)
            summary[name] = fm.aggregate(per_image[name])

Free of JAX: it runs on the host next to whatever produced the images.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.faces import align, detect
from deocc_jax.faces import landmarks as lmk

EXPRESSION = "expression_error"
LANDMARKS = "landmark_nme"
IDENTITY = "identity_distance"
METRICS = (EXPRESSION, LANDMARKS, IDENTITY)

# The optional extra, pinned as in requirements-eval.txt (a test keeps the two equal).
IDENTITY_PACKAGES = ("dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0")
IDENTITY_INSTALL = "pip install " + " ".join(IDENTITY_PACKAGES)

# Blendshapes that describe an expression: all but "_neutral" (index 0).
EXPRESSION_INDICES = np.array([i for i, n in enumerate(detect.BLENDSHAPE_NAMES) if n != "_neutral"])

# MediaPipe's landmarks and blendshapes on a 64 px crop agree better with those
# of the same face cropped at 256 px when the crop is first upscaled to 128 px
# (blendshape MAE 0.031 -> 0.026, NME 0.027 -> 0.022 on 40 LFW faces); 128 px
# crops are best left as they are (0.007 native vs 0.009 upscaled to 256).
DEFAULT_MIN_ANALYSIS_SIZE = 128

# dlib's face chip: 150 px, 25 % padding (what its ResNet was trained on).
_CHIP_SIZE, _CHIP_PADDING = 150, 0.25
# Box handed to dlib's 5-point shape predictor, from the MediaPipe landmarks:
# dlib's HOG detector boxes on aligned crops are squares about 1.77 outer-eye
# distances wide centred between the eyes and the mouth (measured on 40 LFW
# crops); the predicted points match those from HOG boxes within 3.5 % of the
# eye distance, and no crop is lost to a second detector.
_DLIB_BOX_WIDTH_IOD = 1.77


@dataclasses.dataclass(frozen=True)
class Reference:
    """The clean images' analysis, made once by `FaceMetrics.reference`.

    Attributes:
      resolution: crop side R of the clean images.
      analysis_size: side the crops were resized to for the face models.
      found: bool [N], MediaPipe found the clean face.
      landmarks: float32 [N, 478, 2] clean landmarks in crop pixels (NaN if not found).
      blendshapes: float32 [N, 52] clean blendshapes (NaN if not found).
      in_mask: bool [N, 478], the clean landmark lies inside the true mask.
      interocular: float32 [N], clean outer-eye-corner distance in crop pixels.
      identity_points: int32 [N, 5, 2] dlib 5-point shape in analysis pixels,
        or None when identity is unavailable.
      identity_embeddings: float32 [N, 128] clean descriptors (NaN if not
        found), or None when identity is unavailable.
    """
    resolution: int
    analysis_size: int
    found: np.ndarray
    landmarks: np.ndarray
    blendshapes: np.ndarray
    in_mask: np.ndarray
    interocular: np.ndarray
    identity_points: np.ndarray | None
    identity_embeddings: np.ndarray | None

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def subset(self, index) -> "Reference":
        """The reference of some images (a slice, index array or boolean mask), e.g. one batch."""
        def take(x):
            return None if x is None else x[index]
        return dataclasses.replace(
            self, found=self.found[index], landmarks=self.landmarks[index],
            blendshapes=self.blendshapes[index], in_mask=self.in_mask[index],
            interocular=self.interocular[index], identity_points=take(self.identity_points),
            identity_embeddings=take(self.identity_embeddings))


def _check_images(images: np.ndarray, what: str, resolution: int | None = None) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
            or images.shape[1] != images.shape[2]:
        raise errors.InvalidInputError(
            f"{what}: expected square uint8 RGB crops [N, R, R, 3], got {images.dtype} {images.shape}")
    if resolution is not None and images.shape[1] != resolution:
        raise errors.InvalidInputError(
            f"{what}: crops are {images.shape[1]} px but the reference was made at {resolution} px")
    return images


def _check_masks(masks: np.ndarray, images: np.ndarray) -> np.ndarray:
    """bool [N, R, R] from uint8 0/255 masks [N, R, R, 1] (or [N, R, R])."""
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != images.shape[:3]:
        raise errors.InvalidInputError(
            f"mask: expected [N, R, R, 1] matching the crops {images.shape[:3]}, got {masks.shape}")
    return masks > 127


class _DlibIdentity:
    """dlib's 5-point shape predictor and ResNet face encoder (models from face_recognition_models)."""

    def __init__(self):
        import dlib  # optional extra: imported only when identity is wanted
        # find_spec does not run the package's __init__, which imports
        # pkg_resources (gone from setuptools >= 81 and from Python 3.12 venvs).
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'face_recognition_models'")
        model_dir = os.path.join(list(spec.submodule_search_locations)[0], "models")
        paths = [os.path.join(model_dir, n) for n in
                 ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")]
        for p in paths:
            if not os.path.isfile(p):
                raise ImportError(f"face_recognition_models lacks {p}")
        self._dlib = dlib
        self._shape_predictor = dlib.shape_predictor(paths[0])
        self._encoder = dlib.face_recognition_model_v1(paths[1])

    def points(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """int32 [5, 2]: dlib's 5 points of the face whose MediaPipe landmarks are given."""
        le, re = landmarks[lmk.LEFT_EYE_CORNERS[0]], landmarks[lmk.RIGHT_EYE_CORNERS[0]]
        mouth = (landmarks[lmk.MOUTH_LEFT] + landmarks[lmk.MOUTH_RIGHT]) / 2
        centre = ((le + re) / 2 + mouth) / 2
        half = 0.5 * _DLIB_BOX_WIDTH_IOD * float(np.linalg.norm(re - le))
        x0, y0 = np.round(centre - half).astype(int)
        x1, y1 = np.round(centre + half).astype(int)
        shape = self._shape_predictor(image, self._dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], np.int32)

    def embed(self, images: list[np.ndarray], points: list[np.ndarray]) -> np.ndarray:
        """float32 [n, 128] descriptors of chips cut from each image with its 5 points."""
        if not images:
            return np.zeros((0, 128), np.float32)
        dlib = self._dlib
        chips = []
        for img, pts in zip(images, points):
            rect = dlib.rectangle(int(pts[:, 0].min()), int(pts[:, 1].min()),
                                  int(pts[:, 0].max()), int(pts[:, 1].max()))
            shape = dlib.full_object_detection(rect, dlib.points([dlib.point(int(x), int(y)) for x, y in pts]))
            chips.append(dlib.get_face_chip(img, shape, size=_CHIP_SIZE, padding=_CHIP_PADDING))
        return np.array(self._encoder.compute_face_descriptor(chips), np.float32)


class FaceMetrics:
    """Expression, landmark and identity errors of restored face crops; a context manager.

    Args:
      landmarker_model: explicit face_landmarker.task; else `assets.resolve_model`.
      identity: True needs the identity extra (raises, naming the install
        command, when it is missing); False leaves identity out; "auto" uses it
        when installed and otherwise reports it unavailable in every result.
      min_analysis_size: crops smaller than this are upscaled (bicubic) to it
        before analysis.
      min_confidence: MediaPipe detection/presence threshold (occluded and
        restored faces score lower than clean ones).
    """

    def __init__(self, landmarker_model: str | None = None, identity: bool | str = "auto",
                 min_analysis_size: int = DEFAULT_MIN_ANALYSIS_SIZE, min_confidence: float = 0.3):
        if identity not in (True, False, "auto"):
            raise ValueError(f"identity must be True, False or 'auto', got {identity!r}")
        self.min_analysis_size = int(min_analysis_size)
        self.unavailable: dict[str, str] = {}
        self._identity: _DlibIdentity | None = None
        if identity is False:
            self.unavailable[IDENTITY] = "disabled (identity=False)"
        else:
            try:
                self._identity = _DlibIdentity()
            except ImportError as e:
                reason = (f"needs dlib and face_recognition_models ({e}); install the extra with: "
                          f"{IDENTITY_INSTALL}")
                if identity is True:
                    raise ImportError(f"identity_distance {reason}") from e
                self.unavailable[IDENTITY] = reason
        # Up to 3 faces so that the aligned face can be chosen over a mirrored
        # or background face that MediaPipe ranks first. The landmarker alone: an
        # aligned crop fills its frame, and the instrument must stay the one every
        # recorded figure was measured with.
        self._analyzer = detect.FaceAnalyzer(mode="image", num_faces=3, min_confidence=min_confidence,
                                             model_path=landmarker_model, blendshapes=True,
                                             full_range=False)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this instance computes (identity only when available)."""
        return tuple(m for m in METRICS if m not in self.unavailable)

    # ------------------------------------------------------------------ analysis

    def _analysis_image(self, crop: np.ndarray) -> tuple[np.ndarray, float]:
        r = crop.shape[0]
        if r >= self.min_analysis_size:
            return np.ascontiguousarray(crop), 1.0
        a = self.min_analysis_size
        return cv2.resize(crop, (a, a), interpolation=cv2.INTER_CUBIC), a / r

    def _face(self, image: np.ndarray) -> detect.Face | None:
        """The face nearest the aligned position (FFHQ template) in an analysis image."""
        faces = self._analyzer.detect(image)
        if not faces:
            return None
        target = align.TEMPLATE_5.mean(0) * image.shape[0]
        return min(faces, key=lambda f: float(np.linalg.norm(lmk.five_points(f.landmarks).mean(0) - target)))

    def _analyse(self, images: np.ndarray):
        """Per image: (analysis image, scale, Face or None)."""
        out = []
        for crop in images:
            img, scale = self._analysis_image(crop)
            out.append((img, scale, self._face(img)))
        return out

    def reference(self, clean: np.ndarray, mask: np.ndarray) -> Reference:
        """Analyses the clean crops once; pass the result to `per_image` for every method.

        Args:
          clean: uint8 [N, R, R, 3] aligned clean crops.
          mask: uint8 [N, R, R, 1] true occluder masks (0/255).

        Returns:
          A `Reference` (index it per batch with `Reference.subset`).
        """
        clean = _check_images(clean, "clean")
        masks = _check_masks(mask, clean)
        n, r = clean.shape[:2]
        analysed = self._analyse(clean)
        found = np.array([f is not None for _, _, f in analysed], bool)
        landmarks = np.full((n, detect.NUM_LANDMARKS, 2), np.nan, np.float32)
        blendshapes = np.full((n, detect.NUM_BLENDSHAPES), np.nan, np.float32)
        in_mask = np.zeros((n, detect.NUM_LANDMARKS), bool)
        interocular = np.full(n, np.nan, np.float32)
        for i, (_, scale, face) in enumerate(analysed):
            if face is None:
                continue
            lm = face.landmarks / scale
            landmarks[i], blendshapes[i] = lm, face.blendshapes
            interocular[i] = np.linalg.norm(lm[lmk.LEFT_EYE_CORNERS[0]] - lm[lmk.RIGHT_EYE_CORNERS[0]])
            xy = np.floor(lm).astype(int)
            inside = (xy >= 0).all(1) & (xy < r).all(1)
            in_mask[i, inside] = masks[i][xy[inside, 1], xy[inside, 0]]
        points = embeddings = None
        if self._identity is not None:
            points = np.zeros((n, 5, 2), np.int32)
            idx = np.flatnonzero(found)
            for i in idx:
                img, _, face = analysed[i]
                points[i] = self._identity.points(img, face.landmarks)
            embeddings = np.full((n, 128), np.nan, np.float32)
            embeddings[idx] = self._identity.embed([analysed[i][0] for i in idx], [points[i] for i in idx])
        size = max(r, self.min_analysis_size)
        return Reference(resolution=r, analysis_size=size, found=found, landmarks=landmarks,
                         blendshapes=blendshapes, in_mask=in_mask, interocular=interocular,
                         identity_points=points, identity_embeddings=embeddings)

    def per_image(self, ref: Reference, restored: np.ndarray) -> dict[str, np.ndarray]:
        """Face metrics of one method's outputs against the clean reference.

        Args:
          ref: `reference(clean, mask)` of the same images, in the same order.
          restored: uint8 [N, R, R, 3], the method's output (or the occluded
            input, to score doing nothing).

        Returns:
          float32 [N] arrays "expression_error", "landmark_nme" and, when
          available, "identity_distance" (NaN where missing), plus bool [N]
          "face_found" (MediaPipe found the restored face) and
          "clean_face_found". Expression and landmarks need both faces;
          identity needs the clean face only (it reuses its alignment);
          landmark_nme also needs a clean landmark inside the mask.
        """
        restored = _check_images(restored, "restored", ref.resolution)
        if len(restored) != len(ref):
            raise errors.InvalidInputError(
                f"restored: {len(restored)} crops for a reference of {len(ref)}")
        n = len(ref)
        analysed = self._analyse(restored)
        face_found = np.array([f is not None for _, _, f in analysed], bool)
        expression = np.full(n, np.nan, np.float32)
        nme = np.full(n, np.nan, np.float32)
        for i, (_, scale, face) in enumerate(analysed):
            if face is None or not ref.found[i]:
                continue
            d = face.blendshapes[EXPRESSION_INDICES] - ref.blendshapes[i, EXPRESSION_INDICES]
            expression[i] = np.mean(np.abs(d))
            sel = ref.in_mask[i]
            if sel.any():
                err = np.linalg.norm(face.landmarks[sel] / scale - ref.landmarks[i, sel], axis=1)
                nme[i] = np.mean(err) / ref.interocular[i]
        out = {EXPRESSION: expression, LANDMARKS: nme}
        if self._identity is not None:
            if ref.identity_embeddings is None:
                raise ValueError("the reference was made without identity; make it with this FaceMetrics")
            dist = np.full(n, np.nan, np.float32)
            idx = np.flatnonzero(ref.found)
            emb = self._identity.embed([analysed[i][0] for i in idx], [ref.identity_points[i] for i in idx])
            dist[idx] = np.linalg.norm(emb - ref.identity_embeddings[idx], axis=1)
            out[IDENTITY] = dist
        out["face_found"] = face_found
        out["clean_face_found"] = ref.found.copy()
        return out

    # ------------------------------------------------------------------ reporting

    def aggregate(self, per_image: Mapping[str, np.ndarray], select: np.ndarray | None = None
                  ) -> dict[str, Any]:
        """`aggregate` with this instance's unavailable metrics stated."""
        return aggregate(per_image, select=select, unavailable=self.unavailable)

    def describe(self) -> str:
        """A few lines for a report: what each metric is and which are unavailable."""
        lines = [
            "Face metrics (lower is better; 0 = identical to the clean image):",
            "- expression_error: mean absolute difference of MediaPipe's 51 expression "
            "blendshape scores (each in [0, 1]).",
            "- landmark_nme: mean distance of the MediaPipe landmarks inside the true occluder "
            "mask, over the clean inter-ocular (outer eye corner) distance.",
        ]
        if IDENTITY in self.unavailable:
            lines.append(f"- identity_distance: unavailable: {self.unavailable[IDENTITY]}.")
        else:
            lines.append("- identity_distance: Euclidean distance of dlib ResNet face descriptors, "
                         "chips cut with the clean face's alignment (dlib's same-person threshold: 0.6).")
        lines.append(f"Crops under {self.min_analysis_size} px are upscaled before analysis. A face "
                     "MediaPipe does not find is missing, never 0: means are over found faces, with "
                     "found/missing counts beside them.")
        return "\n".join(lines)

    def close(self) -> None:
        self._analyzer.close()

    def __enter__(self) -> "FaceMetrics":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def aggregate(per_image: Mapping[str, np.ndarray], select: np.ndarray | None = None,
              unavailable: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Means over the images where each metric exists, with found/missing counts.

    Args:
      per_image: a `FaceMetrics.per_image` result.
      select: optional bool [N] (e.g. one occluder category, or `found_in_all`
        to compare methods on the same faces).
      unavailable: metric -> reason (`FaceMetrics.unavailable`).

    Returns:
      For each computed metric m: m (mean, or None when no image has it),
      "m_found" and "m_missing" (counts); for each unavailable metric: m None
      and "m_unavailable" (the reason and install command); and
      "count", "clean_faces_missing", "faces_missing" (restored faces not found
      where the clean one was).
    """
    n = len(per_image["face_found"])
    sel = np.ones(n, bool) if select is None else np.asarray(select, bool)
    clean_found = per_image["clean_face_found"][sel]
    out: dict[str, Any] = {
        "count": int(sel.sum()),
        "clean_faces_missing": int((~clean_found).sum()),
        "faces_missing": int((clean_found & ~per_image["face_found"][sel]).sum()),
    }
    for m in METRICS:
        if m in per_image:
            v = np.asarray(per_image[m], np.float64)[sel]
            ok = np.isfinite(v)
            out[m] = float(v[ok].mean()) if ok.any() else None
            out[f"{m}_found"] = int(ok.sum())
            out[f"{m}_missing"] = int((~ok).sum())
        elif unavailable and m in unavailable:
            out[m] = None
            out[f"{m}_unavailable"] = unavailable[m]
    return out


def closer_share(distances: np.ndarray, reference: np.ndarray,
                 select: np.ndarray | None = None) -> tuple[float | None, int]:
    """Share of faces a method brings closer to the clean face than `reference` does.

    With `reference` the occluded input's identity distances, this says how
    often restoring beats doing nothing, face by face (a mean distance can hide
    that a method helps a few faces a lot and hurts most a little).

    Args:
      distances: float [N] a method's identity (or any) distances to the clean faces.
      reference: float [N] the distances of what it is compared with, same faces.
      select: optional bool [N].

    Returns:
      (share of compared faces with distance < reference, or None when there
      are none; number of faces compared: both values finite and selected).
    """
    d = np.asarray(distances, np.float64)
    r = np.asarray(reference, np.float64)
    if d.shape != r.shape:
        raise ValueError(f"distances {d.shape} and reference {r.shape} differ in shape")
    ok = np.isfinite(d) & np.isfinite(r)
    if select is not None:
        ok &= np.asarray(select, bool)
    n = int(ok.sum())
    return (float(np.mean(d[ok] < r[ok])) if n else None), n


def found_in_all(results: Iterable[Mapping[str, np.ndarray]], metric: str = EXPRESSION) -> np.ndarray:
    """bool [N]: images where `metric` exists for every method, to compare methods on the same faces.

    Means over found faces alone favour a method whose worst outputs are not
    detected at all; `aggregate(r, select=found_in_all(all_results))` does not.
    """
    results = list(results)
    if not results:
        raise ValueError("found_in_all needs at least one result")
    return np.logical_and.reduce([np.isfinite(r[metric]) for r in results])
