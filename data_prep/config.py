"""The one place for data-prep settings and their defaults.

`PrepConfig` holds everything that decides the records (it is written into
dataset_info.json). `build_dataset`'s keyword arguments and the flags of
`python -m data_prep.build` take their defaults from it; nothing else restates
a default. `validate` checks a config up front, before any photo is read, and
raises `errors.InvalidInputError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from data_prep import synth
from deocc_jax import errors
from deocc_jax.io import images

# Resolutions must divide by the largest downsampling factor of the models
# (2**depth with depth <= 5: U-Net encoders and PatchGAN discriminators).
RESOLUTION_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """Everything that decides the records (and so belongs in dataset_info.json).

    Attributes:
      resolution: side of the aligned crops in pixels; a multiple of 32 (the
        models halve it up to five times).
      variants_per_face: occluded versions of each face (paired input: one
        record per occluded photo, whatever this says).
      seed: seeds every random draw, with the source id and variant index.
      splits: ((name, fraction), ...); fractions sum to 1.
      occluders_dir: folder of image occluders, or None for procedural only.
      max_pixels: larger images are rejected as too_large before decoding.
      all_faces: keep every face above min_face_size instead of the largest.
      max_faces: the most faces detected per photo.
      min_face_size: smallest face width (landmark box, source pixels) kept.
      min_confidence: MediaPipe detection/presence threshold.
      max_padding: the largest share of the crop that may lie outside the
        photo (filled FFHQ-style: reflected, blurred, faded to the photo's
        median colour); more is rejected as insufficient_context, as is a
        face with over 10% of its own outline outside the photo. 0.65 keeps
        tight face crops such as UTKFace's (the face fills the photo, and
        56-64% of an FFHQ-framed crop lies outside it) while rejecting those
        where the photo is smaller than the face, so chin or cheeks would be
        fill. See data_prep/README.md for the measured accept rates.
      max_yaw, max_pitch: head rotations (degrees, from the landmarks) beyond
        which a face is rejected as implausible_landmarks: occluders are
        placed from landmarks, and near-profile landmarks are guesses.
      max_landmark_error: the largest RMS distance (in inter-ocular
        distances) between the rigid landmarks (eye corners, nose,
        cheekbones) and MediaPipe's canonical face posed to fit them; all
        468 points may be off by twice this (expressions). More means the
        landmarks do not form a face (measured on 1,400 LFW, UTKFace and
        faces/ photos: at most 0.16 rigid, 0.20 all points).
      category_weights: category -> weight (synth.DEFAULT_WEIGHTS by default).
      shadow_prob, image_share: see synth.SynthConfig.
      jpeg_prob: probability that a pair goes through one JPEG round trip,
        applied to clean and occluded alike (same blocks, same quality), so
        that occluder edges carry the compression a photo's edges carry.
      jpeg_quality: (lowest, highest) JPEG quality drawn for it.
      group_by: regular expression over source ids whose first group (or the
        whole match) names a person, e.g. r"^lfw/(.+)_\\d{4}\\.jpg$"; every
        photo of a group goes to the same split. None: names mean nothing.
      near_duplicates: correlation of aligned faces (band-passed thumbnails,
        `pipeline.descriptor`) above which two photos are one group (the same
        photo re-saved, cropped, mirrored or colour-shifted); 0 turns the check
        off. It errs towards merging: a false merge only puts two people in
        one split. Cost grows with n^2 (about 9 s for 10,000 faces on 2 cores).
      clean_dir: paired input: the folder of clean originals that the
        occluded photos of --input are matched to by name (None: synthesise).
      landmarker_model: explicit face_landmarker.task, else assets resolution.
      num_contact_pairs: pairs on the contact sheet.
    """
    resolution: int = 256
    variants_per_face: int = 4
    seed: int = 0
    splits: tuple[tuple[str, float], ...] = (("train", 0.9), ("validation", 0.05), ("test", 0.05))
    occluders_dir: str | None = None
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    all_faces: bool = False
    max_faces: int = 4
    min_face_size: int = 32
    min_confidence: float = 0.3
    max_padding: float = 0.65
    max_yaw: float = 60.0
    max_pitch: float = 45.0
    max_landmark_error: float = 0.2
    category_weights: tuple[tuple[str, float], ...] = tuple(sorted(synth.DEFAULT_WEIGHTS.items()))
    shadow_prob: float = 0.4
    image_share: float = 0.7
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (50, 95)
    group_by: str | None = None
    near_duplicates: float = 0.93
    clean_dir: str | None = None
    landmarker_model: str | None = None
    num_contact_pairs: int = 36

    def synth_config(self) -> synth.SynthConfig:
        return synth.SynthConfig(weights=dict(self.category_weights), image_share=self.image_share,
                                 shadow_prob=self.shadow_prob, jpeg_prob=self.jpeg_prob,
                                 jpeg_quality=tuple(self.jpeg_quality))


def default(name: str):
    """The default of one PrepConfig field (what the flag of that name shows)."""
    field = {f.name: f for f in dataclasses.fields(PrepConfig)}[name]
    return field.default


def parse_splits(spec: str) -> tuple[tuple[str, float], ...]:
    """"train=0.9,validation=0.05,test=0.05" -> (("train", 0.9), ...)."""
    out = []
    for part in spec.split(","):
        name, sep, frac = part.partition("=")
        name = name.strip()
        if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise errors.InvalidInputError(
                f"--splits: bad split {part!r} in {spec!r}: expected NAME=FRACTION")
        try:
            out.append((name, float(frac)))
        except ValueError:
            raise errors.InvalidInputError(f"--splits: {frac!r} in {spec!r} is not a number") from None
    if len({n for n, _ in out}) != len(out):
        raise errors.InvalidInputError(f"--splits: duplicate split names in {spec!r}")
    if any(f < 0 for _, f in out) or not math.isclose(sum(f for _, f in out), 1.0, abs_tol=1e-6):
        raise errors.InvalidInputError(f"--splits: fractions in {spec!r} must be >= 0 and sum to 1")
    return tuple(out)


def format_splits(splits) -> str:
    return ",".join(f"{n}={f:g}" for n, f in splits)


def validate(c: PrepConfig) -> None:
    """Raises errors.InvalidInputError naming the flag of the first bad value."""
    def bad(flag: str, why: str):
        raise errors.InvalidInputError(f"--{flag}: {why}")

    if c.resolution < RESOLUTION_MULTIPLE or c.resolution % RESOLUTION_MULTIPLE:
        bad("resolution", f"{c.resolution} is not a multiple of {RESOLUTION_MULTIPLE} (>= "
            f"{RESOLUTION_MULTIPLE}), which the models need; e.g. 64, 128, 256, 512")
    if c.variants_per_face < 1:
        bad("variants_per_face", f"must be >= 1, got {c.variants_per_face}")
    if c.max_pixels < 1:
        bad("max_pixels", f"must be >= 1, got {c.max_pixels}")
    if c.max_faces < 1:
        bad("max_faces", f"must be >= 1, got {c.max_faces}")
    if c.min_face_size < 1:
        bad("min_face_size", f"must be >= 1, got {c.min_face_size}")
    if not 0.0 < c.min_confidence <= 1.0:
        bad("min_confidence", f"must be in (0, 1], got {c.min_confidence}")
    if not 0.0 <= c.max_padding < 1.0:
        bad("max_padding", f"must be in [0, 1), got {c.max_padding}")
    if not 0.0 < c.max_yaw <= 90.0:
        bad("max_yaw", f"must be in (0, 90] degrees, got {c.max_yaw}")
    if not 0.0 < c.max_pitch <= 90.0:
        bad("max_pitch", f"must be in (0, 90] degrees, got {c.max_pitch}")
    if c.max_landmark_error <= 0:
        bad("max_landmark_error", f"must be > 0, got {c.max_landmark_error}")
    for flag, p in (("shadow_prob", c.shadow_prob), ("image_share", c.image_share),
                    ("jpeg_prob", c.jpeg_prob)):
        if not 0.0 <= p <= 1.0:
            bad(flag, f"must be a probability in [0, 1], got {p}")
    lo, hi = c.jpeg_quality
    if not 1 <= lo <= hi <= 100:
        bad("jpeg_quality", f"must be LOW,HIGH with 1 <= LOW <= HIGH <= 100, got {lo},{hi}")
    if not 0.0 <= c.near_duplicates <= 1.0:
        bad("near_duplicates", f"must be a similarity in [0, 1] (0: off), got {c.near_duplicates}")
    if c.group_by is not None:
        try:
            re.compile(c.group_by)
        except re.error as e:
            bad("group_by", f"{c.group_by!r} is not a regular expression ({e})")
    if not c.splits:
        bad("splits", "no splits given")
    if c.num_contact_pairs < 0:
        bad("num_contact_pairs", f"must be >= 0, got {c.num_contact_pairs}")
    try:
        synth.validate_weights(dict(c.category_weights))
    except ValueError as e:
        bad("category_weights", str(e))


def make_config(**overrides: Any) -> PrepConfig:
    """PrepConfig from keyword overrides, accepting the flags' string forms.

    `splits` and `category_weights` may be the strings the flags take
    ("train=0.9,...", "face_mask=3,..."), `jpeg_quality` "LOW,HIGH".

    Raises:
      errors.InvalidInputError: an unknown field or a bad value (named).
    """
    names = {f.name for f in dataclasses.fields(PrepConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise errors.InvalidInputError(f"unknown data-prep option(s) {unknown}; known: {sorted(names)}")
    o = {k: v for k, v in overrides.items() if v is not None or k in (
        "occluders_dir", "group_by", "clean_dir", "landmarker_model")}
    if isinstance(o.get("splits"), str):
        o["splits"] = parse_splits(o["splits"])
    if "category_weights" in o:
        w = o["category_weights"]
        try:
            w = synth.parse_weights(w) if isinstance(w, str) or w is None else dict(w)
        except ValueError as e:
            raise errors.InvalidInputError(f"--category_weights: {e}") from None
        o["category_weights"] = tuple(sorted(w.items()))
    if isinstance(o.get("jpeg_quality"), str):
        try:
            lo, hi = (int(x) for x in o["jpeg_quality"].split(","))
        except ValueError:
            raise errors.InvalidInputError(
                f"--jpeg_quality: expected LOW,HIGH such as 50,95, got {o['jpeg_quality']!r}") from None
        o["jpeg_quality"] = (lo, hi)
    if "jpeg_quality" in o:
        o["jpeg_quality"] = tuple(int(x) for x in o["jpeg_quality"])
    c = PrepConfig(**o)
    validate(c)
    return c
