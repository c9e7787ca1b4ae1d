"""Procedural occluders: face masks, glasses and shapes drawn from the landmarks.

Renderers draw every random choice from the `np.random.Generator` they are
given, in a fixed order, so a seeded generator gives the same layer on any
machine. They need no image: `PROCEDURAL_CATEGORIES` can be drawn without an
occluders folder.
"""

from __future__ import annotations

import math

import numpy as np

from data_prep.geometry import (FaceGeometry, Layer, ellipse_points, fill_polygons, over, pixel_coords,
                                smooth_noise, solid, stroke)
from deocc_jax.faces import landmarks as L

PROCEDURAL = "procedural"
# Categories the project can draw without any image (see `render_procedural`).
PROCEDURAL_CATEGORIES = ("face_mask", "sunglasses", "eyeglasses", PROCEDURAL)


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
    xx, yy = pixel_coords(res)
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
    return over((rgb, alpha), (solid(res, loop_colour), loops * rng.uniform(0.8, 1.0)))


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
    xx, yy = pixel_coords(res)
    if sunglasses:
        tint = _TINTS[rng.integers(len(_TINTS))]
        # Darker at the top, like gradient lenses; a faint sky reflection.
        grad = np.clip(((np.stack([xx, yy], -1) @ geo.down) - geo.depth(geo.eye_mid)) / (
            2 * half_h * geo.pose.scale) + 0.5, 0, 1)
        lens_rgb = tint[None, None, :] * (0.7 + rng.uniform(0.2, 0.8) * grad[..., None])
        lens_rgb = lens_rgb + rng.uniform(0.0, 0.12) * np.exp(-((grad - 0.25) * 6) ** 2)[..., None]
        lens_alpha = lens_a * rng.uniform(0.82, 0.97)
    else:
        lens_rgb = solid(res, (0.85, 0.9, 0.95))
        lens_alpha = lens_a * rng.uniform(0.04, 0.15)  # clear lens: a light tint and glare
    frame_rgb = frame_col[None, None, :] * (0.85 + 0.3 * smooth_noise(res, rng, res / 16)[..., :1] * 0.5)
    return over((np.clip(frame_rgb, 0, 1), frame_a), (np.clip(lens_rgb, 0, 1).astype(np.float32), lens_alpha))


def _texture(res: int, rng: np.random.Generator) -> np.ndarray:
    """A random RGB texture: noise, stripes, checks or a gradient between two colours."""
    c1, c2 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    xx, yy = pixel_coords(res)
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


