"""The Beam pipeline: photos -> aligned faces -> groups and splits -> pairs -> shards.

Graph (identical on DirectRunner, Dataflow, Flink, Spark):

    sources (driver-listed, sorted; skipped entries counted as rejections)
      -> AlignFacesFn    decode, landmarks, checks, FFHQ-style padded crop
           main:      AlignedFace (the crop, its landmarks, a near-duplicate
                      descriptor; paired input: the occluded crop and mask)
           rejected:  (source_id, path, reason, detail)
           accepted:  source_id
      -> Plan (one element, a side input): groups = --group_by names merged
           with near-duplicates; split boundaries over the groups; shard counts
      -> SynthesizeFn    split from the plan, occluders (or the real pair), encode
      -> + one empty element per (split, shard)  -> GroupByKey -> WriteShardFn
      -> FinalizeFn (side inputs: shard results, rejections, accepted, samples, plan)
           writes dataset_info.json, rejected.tsv, contact_sheet.png

Determinism: groups, splits and shards come from sha256 of ids and from a
plan computed from the sorted list of faces, every random draw from
`synth.variant_rng(seed, source_id, variant)`, and each shard is written
sorted by record key, so records and shard files do not depend on the runner,
the number of workers or bundle boundaries.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Iterable, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from PIL import Image

from data_prep import occluders, sources, synth
from data_prep.config import PrepConfig
from data_prep.sources import Source
from deocc_jax import __version__
from deocc_jax.data import features, writer
from deocc_jax.faces import FaceAnalyzer
from deocc_jax.faces import align
from deocc_jax.faces import landmarks as L
from deocc_jax.io import images

METRICS_NAMESPACE = "deocc.data_prep"
CONTACT_SHEET = "contact_sheet.png"

# Face-level rejection reasons.
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
INSUFFICIENT_CONTEXT = "insufficient_context"   # too much of the crop (or face) outside the photo
IMPLAUSIBLE_LANDMARKS = "implausible_landmarks"  # landmarks that do not pose as a face, or near profile
PAIR_MISMATCH = "pair_mismatch"                  # paired input: sizes or contents do not pair up
FACE_REASONS = (NO_FACE, FACE_TOO_SMALL, INSUFFICIENT_CONTEXT, IMPLAUSIBLE_LANDMARKS, PAIR_MISMATCH)
# Every reason an entry can be rejected for, in the order dataset_info.json lists them.
REJECT_REASONS = sources.LISTING_REASONS + images.REASONS + FACE_REASONS
PAIRED = "paired"
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
# Splits and shards (pure functions).
# ----------------------------------------------------------------------------

def _id_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _is_remote(path: str) -> bool:
    return "://" in path


def split_thresholds(group_ids: Sequence[str],
                     splits: Sequence[tuple[str, float]]) -> list[tuple[int, str]]:
    """Hash boundaries that give each split its share of these groups.

    Groups are ordered by sha256 and cut at the split fractions (largest
    remainder), giving each split with a non-zero fraction at least one group
    when there are enough. A group's split is then a function of its own hash
    and these boundaries, so every photo (variant, face) of a person lands in
    the same split. The seed does not enter: the test set stays fixed across
    seeds.

    Returns:
      [(upper hash bound exclusive, split name)] in ascending order.
    """
    hashes = sorted({_id_hash(s) for s in group_ids})
    n = len(hashes)
    fr = np.array([f for _, f in splits], np.float64)
    counts = np.floor(fr * n).astype(int)
    for i in np.argsort(-(fr * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # Tiny datasets: move one group into each empty split that asked for some.
    for i in range(len(splits)):
        if fr[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    out, pos = [], 0
    for (name, _), c in zip(splits, counts):
        pos += int(c)
        bound = hashes[pos] if pos < n else 2 ** 64
        out.append((bound, name))
    return out


def split_of(group_id: str, thresholds: Sequence[tuple[int, str]]) -> str:
    h = _id_hash(group_id)
    for bound, name in thresholds:
        if h < bound:
            return name
    return thresholds[-1][1]


def records_per_shard(resolution: int) -> int:
    """About 128 MiB per shard (a record is roughly 6 bytes per crop pixel)."""
    return int(np.clip((128 << 20) // (resolution * resolution * 6), 64, 10000))


def shard_of(record_key: str, num_shards: int) -> int:
    return _id_hash("shard:" + record_key) % num_shards


def record_key(source_id: str, variant: int) -> str:
    return f"{source_id}\x00{variant:06d}"


# ----------------------------------------------------------------------------
# Groups: named persons merged with near-duplicate photos.
# ----------------------------------------------------------------------------

DESCRIPTOR_SIZE = 48


def descriptor(clean: np.ndarray) -> np.ndarray:
    """float16 [32*32]: a band-pass thumbnail of the aligned face's centre, unit norm.

    Aligned crops of the same photo (re-saved, rescaled, recoloured, noised,
    rotated or mirrored before alignment) are nearly equal here; band-pass
    (difference of Gaussians) drops lighting and noise but keeps the face's
    structure. Measured on the shared sets: copies mostly above 0.97, no pair
    of LFW faces above 0.93, a few similar-looking UTKFace people at 0.93-0.95
    (see data_prep/README.md).
    """
    g = cv2.cvtColor(cv2.resize(clean, (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2GRAY).astype(np.float32)
    band = cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 4.0)
    c = band[8:40, 8:40]
    c = c - c.mean()
    return (c / max(float(np.linalg.norm(c)), 1e-6)).reshape(-1).astype(np.float16)


def near_duplicate_pairs(descriptors: np.ndarray, threshold: float, block: int = 2048
                         ) -> list[tuple[int, int]]:
    """(i, j), i < j, of faces whose descriptors (or one's mirror image) correlate > threshold."""
    d = np.asarray(descriptors, np.float32)
    n = len(d)
    side = int(round(math.sqrt(d.shape[1]))) if n else 0
    mirrored = d.reshape(n, side, side)[:, :, ::-1].reshape(n, -1) if n else d
    out = []
    for a in range(0, n, block):
        sim = np.maximum(d[a:a + block] @ d.T, d[a:a + block] @ mirrored.T)
        ii, jj = np.nonzero(sim > threshold)
        out += [(a + i, j) for i, j in zip(ii.tolist(), jj.tolist()) if a + i < j]
    return out


def merge_groups(keys: Sequence[str], groups: Sequence[str], pairs: Iterable[tuple[int, int]]
                 ) -> dict[str, str]:
    """key -> final group: faces of one named group, or linked by a pair, are one group.

    A final group is named by its smallest member group (deterministic).
    """
    parent = {g: g for g in groups}

    def find(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i, j in pairs:
        a, b = find(groups[i]), find(groups[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {k: find(g) for k, g in zip(keys, groups)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where each face goes: computed once from every accepted face.

    Attributes:
      group_of: record source -> final group.
      thresholds: split boundaries over the final groups.
      shards: split -> number of shards.
      stats: group statistics for dataset_info.json.
      records: split -> records the accepted faces must produce (checked at the end).
    """
    group_of: dict[str, str]
    thresholds: list[tuple[int, str]]
    shards: dict[str, int]
    stats: dict[str, Any]
    records: dict[str, int] = dataclasses.field(default_factory=dict)

    def split(self, record_source: str) -> str:
        return split_of(self.group_of[record_source], self.thresholds)


def make_plan(entries: Sequence[tuple[str, str, np.ndarray, int]], config: PrepConfig,
              num_shards: int | None) -> Plan:
    """Plan from [(record source, named group, descriptor, records)] of every accepted face."""
    entries = sorted(entries, key=lambda e: e[0])
    keys = [e[0] for e in entries]
    named = [e[1] for e in entries]
    pairs = []
    if config.near_duplicates > 0 and entries:
        pairs = near_duplicate_pairs(np.stack([e[2] for e in entries]), config.near_duplicates)
    group_of = merge_groups(keys, named, pairs)
    finals = sorted(set(group_of.values()))
    thresholds = split_thresholds(finals, config.splits) if finals else [(2 ** 64, config.splits[0][0])]
    per_split: dict[str, int] = collections.Counter()
    for (key, _, _, n) in entries:
        per_split[split_of(group_of[key], thresholds)] += n
    shards = {name: int(num_shards) if num_shards else
              max(1, math.ceil(per_split.get(name, 0) / records_per_shard(config.resolution)))
              for name, _ in config.splits}
    sizes = collections.Counter(group_of.values())
    photos_per_named = collections.Counter(named)
    stats = {
        "faces": len(keys),
        "groups": len(finals),
        "groups_with_several_faces": sum(1 for v in sizes.values() if v > 1),
        "largest_group": max(sizes.values(), default=0),
        "named_groups_with_several_faces": sum(1 for v in photos_per_named.values() if v > 1),
        "near_duplicate_pairs": len(pairs),
        "groups_per_split": dict(sorted(collections.Counter(
            split_of(g, thresholds) for g in finals).items())),
    }
    return Plan(group_of=group_of, thresholds=thresholds, shards=shards, stats=stats,
                records=dict(per_split))


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
    res = outside.shape[0]
    oval = occluders.fill_polygons(res, [np.asarray(crop_landmarks, np.float64)[list(L.FACE_OVAL)]]) > 0.5
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


def animation_frames(data: bytes) -> int:
    """Frames of an animated image (GIF, APNG, WebP, multi-page TIFF); 1 for a still one.

    Only the header and a second frame's presence are read (`is_animated`),
    and only for formats that can animate.
    """
    if not data.startswith((b"GIF8", b"\x89PNG", b"RIFF", b"II*\x00", b"MM\x00*")):
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(getattr(im, "n_frames", 1)) if getattr(im, "is_animated", False) else 1
    except Exception:  # noqa: BLE001 - decode_image has already judged the file readable
        return 1


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
        frames = animation_frames(data)
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


class SynthesizeFn(beam.DoFn):
    """Occluded variants of one aligned face (or its real pair), encoded, keyed by shard."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._pairs = Metrics.counter(METRICS_NAMESPACE, "pairs_written")
        self._timers = {k: Metrics.distribution(METRICS_NAMESPACE, f"ms_{k}")
                        for k in ("synthesize", "encode")}

    def setup(self):
        c = self.config
        self.library = occluders.OccluderLibrary(c.occluders_dir) if c.occluders_dir else None
        self.synth_config = c.synth_config()
        self.canonical = L.canonical_face(c.landmarker_model)
        self._log = ProgressLog("faces given occluders")

    def process(self, face: AlignedFace, plan: Plan):
        self._log.tick()
        c = self.config
        split = plan.split(face.record_source)
        n_shards = plan.shards[split]
        if face.occluded is not None:
            record = features.encode_example(features.Pair(
                clean=face.clean, occluded=face.occluded, mask=face.mask, alpha=face.mask,
                category=PAIRED, source_id=face.record_source, variant=0, landmarks=face.landmarks,
                padding_fraction=face.padding_fraction))
            key = record_key(face.record_source, 0)
            self._pairs.inc()
            yield (split, shard_of(key, n_shards)), (key, PAIRED, record)
            return
        geo = occluders.FaceGeometry.from_landmarks(face.landmarks, c.resolution, self.canonical)
        stats = synth.photo_stats(face.clean, geo)
        for v in range(c.variants_per_face):
            t = time.perf_counter()
            rng = synth.variant_rng(c.seed, face.record_source, v)
            s = synth.synthesize(face.clean, face.landmarks, rng, self.library, self.synth_config,
                                 geometry=geo, stats=stats)
            t1 = time.perf_counter()
            record = features.encode_example(features.Pair(
                clean=s.clean, occluded=s.occluded, mask=s.mask, alpha=s.alpha,
                category=s.category, source_id=face.record_source, variant=v,
                landmarks=face.landmarks, padding_fraction=face.padding_fraction))
            self._timers["synthesize"].update(int((t1 - t) * 1000))
            self._timers["encode"].update(int((time.perf_counter() - t1) * 1000))
            key = record_key(face.record_source, v)
            self._pairs.inc()
            yield (split, shard_of(key, n_shards)), (key, s.category, record)


class ReadTfdsFn(beam.DoFn):
    """Reads one index range of a prepared TFDS split as (Source, image array)."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str):
        self.name, self.split, self.data_dir, self.image_key = name, split, data_dir, image_key

    def process(self, chunk: tuple[int, int]):
        import tensorflow_datasets as tfds  # heavy; only TFDS inputs need it
        start, end = chunk
        ds = tfds.load(self.name, split=f"{self.split}[{start}:{end}]", data_dir=self.data_dir,
                       download=False, shuffle_files=False)
        for i, ex in enumerate(tfds.as_numpy(ds)):
            idx = start + i
            yield Source(tfds_source_id(self.name, self.split, idx),
                         ("tfds", self.name, self.split, idx)), ex[self.image_key]


def tfds_source_id(name: str, split: str, index: int) -> str:
    return f"tfds/{name}/{split}/{index:09d}"


def prepare_tfds(name: str, split: str, data_dir: str | None, manual_dir: str | None
                 ) -> tuple[int, str]:
    """Prepares a TFDS dataset (manual_dir for datasets like celeb_a_hq) on the driver.

    Returns:
      (number of examples in the split, name of its image feature).
    """
    import tensorflow_datasets as tfds  # heavy; only TFDS inputs need it
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    image_keys = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
        raise ValueError(f"TFDS dataset {name!r} has no Image feature: {list(builder.info.features)}")
    return builder.info.splits[split].num_examples, image_keys[0]


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------

class WriteShardFn(beam.DoFn):
    """Sorts one shard's records by key and writes it in both formats."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def process(self, element, plan: Plan):
        (split, index), values = element
        values = sorted(v for v in values if v is not None)
        keys = [k for k, _, _ in values]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate record keys in {split} shard {index}")
        n_shards = plan.shards[split]
        records = [r for _, _, r in values]
        if _is_remote(self.output_dir):
            # writer.write_shard writes local files; stage them, then copy out.
            tmp = tempfile.mkdtemp(prefix="deocc_shard_")
            try:
                writer.write_shard(tmp, split, index, n_shards, records)
                for fmt in ("tfrecord", "array_record"):
                    name = features.shard_name(split, fmt, index, n_shards)
                    FileSystems.copy([os.path.join(tmp, name)], [FileSystems.join(self.output_dir, name)])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            writer.write_shard(self.output_dir, split, index, n_shards, records)
        yield {"split": split, "index": index, "num_records": len(records),
               "categories": dict(collections.Counter(c for _, c, _ in values))}


def contact_sheet(samples: Iterable[bytes], thumb: int = 128, per_row: int = 4) -> np.ndarray:
    """RGB image: rows of (clean | occluded | mask) triplets with category labels."""
    tiles = []
    for rec in samples:
        d = features.decode_example(rec)
        trip = [d["clean"], d["occluded"], np.repeat(d["mask"], 3, -1)]
        size = min(thumb, trip[0].shape[0])
        trip = [cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA) for x in trip]
        tile = np.concatenate(trip, 1)
        cv2.putText(tile, d["category"], (2, 9), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1,
                    cv2.LINE_AA)
        tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
    if not tiles:
        return np.zeros((thumb, 3 * thumb, 3), np.uint8)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i:i + per_row], 1) for i in range(0, len(tiles), per_row)]
    return np.concatenate(rows, 0)


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as f:
        f.write(data)


def check_records(expected: dict[str, int], written: dict[str, int]) -> None:
    """Raises unless every record the accepted faces produced is in a shard, per split.

    A runner that drops elements (seen once with DirectRunner's multi-processing mode
    on 31k records: 4,476 records never reached the shard writers) must fail the build
    rather than install a dataset with faces silently missing.
    """
    lost = {name: n - written.get(name, 0) for name, n in expected.items()
            if n != written.get(name, 0)}
    if lost:
        raise RuntimeError(
            f"accounting error: records missing from the shards (split: expected - written) "
            f"{lost}; {sum(expected.values())} produced, {sum(written.values())} written. The "
            "runner lost elements; nothing was installed. Retry, e.g. with "
            "--direct_running_mode=in_memory")


class FinalizeFn(beam.DoFn):
    """Writes dataset_info.json, rejected.tsv and the contact sheet, after all shards."""

    def __init__(self, output_dir: str, info_base: dict, num_read: int):
        self.output_dir = output_dir
        self.info_base = info_base
        self.num_read = num_read

    def process(self, _, shard_results, rejected, accepted, samples, plan: Plan):
        rejected = sorted(rejected)
        by_reason = {r: 0 for r in REJECT_REASONS}
        for _, _, reason, _ in rejected:
            by_reason[reason] += 1
        splits: dict[str, dict] = {}
        categories = collections.Counter()
        for r in sorted(shard_results, key=lambda r: (r["split"], r["index"])):
            s = splits.setdefault(r["split"], {"num_records": 0, "num_shards": 0, "categories": {}})
            s["num_records"] += r["num_records"]
            s["num_shards"] += 1
            for c, n in r["categories"].items():
                s["categories"][c] = s["categories"].get(c, 0) + n
                categories[c] += n
        for s in splits.values():
            s["categories"] = dict(sorted(s["categories"].items()))
        num_accepted = len(set(accepted))
        if num_accepted + len(rejected) != self.num_read:
            raise RuntimeError(f"accounting error: read {self.num_read} entries but "
                               f"{num_accepted} made pairs and {len(rejected)} were rejected")
        check_records(plan.records, {name: s["num_records"] for name, s in splits.items()})
        info = dict(self.info_base)
        info.update({
            "num_records": sum(s["num_records"] for s in splits.values()),
            "splits": splits,
            "categories": dict(sorted(categories.items())),
            "images": {"read": self.num_read, "accepted": num_accepted, "rejected": len(rejected)},
            "rejected": by_reason,
            "groups": plan.stats,
        })
        _write_bytes(FileSystems.join(self.output_dir, features.DATASET_INFO),
                     (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
        lines = ["source_id\tpath\treason\tdetail"] + [
            "\t".join(str(x).replace("\t", " ").replace("\n", " ") for x in row) for row in rejected]
        _write_bytes(FileSystems.join(self.output_dir, "rejected.tsv"), ("\n".join(lines) + "\n").encode())
        sheet = contact_sheet(rec for _, rec in sorted(samples))
        ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        _write_bytes(FileSystems.join(self.output_dir, CONTACT_SHEET), png.tobytes())
        logging.info("data_prep: read %d entries, %d records in %s, rejected %s",
                     self.num_read, info["num_records"],
                     {k: v["num_records"] for k, v in splits.items()},
                     {k: v for k, v in by_reason.items() if v})
        yield info


def _plan_entry(face: AlignedFace, variants: int) -> tuple[str, str, np.ndarray, int]:
    return face.record_source, face.group, face.descriptor, 1 if face.occluded is not None else variants


def _empty_shards(plan: Plan):
    for name, n in sorted(plan.shards.items()):
        for i in range(n):
            yield (name, i), None


def build_pipeline(p: beam.Pipeline, inputs: list[Source], output_dir: str, config: PrepConfig,
                   num_shards: int | None = None, occluder_version: str | None = None,
                   tfds_spec: dict | None = None, skipped: Sequence[sources.Skipped] = (),
                   extra_info: dict | None = None) -> None:
    """Adds the whole data-prep graph to pipeline `p`.

    Args:
      p: the pipeline.
      inputs: every photo (for TFDS, the ids with ("tfds", ...) locators).
      output_dir: where shards and metadata go (local or a Beam filesystem).
      config: what to produce.
      num_shards: shards per split; default from the number of records.
      occluder_version: recorded in dataset_info.json.
      tfds_spec: {"name", "split", "data_dir", "image_key"} when reading TFDS.
      skipped: entries found while listing but not processed (counted as rejected).
      extra_info: more keys for dataset_info.json.
    """
    ids = [s.source_id for s in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError("source ids are not unique")
    if tfds_spec:
        n = len(inputs)
        chunk = 256
        elements = (p | "TfdsChunks" >> beam.Create([(i, min(i + chunk, n)) for i in range(0, n, chunk)])
                    | "ReadTfds" >> beam.ParDo(ReadTfdsFn(tfds_spec["name"], tfds_spec["split"],
                                                           tfds_spec.get("data_dir"), tfds_spec["image_key"])))
    else:
        elements = p | "Sources" >> beam.Create(inputs) | "Spread" >> beam.Reshuffle()
    aligned = elements | "AlignFaces" >> beam.ParDo(AlignFacesFn(config)).with_outputs(
        AlignFacesFn.REJECTED, AlignFacesFn.ACCEPTED, main="faces")
    variants = config.variants_per_face
    plan = (aligned.faces
            | "PlanEntries" >> beam.Map(_plan_entry, variants)
            | "AllFaces" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(make_plan, config, num_shards))
    plan_side = beam.pvalue.AsSingleton(plan)
    records = aligned.faces | "Synthesize" >> beam.ParDo(SynthesizeFn(config), plan_side)
    # One empty element per shard so that every shard file exists even if empty.
    empty = plan | "AllShards" >> beam.FlatMap(_empty_shards)
    shard_results = (
        (records, empty) | "WithEmpty" >> beam.Flatten()
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(output_dir), plan_side))
    samples = (
        records
        | "SampleKeys" >> beam.Map(lambda kv: (hashlib.sha256(kv[1][0].encode()).hexdigest(), kv[1][2]))
        | "Sample" >> beam.combiners.Top.Smallest(config.num_contact_pairs, key=lambda x: x[0]))
    listing = [(s.source_id, s.path, s.reason, s.detail) for s in skipped]
    rejected = ((aligned[AlignFacesFn.REJECTED], p | "Skipped" >> beam.Create(listing))
                | "AllRejected" >> beam.Flatten())
    info_base = {
        "format_version": features.FORMAT_VERSION,
        "resolution": config.resolution,
        "seed": config.seed,
        "variants_per_face": config.variants_per_face,
        "split_fractions": dict(config.splits),
        "feature_spec": features.feature_spec_json(),
        "code_version": __version__,
        "occluder_set": {"dir": config.occluders_dir, "version": occluder_version},
        "config": {**{k: v for k, v in dataclasses.asdict(config).items()
                      if k not in ("splits", "occluders_dir")},
                   "category_weights": dict(config.category_weights)},
        "formats": ["tfrecord", "array_record"],
        **(extra_info or {}),
    }
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(
             FinalizeFn(output_dir, info_base, len(inputs) + len(listing)),
             beam.pvalue.AsList(shard_results),
             beam.pvalue.AsList(rejected),
             beam.pvalue.AsList(aligned[AlignFacesFn.ACCEPTED]),
             beam.pvalue.AsSingleton(samples),
             plan_side))
