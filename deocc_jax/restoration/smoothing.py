"""Landmark smoothing across video frames: a one-euro filter per face, matched frame to frame.

Face landmarks jitter by a pixel or two from frame to frame even on a still face;
the restored face would shimmer with them. Photos and live video smooth them here
before alignment.
"""

from __future__ import annotations

import math

import numpy as np

# The one-euro defaults of every video path (infer, live, the benchmarks). The cutoff
# at rest keeps a still face steady; the speed coefficient is high because a lagging
# crop does harm: on a 640x480 pan over a bare face (up to 10 px a frame,
# benchmarks/smoothing.py) beta 1 let the crop trail the face by a tenth of its size,
# the model saw a misaligned face and painted over eyes and mouth in most frames;
# at 100 the crop follows, and a still face still flickers half as much as unsmoothed.
DEFAULT_MIN_CUTOFF = 1.0
DEFAULT_BETA = 100.0


class OneEuroFilter:
    """One-euro low-pass filter (Casiez et al., CHI 2012) over a numpy array.

    Smooths strongly when the signal is slow (kills landmark jitter on a still
    face) and lightly when it moves fast (no lag on head turns). Values should
    be pixels; pass the face size as `scale` so that the defaults hold for
    small and large faces alike.

    Args:
      min_cutoff: cutoff frequency (Hz) at zero speed; lower = smoother.
      beta: how fast the cutoff rises with speed; higher = less lag.
      d_cutoff: cutoff (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x = None
        self._dx = None
        self._t = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filtered value of sample `x` taken at time `t` seconds.

        `scale` divides the speed before it raises the cutoff, so `beta` can be
        given in scale-free units (e.g. face sizes per second).
        """
        x = np.asarray(x, np.float64)
        if self._x is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx) / scale
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


def match_tracks(centres: list[np.ndarray], scales: list[float], previous: list[np.ndarray]
                 ) -> list[int | None]:
    """Matches faces to previous tracks by the nearest centre (within half a face size).

    Args:
      centres: [2] centre of each current face.
      scales: size of each current face (pixels).
      previous: [2] centre of each previous track.

    Returns:
      For each face, the index of its track in `previous`, or None for a new
      face. Each track is used at most once (first come, first served).
    """
    free = list(range(len(previous)))
    out: list[int | None] = []
    for centre, scale in zip(centres, scales):
        best = min(free, key=lambda i: np.linalg.norm(previous[i] - centre), default=None)
        if best is not None and np.linalg.norm(previous[best] - centre) < 0.5 * scale:
            free.remove(best)
            out.append(best)
        else:
            out.append(None)
    return out


class LandmarkSmoother:
    """Keeps one one-euro filter per tracked face across video frames.

    Faces are matched to the previous frame's by the nearest landmark centre
    (within half a face size); an unmatched face starts a new track, and tracks
    not seen in a frame are dropped.
    """

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA):
        self.min_cutoff, self.beta = min_cutoff, beta
        self._tracks: list[tuple[np.ndarray, OneEuroFilter]] = []  # (centre, filter)

    def __call__(self, landmarks: list[np.ndarray], t: float) -> list[np.ndarray]:
        """Smoothed copies of each face's [N, 2] pixel landmarks at time `t` s."""
        centres = [lm.mean(0) for lm in landmarks]
        scales = [float(np.ptp(lm, axis=0).max()) or 1.0 for lm in landmarks]
        matches = match_tracks(centres, scales, [c for c, _ in self._tracks])
        out, new_tracks = [], []
        for lm, centre, scale, m in zip(landmarks, centres, scales, matches):
            filt = self._tracks[m][1] if m is not None else OneEuroFilter(self.min_cutoff, self.beta)
            # Speeds are measured in face sizes per second, so the filter's
            # parameters do not depend on how large the face is in pixels.
            out.append(filt(lm, t, scale).astype(np.float32))
            new_tracks.append((centre, filt))
        self._tracks = new_tracks
        return out
