"""Occluders: image occluders from a folder, and procedural ones drawn from landmarks.

Every renderer returns a `Layer` at crop resolution: `(rgb, alpha)`, float32,
rgb [H, W, 3] in 0..1 and alpha [H, W] in 0..1 (not premultiplied). Renderers
draw every random choice from the `np.random.Generator` they are given, in a
fixed order, so a seeded generator gives the same layer on any machine.

Image occluders live in a folder laid out like `../shared/occluders`: one
sub-folder per category of RGBA PNGs, optionally `MANIFEST.tsv` and
`face_masks/anchors_masktheface.json` (MaskTheFace's six anchor points per
template, which place a mask by homography).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os

import cv2
import numpy as np

from deocc_jax.faces import landmarks as L

Layer = tuple[np.ndarray, np.ndarray]

# Sub-folder -> category name written into records.
CATEGORY_DIRS = {
    "face_masks": "face_mask",
    "sunglasses": "sunglasses",
    "eyeglasses": "eyeglasses",
    "hands": "hand",
    "microphones": "microphone",
    "cups": "cup",
    "phones": "phone",
    "hats": "hat",
    "scarves": "scarf",
    "hair": "hair",
    "other": "other",
}
PROCEDURAL = "procedural"
# Categories the project can draw without any image (see `render_procedural`).
PROCEDURAL_CATEGORIES = ("face_mask", "sunglasses", "eyeglasses", PROCEDURAL)
ALL_CATEGORIES = tuple(sorted(set(CATEGORY_DIRS.values()) | {PROCEDURAL}))

# Occluder images are shrunk to this longest side once at load: crops are at
# most 512 px and an occluder spans at most ~1.5 face widths (~0.9 crop).
_MAX_SIDE = 512
_ANCHOR_KEYS = ("mask_a", "mask_b", "mask_c", "mask_f", "mask_e", "mask_d")


# ----------------------------------------------------------------------------
# Face geometry in crop coordinates.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FaceGeometry:
    """Landmark-derived anchors of one aligned face (crop pixels)."""
    lm: np.ndarray          # [478, 2] float64
    res: int
    left_eye: np.ndarray
    right_eye: np.ndarray
    right: np.ndarray       # unit vector along the eye line (image-left -> right eye)
    down: np.ndarray        # unit vector perpendicular to it, towards the chin
    angle: float            # eye-line angle, radians
    face_width: float       # cheek to cheek
    face_height: float      # forehead top to chin
    yaw: float              # landmarks.yaw_ratio
    pose: L.HeadPose        # the canonical face posed on the landmarks (crop pixels)
    mesh: np.ndarray        # [468, 3] canonical vertices (cm), the frame `pose` projects

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, res: int,
                       canonical: L.CanonicalFace | None = None) -> "FaceGeometry":
        """Anchors of a face from its 478 crop landmarks.

        Args:
          landmarks: [478, 2] crop pixels.
          res: crop side.
          canonical: the canonical face (default `landmarks.canonical_face()`,
            read from the landmarker model) that gives the head pose.
        """
        lm = np.asarray(landmarks, np.float64)
        canonical = canonical or L.canonical_face()
        le, re = L.eye_centres(lm)
        v = re - le
        right = v / max(np.linalg.norm(v), 1e-6)
        down = np.array([-right[1], right[0]])
        return cls(lm=lm, res=res, left_eye=le, right_eye=re, right=right, down=down,
                   angle=math.atan2(v[1], v[0]),
                   face_width=max(L.face_width(lm), 4.0),
                   face_height=max(float(np.linalg.norm(lm[L.CHIN] - lm[L.FOREHEAD])), 4.0),
                   yaw=L.yaw_ratio(lm), pose=L.head_pose(lm, canonical),
                   mesh=canonical.vertices)

    def v(self, index) -> np.ndarray:
        """Canonical 3D vertex (or vertices) of a landmark index."""
        return self.mesh[index]

    def glasses_frame(self) -> tuple[np.ndarray, float, float]:
        """(centre, outer eye-corner distance, depth) of a glasses front, in mesh cm.

        The front is a plane just in front of the nose bridge, centred between
        the eyes; glasses are drawn in it and projected with the head pose, so
        they turn and tilt with the head.
        """
        outer = self.mesh[[L.LEFT_EYE_CORNERS[0], L.RIGHT_EYE_CORNERS[0]]]
        inner = self.mesh[[L.LEFT_EYE_CORNERS[1], L.RIGHT_EYE_CORNERS[1]]]
        centre = np.concatenate([outer, inner]).mean(0)
        depth = float(self.mesh[L.NOSE_BRIDGE_TOP, 2]) - 0.3
        return np.array([centre[0], centre[1], depth]), float(np.linalg.norm(outer[1] - outer[0])), depth

    def project(self, points3d: np.ndarray) -> np.ndarray:
        """Crop pixels of mesh-frame points [N, 3]."""
        return self.pose.project(points3d)

    def below_eyes(self, points: np.ndarray, margin: float = 0.6) -> np.ndarray:
        """Points [N, 2] moved down (along `down`) until they clear the eyes below them.

        A mask's top edge follows a line parallel to the eyes; on a head
        turned and tilted up, that line runs into the far eye. Points within
        an eye's horizontal extent are kept `margin` eye widths below its
        lower lid.
        """
        pts = np.array(points, np.float64, ndmin=2)
        for contour in (L.LEFT_EYE_CONTOUR, L.RIGHT_EYE_CONTOUR):
            eye = self.lm[list(contour)]
            along = eye @ self.right
            width = float(along.max() - along.min())
            lo, hi = along.min() - 0.2 * width, along.max() + 0.2 * width
            floor = float((eye @ self.down).max()) + margin * width
            p_along, p_depth = pts @ self.right, pts @ self.down
            push = (p_along > lo) & (p_along < hi) & (p_depth < floor)
            pts[push] += np.outer(floor - p_depth[push], self.down)
        return pts.reshape(np.shape(points))

    def clear_of_mouth(self, point: np.ndarray, side: int, margin: float = 0.25) -> np.ndarray:
        """`point` moved along the eye line until it lies beyond the mouth on `side`.

        On a turned head the face oval's far side runs close to (or inside)
        the far mouth corner; a mask anchored there would leave the mouth half
        bare, whereas a real mask wraps around it.

        Args:
          point: [2] crop pixels.
          side: -1 for the image-left side, +1 for the image-right side.
          margin: extra distance beyond the mouth corner, in mouth widths.
        """
        lips = self.lm[list(L.LIPS_OUTER)] @ self.right
        width = float(lips.max() - lips.min())
        limit = (lips.min() - margin * width) if side < 0 else (lips.max() + margin * width)
        along = float(np.dot(point, self.right))
        shift = min(0.0, limit - along) if side < 0 else max(0.0, limit - along)
        return point + self.right * shift

    def p(self, index: int) -> np.ndarray:
        return self.lm[index]

    @property
    def eye_mid(self) -> np.ndarray:
        return (self.left_eye + self.right_eye) / 2

    @property
    def mouth(self) -> np.ndarray:
        return self.lm[[L.MOUTH_LEFT, L.MOUTH_RIGHT, L.UPPER_LIP, L.LOWER_LIP]].mean(0)

    @property
    def brow_mid(self) -> np.ndarray:
        return self.lm[list(L.LEFT_BROW + L.RIGHT_BROW)].mean(0)

    def depth(self, pt: np.ndarray) -> float:
        """Coordinate of a point along `down`."""
        return float(np.dot(pt, self.down))

    def oval_crossings(self, through: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the line through `through`, parallel to the eyes, meets the face oval.

        Returns (image-left, image-right) points. MaskTheFace places its anchors
        the same way on dlib's jaw line.
        """
        oval = self.lm[list(L.FACE_OVAL)]
        d0 = self.depth(through)
        dep = oval @ self.down - d0
        hits = []
        for i in range(len(oval)):
            j = (i + 1) % len(oval)
            if dep[i] == dep[j] or (dep[i] > 0) == (dep[j] > 0):
                continue
            t = dep[i] / (dep[i] - dep[j])
            hits.append(oval[i] + t * (oval[j] - oval[i]))
        if len(hits) < 2:
            # The line misses the oval (extreme pose): use the cheek points.
            return self.lm[L.LEFT_CHEEK], self.lm[L.RIGHT_CHEEK]
        hits = np.array(hits)
        along = hits @ self.right
        return hits[np.argmin(along)], hits[np.argmax(along)]

    def lower_oval(self, through: np.ndarray) -> np.ndarray:
        """Face-oval points below the eye-parallel line through `through`,
        ordered from the image-right side, past the chin, to the image-left side."""
        order = list(L.FACE_OVAL)  # clockwise: forehead, image-right, chin, image-left
        d0 = self.depth(through)
        below = [i for i in order if self.depth(self.lm[i]) > d0]
        return self.lm[below]


# ----------------------------------------------------------------------------
# Drawing helpers.
# ----------------------------------------------------------------------------

_SHIFT = 4  # sub-pixel bits for cv2 drawing


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def fill_polygons(res: int, polygons: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of filled polygons."""
    canvas = np.zeros((res, res), np.uint8)
    cv2.fillPoly(canvas, [_fix(p) for p in polygons], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return canvas.astype(np.float32) / 255.0


def stroke(res: int, polyline: np.ndarray, thickness: float, closed: bool = False) -> np.ndarray:
    """Anti-aliased coverage of a polyline of the given thickness (pixels)."""
    canvas = np.zeros((res, res), np.uint8)
    cv2.polylines(canvas, [_fix(polyline)], closed, 255, thickness=max(1, int(round(thickness))),
                  lineType=cv2.LINE_AA, shift=_SHIFT)
    return canvas.astype(np.float32) / 255.0


def ellipse_points(centre, half_w, half_h, angle_rad, n=48, squareness=0.0) -> np.ndarray:
    """Points of an ellipse (squareness > 0 bulges it towards a rounded rectangle)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / (2.0 + 6.0 * squareness)  # superellipse exponent: 1 = ellipse, smaller = boxier
    x = np.sign(c) * np.abs(c) ** e * half_w
    y = np.sign(s) * np.abs(s) ** e * half_h
    ca, sa = math.cos(angle_rad), math.sin(angle_rad)
    return np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], -1)


def over(top: Layer, bottom: Layer) -> Layer:
    """Porter-Duff 'over' of two straight-alpha layers."""
    rt, at = top
    rb, ab = bottom
    a = at + ab * (1 - at)
    rgb = (rt * at[..., None] + rb * (ab * (1 - at))[..., None]) / np.maximum(a, 1e-6)[..., None]
    return rgb.astype(np.float32), a.astype(np.float32)


def smooth_noise(res: int, rng: np.random.Generator, scale: float, channels: int = 1) -> np.ndarray:
    """Low-pass noise in ~[-1, 1] with features about `scale` pixels wide."""
    small = max(2, int(round(res / max(scale, 1.0))))
    n = rng.standard_normal((small, small, channels)).astype(np.float32)
    n = cv2.resize(n, (res, res), interpolation=cv2.INTER_CUBIC)
    n = n.reshape(res, res, channels)
    return np.clip(n / 1.5, -1, 1)


def _solid(res: int, colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (res, res, 3)).copy()


def _coords(res: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
    return xx, yy


# ----------------------------------------------------------------------------
# Procedural occluders.
# ----------------------------------------------------------------------------

_MASK_COLOURS = np.array([  # surgical blue, white, black, light green, pink, navy, grey, beige
    (0.55, 0.75, 0.88), (0.93, 0.94, 0.95), (0.10, 0.10, 0.12), (0.62, 0.82, 0.72),
    (0.92, 0.68, 0.75), (0.15, 0.20, 0.40), (0.55, 0.56, 0.58), (0.85, 0.77, 0.65)], np.float32)


def procedural_face_mask(geo: FaceGeometry, rng: np.random.Generator) -> Layer:
    """A pleated surgical or a textured cloth mask from nose bridge to chin."""
    res = geo.res
    kind = rng.choice(["surgical", "cloth"])
    top = geo.p(L.NOSE_BRIDGE_TOP) + rng.uniform(0.35, 0.6) * (geo.p(L.NOSE_TIP) - geo.p(L.NOSE_BRIDGE_TOP))
    left, right = geo.oval_crossings(top)
    lower = geo.lower_oval(top)
    chin_drop = rng.uniform(0.0, 0.06) * geo.face_height
    # Push the outline outwards a little (masks stand off the jaw) and below the chin.
    centre = lower.mean(0)
    grow = rng.uniform(1.02, 1.10)
    frac = np.clip((lower @ geo.down - geo.depth(top)) / max(
        geo.depth(geo.p(L.CHIN)) - geo.depth(top), 1.0), 0, 1)
    lower = centre + (lower - centre) * grow + geo.down * chin_drop * frac[:, None]
    # The top corners widen sideways only: moving them up would cover the eyes.
    left = left + geo.right * float(np.dot(left - centre, geo.right)) * (grow - 1)
    right = right + geo.right * float(np.dot(right - centre, geo.right)) * (grow - 1)
    # A turned head: the mask wraps round the far mouth corner.
    left, right = geo.clear_of_mouth(left, -1), geo.clear_of_mouth(right, 1)
    below = [geo.clear_of_mouth(p, -1 if np.dot(p - centre, geo.right) < 0 else 1)
             if geo.depth(p) < geo.depth(geo.p(17)) + 0.1 * geo.face_height else p for p in lower]
    lower = np.array(below)
    # Top edge: a curve from the left crossing, over the nose bridge, to the right
    # one; `lower` runs from the right side past the chin to the left side.
    t = np.linspace(0, 1, 24)[:, None]
    ctrl = top - geo.down * rng.uniform(0.0, 0.04) * geo.face_height
    top_curve = geo.below_eyes((1 - t) ** 2 * left + 2 * (1 - t) * t * ctrl + t ** 2 * right)
    poly = np.concatenate([top_curve, lower])
    alpha = fill_polygons(res, [poly])

    colour = _MASK_COLOURS[rng.integers(len(_MASK_COLOURS))] * rng.uniform(0.85, 1.1, 3)
    xx, yy = _coords(res)
    pts = np.stack([xx, yy], -1)
    d_top, d_bot = geo.depth(top), geo.depth(geo.p(L.CHIN)) + chin_drop
    v = np.clip((pts @ geo.down - d_top) / max(d_bot - d_top, 1.0), 0, 1)
    u = (pts @ geo.right - float(np.dot((left + right) / 2, geo.right))) / max(
        float(np.dot(right - left, geo.right)) / 2, 1.0)
    shade = 1.0 - rng.uniform(0.15, 0.35) * np.clip(u, -1.2, 1.2) ** 2  # curved over the face
    if kind == "surgical":
        n_pleats = int(rng.integers(2, 5))
        phase = np.mod(v * n_pleats + rng.uniform(0, 0.3), 1.0)
        shade = shade * (1.0 - rng.uniform(0.06, 0.15) * phase)  # each fold darkens towards its lower edge
        shade = shade * (1.0 - 0.25 * np.exp(-((phase - 1.0) * 25) ** 2))  # fold crease
    else:
        tex = smooth_noise(res, rng, rng.uniform(2, 6) * res / 256)[..., 0]
        shade = shade * (1.0 + rng.uniform(0.04, 0.12) * tex)
        if rng.random() < 0.4:  # a printed stripe or check pattern
            freq = rng.uniform(6, 14) / res * 2 * np.pi
            shade = shade * (1.0 - rng.uniform(0.1, 0.3) * (np.sin(u * res / 2 * freq) > 0.3))
    rgb = np.clip(colour[None, None, :] * shade[..., None], 0, 1).astype(np.float32)

    # Ear loops, from the mask's side corners towards the ears.
    loop_colour = colour if rng.random() < 0.5 else np.array([0.95, 0.95, 0.95], np.float32)
    thick = max(1.0, res * rng.uniform(0.005, 0.01))
    loops = np.zeros((res, res), np.float32)
    for corner, cheek, side in ((left, geo.p(L.LEFT_CHEEK), -1), (right, geo.p(L.RIGHT_CHEEK), 1)):
        ear = cheek + geo.right * side * 0.04 * geo.face_width - geo.down * 0.02 * geo.face_height
        low = corner + geo.down * 0.55 * (d_bot - d_top)
        loops = np.maximum(loops, stroke(res, np.stack([corner, ear, low]), thick))
    return over((rgb, alpha), (_solid(res, loop_colour), loops * rng.uniform(0.8, 1.0)))


_FRAME_COLOURS = np.array([(0.05, 0.05, 0.05), (0.25, 0.15, 0.08), (0.75, 0.62, 0.30),
                           (0.70, 0.70, 0.72), (0.45, 0.05, 0.08), (0.10, 0.15, 0.35)], np.float32)
_TINTS = np.array([(0.08, 0.08, 0.09), (0.20, 0.12, 0.06), (0.06, 0.14, 0.08),
                   (0.05, 0.08, 0.18), (0.30, 0.25, 0.10)], np.float32)


def procedural_glasses(geo: FaceGeometry, rng: np.random.Generator, sunglasses: bool) -> Layer:
    """Two lenses around the eyes with a frame, bridge and temple arms.

    Drawn in the glasses plane of the canonical face (`FaceGeometry.glasses_frame`)
    and projected with the head pose, so a turned head gets a narrower far lens
    and arms that run towards its ears.
    """
    res = geo.res
    _, _, depth = geo.glasses_frame()
    eye_w3 = float(np.mean([np.linalg.norm(geo.v(a)[:2] - geo.v(b)[:2])
                            for a, b in (L.LEFT_EYE_CORNERS, L.RIGHT_EYE_CORNERS)]))
    half_w = eye_w3 * rng.uniform(0.78, 1.0) * (1.1 if sunglasses else 1.0)
    half_h = half_w * rng.uniform(0.55, 0.85)
    square = rng.uniform(0.0, 1.0)
    lift = rng.uniform(-0.05, 0.12) * half_h
    tilt = math.radians(rng.uniform(-3, 3))
    frame_t = max(1.0, res * rng.uniform(0.006, 0.016))
    frame_col = _FRAME_COLOURS[rng.integers(len(_FRAME_COLOURS))]
    lens_a = np.zeros((res, res), np.float32)
    frame_a = np.zeros((res, res), np.float32)
    rims3, rims = [], []
    for corners, outer_sign in ((L.LEFT_EYE_CORNERS, -1), (L.RIGHT_EYE_CORNERS, 1)):
        eye = geo.v(list(corners)).mean(0)
        c = np.array([eye[0] + outer_sign * 0.08 * half_w, eye[1] - lift])
        flat = ellipse_points(c, half_w, half_h, tilt, squareness=square)
        rim3 = np.concatenate([flat, np.full((len(flat), 1), depth)], 1)
        rims3.append(rim3)
        rim = geo.project(rim3)
        rims.append(rim)
        lens_a = np.maximum(lens_a, fill_polygons(res, [rim]))
        frame_a = np.maximum(frame_a, stroke(res, rim, frame_t, closed=True))
    # Bridge between the inner rims, slightly above the lens centres.
    inner_l = rims3[0][np.argmax(rims3[0][:, 0])]
    inner_r = rims3[1][np.argmin(rims3[1][:, 0])]
    up = np.array([0.0, -0.25 * half_h, 0.0])
    mid = (inner_l + inner_r) / 2 + up * 1.3
    frame_a = np.maximum(frame_a, stroke(res, geo.project(np.stack([inner_l + up, mid, inner_r + up])),
                                         frame_t))
    # Temple arms from the outer rims back to the ears (face-oval points by the temples).
    for rim3, ear_index, side in ((rims3[0], 127, -1), (rims3[1], 356, 1)):
        outer = rim3[np.argmin(rim3[:, 0])] if side < 0 else rim3[np.argmax(rim3[:, 0])]
        ear = geo.v(ear_index).copy()
        ear[1] = outer[1] - 0.3 * half_h
        arm = np.stack([outer - np.array([0.0, 0.3 * half_h, 0.0]), ear])
        frame_a = np.maximum(frame_a, stroke(res, geo.project(arm), frame_t * 0.8))
    xx, yy = _coords(res)
    if sunglasses:
        tint = _TINTS[rng.integers(len(_TINTS))]
        # Darker at the top, like gradient lenses; a faint sky reflection.
        grad = np.clip(((np.stack([xx, yy], -1) @ geo.down) - geo.depth(geo.eye_mid)) / (
            2 * half_h * geo.pose.scale) + 0.5, 0, 1)
        lens_rgb = tint[None, None, :] * (0.7 + rng.uniform(0.2, 0.8) * grad[..., None])
        lens_rgb = lens_rgb + rng.uniform(0.0, 0.12) * np.exp(-((grad - 0.25) * 6) ** 2)[..., None]
        lens_alpha = lens_a * rng.uniform(0.82, 0.97)
    else:
        lens_rgb = _solid(res, (0.85, 0.9, 0.95))
        lens_alpha = lens_a * rng.uniform(0.04, 0.15)  # clear lens: a light tint and glare
    frame_rgb = frame_col[None, None, :] * (0.85 + 0.3 * smooth_noise(res, rng, res / 16)[..., :1] * 0.5)
    return over((np.clip(frame_rgb, 0, 1), frame_a), (np.clip(lens_rgb, 0, 1).astype(np.float32), lens_alpha))


def _texture(res: int, rng: np.random.Generator) -> np.ndarray:
    """A random RGB texture: noise, stripes, checks or a gradient between two colours."""
    c1, c2 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    xx, yy = _coords(res)
    kind = rng.integers(4)
    th = rng.uniform(0, np.pi)
    w = (np.cos(th) * xx + np.sin(th) * yy) / res
    if kind == 0:
        t = smooth_noise(res, rng, rng.uniform(2, 20) * res / 256)[..., 0] * 0.5 + 0.5
    elif kind == 1:
        t = (np.sin(w * rng.uniform(8, 40) * np.pi) > 0).astype(np.float32)
    elif kind == 2:
        f = rng.uniform(4, 16) / res * np.pi
        t = ((np.sin(xx * f) > 0) ^ (np.sin(yy * f) > 0)).astype(np.float32)
    else:
        t = np.clip(w - w.min(), 0, 1)
    rgb = c1 * (1 - t[..., None]) + c2 * t[..., None]
    rgb = rgb + rng.uniform(0, 0.06) * smooth_noise(res, rng, 1.5, 3)
    return np.clip(rgb, 0, 1).astype(np.float32)


def procedural_shapes(geo: FaceGeometry, rng: np.random.Generator) -> Layer:
    """One to three random textured blobs, ellipses or polygons over the face."""
    res = geo.res
    layer: Layer = (np.zeros((res, res, 3), np.float32), np.zeros((res, res), np.float32))
    for _ in range(int(rng.integers(1, 4))):
        centre = geo.lm[rng.integers(len(geo.lm))] + rng.normal(0, 0.05, 2) * geo.face_width
        size = geo.face_width * rng.uniform(0.12, 0.35)
        kind = rng.integers(3)
        if kind == 0:
            pts = ellipse_points(centre, size, size * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi),
                                 squareness=rng.uniform(0, 1))
        else:
            n = int(rng.integers(3, 9)) if kind == 1 else 16
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = size * rng.uniform(0.5, 1.0, n)
            if kind == 2:  # a blob: smooth the radii around the loop
                rad = np.convolve(np.tile(rad, 3), np.ones(3) / 3, "same")[n:2 * n]
            pts = centre + np.stack([np.cos(ang), np.sin(ang)], -1) * rad[:, None]
        alpha = fill_polygons(res, [pts]) * (1.0 if rng.random() < 0.8 else rng.uniform(0.6, 0.95))
        layer = over((_texture(res, rng), alpha), layer)
    return layer


def render_procedural(category: str, geo: FaceGeometry, rng: np.random.Generator) -> Layer:
    """A procedural occluder of one of PROCEDURAL_CATEGORIES."""
    if category == "face_mask":
        return procedural_face_mask(geo, rng)
    if category in ("sunglasses", "eyeglasses"):
        return procedural_glasses(geo, rng, sunglasses=category == "sunglasses")
    if category == PROCEDURAL:
        return procedural_shapes(geo, rng)
    raise ValueError(f"no procedural renderer for category {category!r}")


# ----------------------------------------------------------------------------
# Face masks as people wear them: prints and colours.
# ----------------------------------------------------------------------------

# Prints drawn on a face mask's surface (so they follow the head's roll and
# scale) and how its cloth is coloured. "plain" + "as_drawn" is the mask as it
# was rendered, so `draw_mask_style` never returns that pair.
MASK_PRINTS = ("plain", "dots", "stripes", "checks", "camouflage", "text")
MASK_COLOURINGS = ("as_drawn", "dark", "saturated")
_DARK_COLOURS = np.array([  # black, charcoal, navy, dark brown, bottle green, burgundy
    (0.03, 0.03, 0.035), (0.10, 0.10, 0.11), (0.05, 0.07, 0.18), (0.14, 0.09, 0.06),
    (0.04, 0.12, 0.07), (0.20, 0.04, 0.07)], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class MaskStyle:
    """How a face mask is printed and coloured.

    Attributes:
      pattern: one of MASK_PRINTS.
      colouring: one of MASK_COLOURINGS.
    """
    pattern: str
    colouring: str

    @property
    def kind(self) -> str:
        """"pattern/colouring", e.g. "dots/dark": what the prep report counts."""
        return f"{self.pattern}/{self.colouring}"


def draw_mask_style(rng: np.random.Generator) -> MaskStyle:
    """A print and a colouring, uniformly, other than the mask left as it was drawn."""
    pairs = [(p, c) for p in MASK_PRINTS for c in MASK_COLOURINGS
             if (p, c) != ("plain", "as_drawn")]
    return MaskStyle(*pairs[int(rng.integers(len(pairs)))])


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(190, 255), rng.uniform(150, 255)]]],
                   np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def _surface(geo: FaceGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): every crop pixel in face widths along the eye line and down from the eyes."""
    xx, yy = _coords(geo.res)
    d = np.stack([xx, yy], -1) - geo.eye_mid
    return (d @ geo.right / geo.face_width).astype(np.float32), \
        (d @ geo.down / geo.face_width).astype(np.float32)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """0..1 from a signed distance (> 0 inside), antialiased over `width`."""
    return np.clip(0.5 + x / max(width, 1e-6), 0, 1).astype(np.float32)


def mask_print(pattern: str, geo: FaceGeometry, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage [R, R] in 0..1 of a print on the face's surface (0 everywhere for "plain").

    Camouflage has three levels (0, 0.5, 1); the others are ink or cloth with
    antialiased edges. Sizes are in face widths, so a print looks the same at
    any crop resolution.
    """
    res = geo.res
    if pattern == "plain":
        return np.zeros((res, res), np.float32)
    u, v = _surface(geo)
    aa = 1.0 / geo.face_width  # one pixel, in face widths
    if pattern == "dots":
        period = rng.uniform(0.07, 0.15)
        radius = period * rng.uniform(0.18, 0.35)
        row = np.floor(v / period)
        shift = np.where(np.mod(row, 2) == 1, 0.5 * period, 0.0)  # staggered rows
        du = np.mod(u + shift, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return _soft(radius - np.hypot(du, dv), aa)
    if pattern == "stripes":
        th = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.16)
        width = period * rng.uniform(0.25, 0.55)
        # Distance to the nearest stripe's centre line, across the period's wrap.
        d = np.mod(u * np.cos(th) + v * np.sin(th) + period / 2, period) - period / 2
        return _soft(width / 2 - np.abs(d), aa)
    if pattern == "checks":
        period = rng.uniform(0.06, 0.16)
        a = np.sin(np.pi * u / period)
        b = np.sin(np.pi * v / period)
        return _soft(np.sign(a) * np.sign(b) * np.minimum(np.abs(a), np.abs(b)) * period / np.pi, aa)
    if pattern == "camouflage":
        n1 = smooth_noise(res, rng, geo.face_width * rng.uniform(0.12, 0.25))[..., 0]
        n2 = smooth_noise(res, rng, geo.face_width * rng.uniform(0.08, 0.18))[..., 0]
        return (0.5 * (n1 > 0.1) + 0.5 * (n2 > 0.25)).astype(np.float32)
    if pattern == "text":
        # Lines of letter-like blocks (a slogan or a brand name), centred on the mask.
        line_h = rng.uniform(0.05, 0.09)
        lines = int(rng.integers(1, 4))
        glyph_w = line_h * rng.uniform(0.55, 0.8)
        top = rng.uniform(0.55, 0.75) - lines * line_h * 0.7
        half = rng.uniform(0.18, 0.32)
        row = np.floor((v - top) / (line_h * 1.4))
        in_row = np.mod(v - top, line_h * 1.4) / line_h            # 0..1 inside a line's letters
        col = np.floor((u + half) / glyph_w)
        in_col = np.mod(u + half, glyph_w) / glyph_w
        n_cols = int(np.ceil(2 * half / glyph_w)) + 1
        # Each glyph: a 3x3 grid of strokes; every 5th glyph a space between words.
        bits = rng.random((lines, n_cols, 3, 3)) < 0.55
        bits[:, ::5] = False
        r_i = np.clip(row, 0, lines - 1).astype(int)
        c_i = np.clip(col, 0, n_cols - 1).astype(int)
        sy = np.clip((in_row * 3).astype(int), 0, 2)
        sx = np.clip((in_col * 1.25 * 3).astype(int), 0, 2)        # a gap after each glyph
        on = bits[r_i, c_i, sy, sx] & (in_row < 1) & (in_col < 0.8)
        on &= (row >= 0) & (row < lines) & (np.abs(u) < half)
        return cv2.GaussianBlur(on.astype(np.float32), (0, 0), 0.4)
    raise ValueError(f"unknown mask print {pattern!r}; expected one of {MASK_PRINTS}")


def restyle_mask(layer: Layer, geo: FaceGeometry, rng: np.random.Generator,
                 style: MaskStyle) -> Layer:
    """A face mask recoloured and printed, keeping its shape, folds and shading.

    The layer's own shading (pleats, the curve over the face, an image mask's
    folds) is its luminance relative to its median; the new cloth colour and
    the print's ink are multiplied by it. The alpha is unchanged.
    """
    rgb, alpha = layer
    inside = alpha > 0.5
    lum = rgb @ _LUMA
    level = float(np.median(lum[inside])) if inside.any() else float(lum.mean())
    shade = np.clip(lum / max(level, 1e-3), 0.3, 1.6)[..., None]
    if style.colouring == "dark":
        base = _DARK_COLOURS[rng.integers(len(_DARK_COLOURS))] * rng.uniform(0.8, 1.2, 3)
        cloth = np.broadcast_to(base, rgb.shape) * shade
    elif style.colouring == "saturated":
        cloth = np.broadcast_to(_saturated_colour(rng), rgb.shape) * shade
    elif style.colouring == "as_drawn":
        cloth = rgb
    else:
        raise ValueError(f"unknown mask colouring {style.colouring!r}; expected one of "
                         f"{MASK_COLOURINGS}")
    ink_cover = mask_print(style.pattern, geo, rng)
    if style.pattern != "plain":
        cloth_rgb = (np.median(cloth[inside], axis=0) if inside.any()
                     else np.full(3, 0.5, np.float32))
        cloth_lum = float(cloth_rgb @ _LUMA)
        # Ink that shows: light on dark cloth, dark or vivid on light cloth.
        if cloth_lum < 0.35:
            ink = rng.choice([np.array([0.95, 0.95, 0.95], np.float32),
                              _saturated_colour(rng) * 0.5 + 0.5])
        else:
            ink = rng.choice([np.array([0.06, 0.06, 0.07], np.float32), _saturated_colour(rng) * 0.6])
        if style.pattern == "camouflage":  # three tones: cloth, mid, ink
            mid = 0.5 * (cloth_rgb + ink)
            two = np.where(ink_cover[..., None] >= 0.75, ink, mid)
            ink_layer = np.broadcast_to(two, rgb.shape) * shade
            cover = (ink_cover > 0.25).astype(np.float32)
        else:
            ink_layer = np.broadcast_to(ink, rgb.shape) * shade
            cover = ink_cover
        cloth = cloth * (1 - cover[..., None]) + ink_layer * cover[..., None]
    return np.clip(cloth, 0, 1).astype(np.float32), alpha


# ----------------------------------------------------------------------------
# Image occluders.
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageOccluder:
    category: str
    relpath: str                                # relative to the occluders folder
    anchors: tuple[tuple[float, float], ...] | None  # MaskTheFace a,b,c,f,e,d (template px)
    pose: str                                   # "frontal", "left" or "right"

    @property
    def family(self) -> str:
        """Template family shared by the frontal/left/right views of one mask."""
        stem = os.path.splitext(os.path.basename(self.relpath))[0]
        for suffix in ("_left", "_right"):
            if stem.endswith(suffix):
                return stem[: -len(suffix)]
        return stem


class OccluderLibrary:
    """The image occluders of one folder, loaded lazily and cached per process.

    Args:
      root: folder with one sub-folder per category (see CATEGORY_DIRS).
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"occluders folder {root!r} does not exist")
        self.root = root
        anchors = {}
        anchor_file = os.path.join(root, "face_masks", "anchors_masktheface.json")
        if os.path.exists(anchor_file):
            with open(anchor_file) as f:
                anchors = json.load(f)["templates"]
        items = []
        for folder, category in sorted(CATEGORY_DIRS.items()):
            d = os.path.join(root, folder)
            if not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                if not name.lower().endswith(".png"):
                    continue
                rel = f"{folder}/{name}"
                a = anchors.get(rel)
                items.append(ImageOccluder(
                    category=category, relpath=rel,
                    anchors=tuple(tuple(map(float, a[k])) for k in _ANCHOR_KEYS) if a else None,
                    pose=(a or {}).get("pose") or _pose_from_name(name)))
        if not items:
            raise FileNotFoundError(
                f"no occluder PNGs in {root!r}: expected sub-folders {sorted(CATEGORY_DIRS)}")
        self.items = tuple(items)
        self.by_category: dict[str, tuple[ImageOccluder, ...]] = {}
        for it in items:
            self.by_category.setdefault(it.category, ())
            self.by_category[it.category] += (it,)

    @functools.cached_property
    def version(self) -> str:
        """sha256 over the manifest (if any) and every occluder file's name and bytes."""
        h = hashlib.sha256()
        manifest = os.path.join(self.root, "MANIFEST.tsv")
        if os.path.exists(manifest):
            with open(manifest, "rb") as f:
                h.update(f.read())
        for it in self.items:
            h.update(it.relpath.encode())
            with open(os.path.join(self.root, it.relpath), "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        return h.hexdigest()

    @functools.lru_cache(maxsize=None)  # noqa: B019 - one library per worker, lives as long
    def load(self, relpath: str) -> tuple[np.ndarray, float]:
        """(RGBA uint8 image, scale applied) of one occluder, shrunk to <= _MAX_SIDE."""
        from PIL import Image
        path = os.path.join(self.root, relpath)
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"occluder image {path!r} cannot be read: {e}") from None
        scale = min(1.0, _MAX_SIDE / max(rgba.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale)))
            rgba = _resize_rgba(rgba, size)
        return rgba, scale


    @functools.lru_cache(maxsize=256)  # noqa: B019
    def load_level(self, relpath: str, level: int) -> tuple[np.ndarray, float, float]:
        """The occluder halved `level` times (area filter): (rgba, fx, fy) with the
        x/y factors from `load`'s image. Cached, so a warm worker never resizes."""
        rgba, _ = self.load(relpath)
        if level <= 0:
            return rgba, 1.0, 1.0
        f = 0.5 ** level
        size = (max(1, round(rgba.shape[1] * f)), max(1, round(rgba.shape[0] * f)))
        return _resize_rgba(rgba, size), size[0] / rgba.shape[1], size[1] / rgba.shape[0]

    @functools.lru_cache(maxsize=None)  # noqa: B019
    def outline(self, relpath: str) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
        """(alpha bbox, centroid relative to the bbox) of an occluder.

        For glasses the centroid is that of the lenses: the alpha after an
        opening as wide as a fifteenth of the image, which removes arms and
        thin frames (drawn in perspective they would pull the centroid off
        the lens line). Clear lenses with thin frames leave too little; then
        the whole alpha's centroid is used.
        """
        rgba, _ = self.load(relpath)
        bbox = alpha_bbox(rgba)
        if relpath.split("/")[0] in ("sunglasses", "eyeglasses"):
            k = max(3, int(round((bbox[2] - bbox[0]) / 15)) | 1)
            solid = cv2.morphologyEx((rgba[..., 3] > 128).astype(np.uint8), cv2.MORPH_OPEN,
                                     cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
            if solid.sum() > 0.1 * (rgba[..., 3] > 128).sum():
                lens = rgba.copy()
                lens[..., 3] = solid * 255
                return bbox, alpha_centroid_rel(lens, bbox)
        return bbox, alpha_centroid_rel(rgba, bbox)


def _pose_from_name(name: str) -> str:
    stem = os.path.splitext(name)[0]
    return "left" if stem.endswith("_left") else "right" if stem.endswith("_right") else "frontal"


def _resize_rgba(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize with premultiplied alpha (no dark fringes)."""
    f = rgba.astype(np.float32) / 255.0
    prem = np.concatenate([f[..., :3] * f[..., 3:], f[..., 3:]], -1)
    prem = cv2.resize(prem, size, interpolation=cv2.INTER_AREA)
    a = prem[..., 3:]
    rgb = prem[..., :3] / np.maximum(a, 1e-6)
    return np.clip(np.rint(np.concatenate([rgb, a], -1) * 255), 0, 255).astype(np.uint8)


def alpha_bbox(rgba: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the non-transparent pixels."""
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(xs) == 0:
        return 0.0, 0.0, float(rgba.shape[1]), float(rgba.shape[0])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _matrix_scale(H: np.ndarray) -> float:
    """Linear scale of a 3x3 transform near its origin (exact for similarities)."""
    H = np.asarray(H, np.float64)
    return math.sqrt(abs(np.linalg.det(H[:2, :2])) / max(abs(H[2, 2]), 1e-9) ** 2)


def alpha_centroid_rel(rgba: np.ndarray, bbox) -> tuple[float, float]:
    """Alpha-weighted centroid as fractions of `bbox`."""
    a = rgba[..., 3].astype(np.float64)
    total = a.sum()
    if total <= 0:
        return 0.5, 0.5
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    x0, y0, x1, y1 = bbox
    return (float((xs * a).sum() / total - x0) / max(x1 - x0, 1.0),
            float((ys * a).sum() / total - y0) / max(y1 - y0, 1.0))


def warp_rgba(rgba: np.ndarray, H: np.ndarray, res: int) -> Layer:
    """Warps an RGBA uint8 image by a 3x3 homography into a res x res Layer.

    Premultiplied so that edges blend towards the occluder's colour, not black;
    strong downscales shrink the source first (warping samples, it does not average).
    """
    H = np.asarray(H, np.float64)
    scale = _matrix_scale(H)
    if scale < 0.5:
        f = 2.0 * scale
        size = (max(1, round(rgba.shape[1] * f)), max(1, round(rgba.shape[0] * f)))
        fx, fy = size[0] / rgba.shape[1], size[1] / rgba.shape[0]
        rgba = _resize_rgba(rgba, size)
        H = H @ np.diag([1 / fx, 1 / fy, 1.0])
    f = rgba.astype(np.float32) / 255.0
    prem = np.concatenate([f[..., :3] * f[..., 3:], f[..., 3:]], -1)
    out = cv2.warpPerspective(prem, H, (res, res), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = np.clip(out[..., 3], 0, 1)
    rgb = np.clip(out[..., :3] / np.maximum(a, 1e-6)[..., None], 0, 1)
    return rgb.astype(np.float32), a.astype(np.float32)


def placement(bbox, anchor_rel, target, width, angle, flip=False) -> np.ndarray:
    """3x3 similarity putting point `anchor_rel` (fractions of bbox) on `target`,
    scaling the bbox to `width` pixels and rotating by `angle` radians."""
    x0, y0, x1, y1 = bbox
    ax, ay = x0 + anchor_rel[0] * (x1 - x0), y0 + anchor_rel[1] * (y1 - y0)
    s = width / max(x1 - x0, 1.0)
    c, si = math.cos(angle) * s, math.sin(angle) * s
    fx = -1.0 if flip else 1.0
    # translate anchor to 0, mirror, scale+rotate, translate to target
    T0 = np.array([[1, 0, -ax], [0, 1, -ay], [0, 0, 1]], np.float64)
    F = np.diag([fx, 1.0, 1.0])
    R = np.array([[c, -si, 0], [si, c, 0], [0, 0, 1]], np.float64)
    T1 = np.array([[1, 0, target[0]], [0, 1, target[1]], [0, 0, 1]], np.float64)
    return T1 @ R @ F @ T0


def face_mask_points(geo: FaceGeometry) -> np.ndarray:
    """MaskTheFace's six face points a, b, c, f, e, d (see anchors_masktheface.json)."""
    nose = geo.p(L.NOSE_TIP)
    a, c = geo.oval_crossings(nose)
    b = (geo.p(L.NOSE_BRIDGE_TOP) + nose) / 2
    d, f = geo.oval_crossings(geo.p(17))  # 17: bottom of the lower lip
    e = geo.p(L.CHIN)
    # Turned heads: keep the side anchors beyond the mouth corners, the top ones below the eyes.
    a, d = geo.clear_of_mouth(a, -1), geo.clear_of_mouth(d, -1)
    c, f = geo.clear_of_mouth(c, 1), geo.clear_of_mouth(f, 1)
    a, b, c = geo.below_eyes(np.stack([a, b, c]))
    return np.stack([a, b, c, f, e, d])


def _bbox_anchors(bbox) -> np.ndarray:
    """Six anchors for a mask image without MaskTheFace points, from its outline."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    return np.array([[x0, y0 + 0.22 * h], [x0 + 0.5 * w, y0], [x1, y0 + 0.22 * h],
                     [x1 - 0.06 * w, y0 + 0.62 * h], [x0 + 0.5 * w, y1 - 0.02 * h],
                     [x0 + 0.06 * w, y0 + 0.62 * h]])


def pick_face_mask(items: tuple[ImageOccluder, ...], geo: FaceGeometry,
                   rng: np.random.Generator) -> ImageOccluder:
    """A mask template family at random, in the view that matches the head's yaw.

    MaskTheFace uses its *_left templates when the nose points to the image's
    left, *_right when it points right.
    """
    families = sorted({it.family for it in items})
    family = families[rng.integers(len(families))]
    views = {it.pose: it for it in items if it.family == family}
    pose = "left" if geo.yaw < -0.08 else "right" if geo.yaw > 0.08 else "frontal"
    return views.get(pose) or views.get("frontal") or next(iter(views.values()))


def glasses_transform(bbox, centroid, geo: FaceGeometry, rng: np.random.Generator) -> np.ndarray:
    """3x3 matrix putting a glasses image on the face's glasses plane, posed with the head.

    Lenses (and rims) hold most of the opaque pixels, so the image's alpha
    centroid marks the lens line even in images drawn in perspective; it goes
    between the eyes. The image's width is 1.35-1.7 outer eye-corner
    distances (a glasses front), in the plane just before the nose bridge,
    then projected with the head pose: a turned head foreshortens the glasses
    and moves them with the eyes, a tilted one tilts them.
    """
    centre, outer, depth = geo.glasses_frame()
    x0, y0, x1, y1 = bbox
    width = outer * rng.uniform(1.35, 1.7)
    height = width * (y1 - y0) / max(x1 - x0, 1.0)
    cx, cy = centroid
    centre = centre + np.array([*rng.normal(0, 0.015, 2) * outer * 1.9, 0.0])
    a = math.radians(rng.uniform(-3, 3))
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    rel = np.array([[-cx * width, -cy * height], [(1 - cx) * width, -cy * height],
                    [(1 - cx) * width, (1 - cy) * height], [-cx * width, (1 - cy) * height]])
    flat = rel @ rot.T + centre[:2]
    dst = geo.project(np.concatenate([flat, np.full((4, 1), depth)], 1))
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def image_transform(item: ImageOccluder, outline, scale: float, geo: FaceGeometry,
                    rng: np.random.Generator) -> np.ndarray:
    """3x3 matrix from occluder pixels to crop pixels, by category.

    Args:
      item: the occluder.
      outline: `OccluderLibrary.outline(item.relpath)`.
      scale: the factor `OccluderLibrary.load` shrank the image by.
      geo: the face.
      rng: random source.
    """
    bbox, centroid = outline
    fw, fh = geo.face_width, geo.face_height
    jitter = lambda s: rng.normal(0, s, 2) * fw  # noqa: E731
    tilt = lambda deg: geo.angle + math.radians(rng.uniform(-deg, deg))  # noqa: E731
    cat = item.category
    if cat == "face_mask":
        src = (np.array(item.anchors) * scale) if item.anchors else _bbox_anchors(bbox)
        dst = face_mask_points(geo) + rng.normal(0, 0.015, (6, 2)) * fw
        H, _ = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), 0)
        if H is not None:
            return H
        return placement(bbox, (0.5, 0.3), geo.mouth, fw * 1.0, geo.angle)
    if cat in ("sunglasses", "eyeglasses"):
        return glasses_transform(bbox, centroid, geo, rng)
    if cat == "hand":
        targets = [geo.mouth, geo.left_eye, geo.right_eye, geo.p(L.LEFT_CHEEK) * 0.6 + geo.mouth * 0.4,
                   geo.p(L.RIGHT_CHEEK) * 0.6 + geo.mouth * 0.4, geo.p(L.CHIN)]
        t = targets[rng.integers(len(targets))]
        return placement(bbox, (0.5, rng.uniform(0.3, 0.6)), t + jitter(0.05),
                         fw * rng.uniform(0.5, 0.95), tilt(45), flip=rng.random() < 0.5)
    if cat == "microphone":
        return placement(bbox, (0.5, rng.uniform(0.05, 0.25)),
                         geo.mouth + geo.down * fh * rng.uniform(0.0, 0.12) + jitter(0.04),
                         fw * rng.uniform(0.3, 0.55), tilt(30), flip=rng.random() < 0.5)
    if cat == "cup":
        return placement(bbox, (0.5, rng.uniform(0.1, 0.3)),
                         geo.mouth + geo.down * fh * rng.uniform(0.05, 0.18) + jitter(0.05),
                         fw * rng.uniform(0.4, 0.7), tilt(20), flip=rng.random() < 0.5)
    if cat == "phone":
        if rng.random() < 0.5:  # held to an ear
            side = L.LEFT_CHEEK if rng.random() < 0.5 else L.RIGHT_CHEEK
            t = geo.p(side) * 0.8 + geo.mouth * 0.2
            return placement(bbox, (0.5, 0.5), t + jitter(0.04), fw * rng.uniform(0.3, 0.5),
                             tilt(35), flip=rng.random() < 0.5)
        return placement(bbox, (0.5, 0.5), geo.mouth + jitter(0.08), fw * rng.uniform(0.45, 0.75),
                         tilt(20), flip=rng.random() < 0.5)
    if cat in ("hat", "hair"):
        t = geo.brow_mid - geo.down * fh * rng.uniform(-0.05, 0.15)
        return placement(bbox, (0.5, rng.uniform(0.85, 0.97)), t + jitter(0.02),
                         fw * rng.uniform(1.1, 1.5), tilt(6), flip=rng.random() < 0.5)
    if cat == "scarf":
        t = geo.p(L.NOSE_TIP) * (1 - (k := rng.uniform(0.2, 0.7))) + geo.p(L.CHIN) * k
        return placement(bbox, (0.5, rng.uniform(0.1, 0.3)), t + jitter(0.02),
                         fw * rng.uniform(1.1, 1.5), tilt(8), flip=rng.random() < 0.5)
    # "other" and any unknown category: somewhere on the face.
    t = geo.lm[rng.integers(len(geo.lm))]
    return placement(bbox, (0.5, 0.5), t, fw * rng.uniform(0.3, 0.7), tilt(40), flip=rng.random() < 0.5)


def render_image(library: OccluderLibrary, category: str, geo: FaceGeometry,
                 rng: np.random.Generator) -> tuple[Layer, str]:
    """An image occluder of `category` placed on the face; returns (layer, relpath)."""
    items = library.by_category[category]
    if category == "face_mask":
        item = pick_face_mask(items, geo, rng)
    else:
        item = items[rng.integers(len(items))]
    _, scale = library.load(item.relpath)
    H = image_transform(item, library.outline(item.relpath), scale, geo, rng)
    # Shrink by cached powers of two so the warp itself never downscales > 2x.
    level = max(0, int(math.floor(-math.log2(max(_matrix_scale(H), 1e-6)))))
    small, fx, fy = library.load_level(item.relpath, level)
    return warp_rgba(small, H @ np.diag([1 / fx, 1 / fy, 1.0]), geo.res), item.relpath
