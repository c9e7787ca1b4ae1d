"""Face geometry in crop coordinates, and the drawing primitives occluders are made of.

Every occluder renderer returns a `Layer` at crop resolution: `(rgb, alpha)`,
float32, rgb [H, W, 3] in 0..1 and alpha [H, W] in 0..1 (not premultiplied).
`FaceGeometry` gives renderers the points they anchor to (eyes, nose bridge,
chin, jaw, mask anchors) and the head's size, roll and pose.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from deocc_jax.faces import landmarks as L

Layer = tuple[np.ndarray, np.ndarray]


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


def fill_polygons(res: int | tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of filled polygons on a res^2 or (H, W) canvas."""
    canvas = np.zeros((res, res) if isinstance(res, int) else tuple(res), np.uint8)
    cv2.fillPoly(canvas, [_fix(p) for p in polygons], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return canvas.astype(np.float32) / 255.0


def face_oval_region(landmarks: np.ndarray, res: int | tuple[int, int]) -> np.ndarray:
    """bool canvas (`fill_polygons`'s): pixels at least half inside MediaPipe's face oval."""
    return fill_polygons(res, [np.asarray(landmarks, np.float64)[list(L.FACE_OVAL)]]) > 0.5


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


def solid(res: int, colour) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (res, res, 3)).copy()


def pixel_coords(res: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32)
    return xx, yy


