"""Synthetic video clips whose truth is known, for flicker, tracking and pipeline measurements.

A clip is made from a real photo (e.g. `sample_photos.face_photo_paths()`):
the photo is panned and zoomed smoothly over time, and an occluder (a face
mask drawn from the photo's landmarks) is pinned to the face, so every frame
has an exact clean truth, an exact occluded region and exact landmarks.
`write_clip` saves one as an H.264 file (optionally with an audio track) for
the live pipeline, its tests and its benchmark.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import os
from typing import Sequence

import cv2
import numpy as np

from deocc_jax.restoration import infer_lib
from deocc_jax.faces import FaceAnalyzer, largest_face
from deocc_jax.faces import landmarks as lmk
from deocc_jax.faces.align import transform_landmarks
from deocc_jax.io import atomic
from deocc_jax.io import video as video_io

# Motions of the standard clips: (pan and zoom amplitude, as a fraction of the frame).
MOTIONS = {"still": 0.0, "slow": 0.01, "moving": 0.03}


@dataclasses.dataclass
class Clip:
    """A synthetic clip with its truth.

    Attributes:
      occluded: uint8 [T, H, W, 3] what the model gets.
      clean: uint8 [T, H, W, 3] the truth.
      region: bool [T, H, W] the occluder's pixels.
      landmarks: float32 [T, 478, 2] the clean photo's landmarks moved with each frame.
      fps: frame rate.
      name: where it came from.
      motion: a label for its motion ("still", "slow", ...).
    """
    occluded: np.ndarray
    clean: np.ndarray
    region: np.ndarray
    landmarks: np.ndarray
    fps: float
    name: str
    motion: str = ""

    def __len__(self) -> int:
        return len(self.clean)


def face_mask_occluder(shape_hw: tuple[int, int], landmarks: np.ndarray,
                       colour=(0.55, 0.75, 0.88), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cloth face mask from the nose to the chin, drawn in image coordinates.

    Args:
      shape_hw: the image size.
      landmarks: the face's [478, 2] landmarks.
      colour: base RGB in [0, 1].
      seed: texture noise seed.

    Returns:
      (float32 [H, W, 3] RGB in [0, 1], float32 [H, W] alpha in [0, 1]).
    """
    h, w = shape_hw
    lm = np.asarray(landmarks, np.float64)
    le, re = lmk.eye_centres(lm)
    right = (re - le) / max(np.linalg.norm(re - le), 1e-6)
    down = np.array([-right[1], right[0]])
    top = lm[lmk.NOSE_BRIDGE_TOP] + 0.5 * (lm[lmk.NOSE_TIP] - lm[lmk.NOSE_BRIDGE_TOP])
    oval = [i for i in lmk.FACE_OVAL if np.dot(lm[i] - top, down) > 0]
    poly = np.concatenate([lm[oval], top[None]])
    alpha = np.zeros((h, w), np.uint8)
    cv2.fillPoly(alpha, [np.round(poly * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(alpha.astype(np.float32) / 255.0, (0, 0), 1.0)
    # Shading across the face and a fabric-like texture, so the occluder is not flat.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = lm[oval].mean(0)
    half = max(float(np.ptp(lm[oval] @ right)) / 2, 1.0)
    u = ((np.stack([xx, yy], -1) - centre) @ right) / half
    shade = 1.0 - 0.25 * np.clip(u, -1.2, 1.2) ** 2
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
    shade = shade * (1.0 + 0.03 * noise / max(float(noise.std()), 1e-6))
    rgb = np.clip(np.asarray(colour, np.float32)[None, None] * shade[..., None], 0, 1)
    return rgb.astype(np.float32), alpha


def make_clip(photo: str, *, frames: int = 48, size: tuple[int, int] = (320, 240),
              face_height_frac: float = 0.5, pan_frac: float = 0.02, zoom: float = 0.02,
              noise_std: float = 2.0, fps: float = 25.0, seed: int = 0,
              landmarker_model: str | None = None) -> Clip:
    """A clip of `photo` panned and zoomed, with a face mask pinned to its face.

    The motion is one smooth period over the clip: horizontal pan of
    +-pan_frac of the frame width (half that vertically) and zoom of +-zoom.
    The defaults are a face that barely moves (about 1 px per frame at 320 px),
    seen through a camera's sensor noise (Gaussian, `noise_std` grey levels,
    added to the occluded frames only: the truth is noise-free).

    Args:
      photo: a photo with a face (the largest face is used).
      frames: clip length.
      size: (width, height) of the frames.
      face_height_frac: the face's height (forehead to chin) in frame heights.
      pan_frac, zoom: motion amplitudes.
      noise_std: sensor noise of the occluded frames (grey levels).
      fps: the clip's frame rate.
      seed: the noise seed.
      landmarker_model: explicit face_landmarker.task path.

    Raises:
      ValueError: no face in the photo.
    """
    image = infer_lib.read_rgb(photo)
    with FaceAnalyzer(mode="image", num_faces=4, model_path=landmarker_model) as analyzer:
        face = largest_face(analyzer.detect(image))
    if face is None:
        raise ValueError(f"{photo}: no face detected")
    w, h = size
    lm = face.landmarks.astype(np.float64)
    face_h = float(np.linalg.norm(lm[lmk.CHIN] - lm[lmk.FOREHEAD]))
    # Shrink once with area averaging (no aliasing), then move with bilinear warps.
    s0 = face_height_frac * h / face_h
    small = cv2.resize(image, None, fx=s0, fy=s0, interpolation=cv2.INTER_AREA)
    lm_small = lm * s0
    occ_rgb, occ_alpha = face_mask_occluder(small.shape[:2], lm_small)
    occluded_photo = np.clip(np.round(small * (1 - occ_alpha[..., None])
                                      + 255.0 * occ_rgb * occ_alpha[..., None]), 0, 255).astype(np.uint8)
    centre = lm_small[list(lmk.FACE_OVAL)].mean(0)
    out = {k: [] for k in ("occluded", "clean", "region", "landmarks")}
    rng = np.random.default_rng(seed)
    for t in range(frames):
        phase = 2 * math.pi * t / max(frames - 1, 1)
        s = 1.0 + zoom * math.sin(phase)
        dx, dy = pan_frac * w * math.sin(phase), 0.5 * pan_frac * h * math.sin(2 * phase)
        A = np.array([[s, 0, w / 2 + dx - s * centre[0]], [0, s, h / 2 + dy - s * centre[1]]])
        warp = lambda img, interp=cv2.INTER_LINEAR: cv2.warpAffine(  # noqa: E731
            img, A, (w, h), flags=interp, borderMode=cv2.BORDER_REFLECT_101)
        out["clean"].append(warp(small))
        occ = warp(occluded_photo)
        if noise_std > 0:
            occ = np.clip(np.round(occ + rng.normal(0, noise_std, occ.shape)), 0, 255).astype(np.uint8)
        out["occluded"].append(occ)
        out["region"].append(warp(occ_alpha) > 0.5)
        out["landmarks"].append(transform_landmarks(face.landmarks * s0, A))
    return Clip(**{k: np.stack(v) for k, v in out.items()}, fps=fps, name=os.path.basename(photo),
                motion=f"pan {pan_frac:g}, zoom {zoom:g}")


def standard_clips(photos: Sequence[str], *, frames: int = 48, size: tuple[int, int] = (320, 240),
                   motions: dict[str, float] | None = None, **kwargs) -> list[Clip]:
    """One clip per photo and motion of MOTIONS (the benchmark's set).

    Args:
      photos: face photos (e.g. `sample_photos.face_photo_paths()`).
      frames, size: per clip.
      motions: label -> pan and zoom amplitude; default MOTIONS.
      **kwargs: passed to `make_clip` (noise_std, face_height_frac...).
    """
    clips = []
    for label, amount in (motions or MOTIONS).items():
        for photo in photos:
            clip = make_clip(photo, frames=frames, size=size, pan_frac=amount, zoom=amount, **kwargs)
            clip.motion = label
            clips.append(clip)
    return clips


def write_clip(clip: Clip, path: str, *, which: str = "occluded", audio_hz: float | None = None,
               audio_rate: int = 16000, overwrite: bool = False) -> str:
    """Writes a clip's frames as an H.264 video at its frame rate.

    Args:
      clip: the clip.
      path: the output video (.mp4, .mkv...).
      which: "occluded" (what a camera would see) or "clean".
      audio_hz: also write a mono AAC track: a sine tone of this frequency
        lasting the clip (to check that audio survives processing).
      audio_rate: its sample rate.
      overwrite: replace an existing `path` (else refused, `io.atomic`'s policy).

    Returns:
      `path`.

    Raises:
      errors.OutputExistsError: `path` exists and not `overwrite`.
    """
    frames = getattr(clip, which)
    h, w = frames.shape[1:3]
    if audio_hz is None:
        with video_io.VideoWriter(path, clip.fps, w, h, overwrite=overwrite) as writer:
            for f in frames:
                writer.write(f)
        return path
    atomic.refuse_existing(path, overwrite=overwrite)
    temp = atomic.temp_sibling(path)  # keeps the extension: FFmpeg picks the container by it
    try:
        _write_clip_with_tone(frames, temp, clip.fps, audio_hz, audio_rate)
        atomic.publish_file(temp, path, replace=overwrite)
    finally:
        atomic.remove_quietly(temp)
    return path


def _write_clip_with_tone(frames: np.ndarray, path: str, fps: float, audio_hz: float,
                          audio_rate: int) -> None:
    import av  # heavy (FFmpeg): only when a clip with audio is written
    h, w = frames.shape[1:3]
    rate = fractions.Fraction(fps).limit_denominator(1001 * 1000)
    with av.open(path, "w") as out:  # writer-policy: exempt (io.atomic's temporary sibling)
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = out.add_stream("aac", rate=audio_rate)
        aus.layout = "mono"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        n = int(round(audio_rate * len(frames) / fps))
        tone = (0.3 * np.sin(2 * np.pi * audio_hz * np.arange(n) / audio_rate)).astype(np.float32)
        for start in range(0, n, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp",
                                               layout="mono")
            chunk.sample_rate, chunk.pts = audio_rate, start
            chunk.time_base = fractions.Fraction(1, audio_rate)
            for p in aus.encode(chunk):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
