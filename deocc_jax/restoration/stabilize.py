"""Temporal stabilisation of restored faces: a motion-gated average in the aligned crop.

Per-frame restoration flickers: the model sees a slightly different crop each
frame (resampling, landmark jitter) and answers slightly differently, and the
predicted mask crossing its threshold makes the blend edge jump. In the
aligned crop the face stands still however it moves in the frame (alignment
removes translation, rotation and scale), so each face's model output and
mask are averaged over time there (an exponential moving average), then pasted
at the face's current position. The average is gated per pixel by how much the
*input* crop changed since the previous frame: where the face really changes
(mouth, eyes, a turn of the head), the new output is taken as is, so nothing
lags; where it does not, old and new are mixed and the flicker averages out.

Faces are followed across frames by their position (the same matching as the
landmark smoother); a face not seen for `max_gap_s` starts afresh.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from deocc_jax.faces import align
from deocc_jax.restoration import smoothing


@dataclasses.dataclass
class StabilizerOptions:
    """Attributes:
      strength: weight of the past where the input did not change (0 = off,
        per-frame output; 0.8 averages over about 5 frames).
      motion_scale: change of the blurred input crop (grey levels, 0-255) at
        which the new output is taken fully; smaller changes mix in the past
        proportionally less.
      blur_frac: sigma of the blur applied before comparing input crops, in
        crop sides (ignores resampling noise and sub-pixel jitter).
      max_gap_s: a face not seen for this long restarts its average.
    """
    strength: float = 0.8
    motion_scale: float = 12.0
    blur_frac: float = 0.02
    max_gap_s: float = 0.5


@dataclasses.dataclass
class _Track:
    centre: np.ndarray
    scale: float
    time_s: float
    reference: np.ndarray   # blurred grey input crop, float32 [R, R]
    restored: np.ndarray    # float32 [R, R, 3]
    mask: np.ndarray        # float32 [R, R]


class TemporalStabilizer:
    """Smooths each face's model output and mask over time; keeps state between calls.

    Args:
      options: a StabilizerOptions.
    """

    def __init__(self, options: StabilizerOptions | None = None):
        self.options = options or StabilizerOptions()
        if not 0.0 <= self.options.strength < 1.0:
            raise ValueError(f"stabilisation strength must be in [0, 1), got {self.options.strength}")
        self._tracks: list[_Track] = []

    def reset(self) -> None:
        """Forgets every face (e.g. after a scene cut)."""
        self._tracks = []

    def _reference(self, crop: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(np.asarray(crop, np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
        sigma = max(self.options.blur_frac * crop.shape[0], 0.5)
        return cv2.GaussianBlur(grey, (0, 0), sigma)

    def __call__(self, matrices: list[np.ndarray], crops: np.ndarray, restored: np.ndarray,
                 masks: np.ndarray, time_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Stabilised outputs of the faces of one frame.

        Args:
          matrices: per face, the 2x3 image -> crop matrix.
          crops: uint8 [F, R, R, 3] the aligned input crops.
          restored: uint8 [F, R, R, 3] the model's outputs.
          masks: float [F, R, R] (or [F, R, R, 1]) predicted occlusion.
          time_s: the frame's time in seconds.

        Returns:
          (uint8 [F, R, R, 3] restored, float32 [F, R, R] mask), stabilised.
        """
        n = len(matrices)
        if n == 0:
            self._tracks = []
            return restored, np.asarray(masks, np.float32).reshape(np.shape(masks)[:3])
        r = crops.shape[1]
        masks = np.asarray(masks, np.float32).reshape(n, r, r)
        # Face centre and size in the frame: where the crop's centre lands.
        inv = [align.inverse_matrix(m) for m in matrices]
        centres = [align.transform_landmarks(np.array([[r / 2, r / 2]]), m)[0] for m in inv]
        scales = [r / max(align.matrix_scale(m), 1e-6) for m in matrices]
        live = [t for t in self._tracks if time_s - t.time_s <= self.options.max_gap_s]
        matches = smoothing.match_tracks(centres, scales, [t.centre for t in live])
        out_rgb = np.empty((n, r, r, 3), np.uint8)
        out_mask = np.empty((n, r, r), np.float32)
        tracks = []
        for i in range(n):
            ref = self._reference(crops[i])
            new_rgb = restored[i].astype(np.float32)
            track = live[matches[i]] if matches[i] is not None else None
            if track is None or track.reference.shape != ref.shape or self.options.strength == 0:
                rgb, mask = new_rgb, masks[i]
            else:
                change = np.abs(ref - track.reference)
                keep = self.options.strength * np.clip(1.0 - change / self.options.motion_scale, 0, 1)
                rgb = new_rgb + keep[..., None] * (track.restored - new_rgb)
                mask = masks[i] + keep * (track.mask - masks[i])
            tracks.append(_Track(centres[i], scales[i], time_s, ref, rgb, mask))
            out_rgb[i] = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
            out_mask[i] = mask
        self._tracks = tracks
        return out_rgb, out_mask
