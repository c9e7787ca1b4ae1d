"""The pipeline's first stage: photos -> aligned faces, or the reason each one is rejected.

`AlignFacesFn` decodes a photo (or a clean/occluded pair), finds the
landmarks, checks context and plausibility (`check_face`) and makes the
FFHQ-style padded crop (`AlignedFace`). data_prep.audit runs it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from data_prep import geometry, sources
from data_prep.config import PrepConfig
from data_prep.plan import descriptor
from data_prep.sources import Source
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.faces import align
from deocc_jax.faces import landmarks as L
from deocc_jax.io import images


METRICS_NAMESPACE = "deocc.data_prep"

# Face-level rejection reasons.
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
INSUFFICIENT_CONTEXT = "insufficient_context"   # too much of the crop (or face) outside the photo
IMPLAUSIBLE_LANDMARKS = "implausible_landmarks"  # landmarks that do not pose as a face, or near profile
PAIR_MISMATCH = "pair_mismatch"                  # paired input: sizes or contents do not pair up
FACE_REASONS = (NO_FACE, FACE_TOO_SMALL, INSUFFICIENT_CONTEXT, IMPLAUSIBLE_LANDMARKS, PAIR_MISMATCH)
# Every reason an entry can be rejected for, in the order dataset_info.json lists them.
REJECT_REASONS = sources.LISTING_REASONS + images.REASONS + FACE_REASONS
# A paired record's mask: pixels whose colour differs by more than this (0..255)
# after alignment, cleaned of compression speckle.
PAIR_THRESHOLD = 24
# Largest-face mode keeps the largest face that passes the checks, among faces
# at least this wide relative to the largest: a neighbour cut by the photo's
# edge often has the largest (extrapolated) landmark box (19 of 4,000 LFW photos).
MAIN_FACE_SHARE = 0.6
# Share of the face oval that may lie outside the photo before the face itself
# counts as cut (insufficient_context), whatever --max_padding allows.
MAX_FACE_OUTSIDE = 0.1


# ----------------------------------------------------------------------------
# Per-image work.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AlignedFace:
    """One accepted face, between alignment and synthesis.

    Attributes:
      record_source: source id (with #faceK in --all_faces mode).
      source_id: the photo's id.
      group: the person it belongs to (named group, before near-duplicates).
      clean: uint8 [R, R, 3].
      landmarks: float32 [478, 2] crop pixels.
      padding_fraction: share of the crop outside the photo.
      descriptor: near-duplicate descriptor.
      occluded, mask: paired input only: the real occluded crop and its mask.
    """
    record_source: str
    source_id: str
    group: str
    clean: np.ndarray
    landmarks: np.ndarray
    padding_fraction: float
    descriptor: np.ndarray
    occluded: np.ndarray | None = None
    mask: np.ndarray | None = None


def face_outside_fraction(crop_landmarks: np.ndarray, outside: np.ndarray) -> float:
    """Share of the face oval (crop pixels) that lies outside the photo."""
    oval = geometry.face_oval_region(crop_landmarks, outside.shape[0])
    return float((oval & outside).sum() / max(int(oval.sum()), 1))


def check_face(crop_landmarks: np.ndarray, outside: np.ndarray, pose: L.HeadPose,
               config: PrepConfig) -> tuple[str, str] | None:
    """(reason, detail) when an aligned face must not become pairs, else None.

    Args:
      crop_landmarks: [478, 2] in crop pixels.
      outside: bool [R, R], crop pixels outside the photo.
      pose: `landmarks.head_pose` of the crop landmarks.
      config: thresholds.
    """
    padding = float(outside.mean())
    if padding > config.max_padding:
        return INSUFFICIENT_CONTEXT, (f"{padding:.0%} of the crop lies outside the photo "
                                      f"> --max_padding={config.max_padding:g}")
    cut = face_outside_fraction(crop_landmarks, outside)
    if cut > MAX_FACE_OUTSIDE:
        return INSUFFICIENT_CONTEXT, (f"{cut:.0%} of the face itself lies outside the photo "
                                      f"(more than {MAX_FACE_OUTSIDE:.0%})")
    if not pose.error <= config.max_landmark_error:
        return IMPLAUSIBLE_LANDMARKS, (f"landmarks do not pose as a face: rigid points off by "
                                       f"{pose.error:.2f} inter-ocular distances > "
                                       f"--max_landmark_error={config.max_landmark_error:g}")
    if not pose.error_all <= 2 * config.max_landmark_error:
        # Expressions move mouth and jaw: all points get twice the rigid allowance.
        return IMPLAUSIBLE_LANDMARKS, (f"landmarks do not pose as a face: all points off by "
                                       f"{pose.error_all:.2f} inter-ocular distances > 2 x "
                                       f"--max_landmark_error={config.max_landmark_error:g}")
    if abs(pose.yaw) > config.max_yaw:
        return IMPLAUSIBLE_LANDMARKS, (f"head turned {abs(pose.yaw):.0f} degrees > --max_yaw="
                                       f"{config.max_yaw:g}: near-profile landmarks are guesses")
    if abs(pose.pitch) > config.max_pitch:
        return IMPLAUSIBLE_LANDMARKS, (f"head tilted {abs(pose.pitch):.0f} degrees > --max_pitch="
                                       f"{config.max_pitch:g}")
    return None


def pair_mask(clean: np.ndarray, occluded: np.ndarray) -> np.ndarray:
    """uint8 [R, R, 1] 0/255: where an aligned real pair differs (the occluder).

    Per-pixel colour difference above PAIR_THRESHOLD, opened to drop JPEG
    speckle, closed and hole-filled so the occluder is one solid region,
    components under 0.1% of the crop dropped, then grown by one pixel for
    the soft edge.
    """
    res = clean.shape[0]
    diff = np.abs(clean.astype(np.int16) - occluded.astype(np.int16)).max(-1)
    m = (diff > PAIR_THRESHOLD).astype(np.uint8)
    k = max(3, (res // 64) | 1)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, lab, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros_like(m)
    for i in range(1, n):
        if st[i, cv2.CC_STAT_AREA] >= 0.001 * res * res:
            keep[lab == i] = 1
    # Fill holes: everything not reachable from the border through background.
    flood = np.pad(1 - keep, 1, constant_values=1)
    cv2.floodFill(flood, None, (0, 0), 2)
    keep = np.where(flood[1:-1, 1:-1] == 2, 0, 1).astype(np.uint8)
    keep = cv2.dilate(keep, np.ones((3, 3), np.uint8))
    return (keep * 255)[..., None]


class ProgressLog:
    """Logs a worker's count and rate at 1, 10, 100 and every 15 s (Beam shows no progress)."""

    def __init__(self, unit: str):
        self.unit = unit
        self.n = self.rejected = 0
        self._t0 = self._last = time.time()

    def tick(self, rejected: bool = False) -> None:
        self.n += 1
        self.rejected += int(rejected)
        now = time.time()
        if now - self._last > 15 or self.n in (1, 10, 100):
            self._last = now
            logging.info("data_prep worker %d: %d %s (%.1f/s), %d rejected", os.getpid(),
                         self.n, self.unit, self.n / max(now - self._t0, 1e-6), self.rejected)


class AlignFacesFn(beam.DoFn):
    """Decode -> landmarks -> checks -> aligned, padded crop, for one photo (or pair).

    The FaceAnalyzer is created once per DoFn instance in setup(): loading the
    landmarker costs far more than one image.
    """

    REJECTED = "rejected"
    ACCEPTED = "accepted"

    def __init__(self, config: PrepConfig):
        self.config = config
        self._read = Metrics.counter(METRICS_NAMESPACE, "images_read")
        self._faces_counter = Metrics.counter(METRICS_NAMESPACE, "faces_accepted")
        self._animated = Metrics.counter(METRICS_NAMESPACE, "animations_first_frame_used")
        self._rejected = {r: Metrics.counter(METRICS_NAMESPACE, f"rejected_{r}") for r in REJECT_REASONS}
        self._timers = {k: Metrics.distribution(METRICS_NAMESPACE, f"ms_{k}")
                        for k in ("decode", "landmarks", "align")}

    def setup(self):
        c = self.config
        # Several faces even in largest-face mode: MediaPipe orders by score, not size.
        self.analyzer = FaceAnalyzer(mode="image", num_faces=c.max_faces,
                                     min_confidence=c.min_confidence, model_path=c.landmarker_model)
        self.canonical = L.canonical_face(c.landmarker_model)
        self._log = ProgressLog("images read")

    def teardown(self):
        analyzer = getattr(self, "analyzer", None)
        if analyzer is not None:
            analyzer.close()
            self.analyzer = None

    def _tick(self, key: str, t0: float) -> float:
        t1 = time.perf_counter()
        self._timers[key].update(int((t1 - t0) * 1000))
        return t1

    def _progress(self, rejected: bool) -> None:
        self._log.tick(rejected)

    def _reject(self, source: Source, reason: str, detail: str):
        self._rejected[reason].inc()
        self._progress(True)
        locator = (sources.printable(source.locator) if isinstance(source.locator, str)
                   else "/".join(map(str, source.locator)))
        return beam.pvalue.TaggedOutput(self.REJECTED, (source.source_id, locator, reason, detail))

    def _read_image(self, locator: str) -> np.ndarray:
        try:
            with FileSystems.open(locator, compression_type="uncompressed") as f:
                data = f.read()
        except Exception as e:  # noqa: BLE001 - permissions, vanished file, ...
            raise images.DecodeError(images.UNREADABLE, f"cannot read file: {type(e).__name__}: {e}") from None
        image = images.decode_image(data, self.config.max_pixels)
        frames = images.animation_frames(data)
        if frames > 1:
            self._animated.inc()
            logging.warning("data_prep: %s is an animation of %d frames: only its first frame is "
                            "used", sources.printable(locator), frames)
        return image

    def process(self, element):
        source, payload = element if isinstance(element, tuple) else (element, None)
        self._read.inc()
        t = time.perf_counter()
        partner = None
        try:
            if payload is not None:       # an array from a TFDS reader
                image = images.to_uint8(payload)
            else:
                image = self._read_image(source.locator)
        except images.DecodeError as e:
            yield self._reject(source, e.reason, e.detail)
            return
        if source.clean_locator is not None:
            # Paired input: the landmarks (and the alignment) come from the clean photo.
            try:
                partner, image = image, self._read_image(source.clean_locator)
            except images.DecodeError as e:
                yield self._reject(source, e.reason, f"clean original {source.clean_id}: {e.detail}")
                return
        t = self._tick("decode", t)
        yield from self._faces(source, image, partner, t)

    def _faces(self, source: Source, image: np.ndarray, partner: np.ndarray | None, t: float):
        c = self.config
        if partner is not None and partner.shape[:2] != image.shape[:2]:
            # A rescaled copy is not pixel-aligned with its original (resampling, crops
            # of a pixel): its mask would be the rescaling, not the occluder.
            (h, w), (ph, pw) = image.shape[:2], partner.shape[:2]
            yield self._reject(source, PAIR_MISMATCH, f"occluded photo is {pw}x{ph} but its clean "
                               f"original {source.clean_id} is {w}x{h}; a pair must be the same size")
            return
        faces = self.analyzer.detect(image)
        t = self._tick("landmarks", t)
        if not faces:
            yield self._reject(source, NO_FACE, f"no face found in {image.shape[1]}x{image.shape[0]} image"
                               + (" (the clean original)" if partner is not None else ""))
            return
        faces = sorted(faces, key=lambda f: (-f.area, float(f.bbox[0]), float(f.bbox[1])))
        kept, first_problem = [], None
        for face in faces:
            if not c.all_faces and face.width < MAIN_FACE_SHARE * faces[0].width:
                break  # a background face is not the photo's subject
            problem, aligned = self._align(face, image)
            if problem:
                first_problem = first_problem or problem
                continue
            kept.append((face, aligned))
            if not c.all_faces or partner is not None:
                break
        if not kept:
            yield self._reject(source, *first_problem)
            return
        t = self._tick("align", t)
        for k, (face, (M, crop, lms)) in enumerate(kept):
            record_source = source.source_id if not c.all_faces else f"{source.source_id}#face{k}"
            occluded = mask = None
            if partner is not None:
                occluded = align.padded_crop(partner, M, c.resolution).image
                mask = pair_mask(crop.image, occluded)
                cover = float((mask > 0).mean())
                if cover < 0.002 or cover > 0.6:
                    yield self._reject(source, PAIR_MISMATCH,
                                       f"the aligned pair differs on {cover:.1%} of the crop (expected "
                                       "an occluder: 0.2%-60%); is it the same photo?")
                    return
                occluded = np.where(mask > 0, occluded, crop.image)
            self._faces_counter.inc()
            yield AlignedFace(record_source=record_source, source_id=source.source_id,
                              group=source.group_key, clean=crop.image, landmarks=lms,
                              padding_fraction=crop.padding_fraction,
                              descriptor=descriptor(crop.image), occluded=occluded, mask=mask)
        self._progress(False)
        yield beam.pvalue.TaggedOutput(self.ACCEPTED, source.source_id)

    def _align(self, face, image: np.ndarray):
        """((reason, detail), None) or (None, (M, padded crop, crop landmarks))."""
        c = self.config
        if face.width < c.min_face_size:
            return (FACE_TOO_SMALL, f"face is {face.width:.0f} px wide < --min_face_size="
                    f"{c.min_face_size}"), None
        M = align.alignment_matrix(face.landmarks, c.resolution)
        lms = align.transform_landmarks(face.landmarks, M)
        outside = align.outside_photo(M, image.shape[:2], c.resolution)
        problem = check_face(lms, outside, L.head_pose(lms, self.canonical), c)
        if problem:
            return problem, None
        return None, (M, align.padded_crop(image, M, c.resolution), lms)
