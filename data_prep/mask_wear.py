"""Face masks as people wear them: light and folds, straps, valves and face shields.

A face mask layer (image or procedural, printed or not) gets, each with its
own probability (`WearProbs`), drawn from the pair's generator in a fixed order:

  * "lit": shading of the mask as a curved surface under the light measured on
    the face (`light_direction`), so the side away from the light and the part
    under the chin fall off as the face's own skin does;
  * "pleats": horizontal folds, each a band tilted towards the chin ending in a
    crease, shaded by the same light;
  * "valve": an N95-style exhalation valve on one side of the lower mask;
  * "straps": ear loops, or head bands, from the mask's side edges to the ears;
  * "shield": a clear face shield over the whole face (over the mask, or alone
    as "shield_only"), mostly transparent, with glare, a tint and a headband.

`WornMask.tags` name what was drawn; the prep report counts them as part of a
pair's kind (`synth.Synthesis.kind`, e.g. "face_mask:dots/dark+lit+straps").

A shield is a face mask's kind rather than a category of its own: it is worn
like one, and the categories are those of the occluders folder. Its training
mask is its whole area (alpha > 0), eyes included, and the target there is the
clean face: the plastic changes every pixel it covers (tint, glare, lost
contrast), so leaving the see-through part out of the mask would teach the
model to keep the tint, and would break the pair contract (occluded == clean
outside the mask). The stored alpha (0.15-0.35 over the face) keeps how little
it hides. Straps never cross the eyes; a valve stays inside the mask's outline.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from data_prep.geometry import (FaceGeometry, Layer, ellipse_points, face_oval_region, fill_polygons,
                                over, pixel_coords, solid, stroke)
from deocc_jax.faces import landmarks as L

# Tags in the order they are drawn and written into a pair's kind.
WEAR_TAGS = ("lit", "pleats", "valve", "straps", "shield")
SHIELD_ONLY = "shield_only"
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class WearProbs:
    """Probability of each wear feature on a face-mask pair (0 draws nothing).

    Attributes:
      light, pleats, valve, straps: see the module docstring.
      shield: probability of a face shield; half of them are worn without a mask.
    """
    light: float = 0.7
    pleats: float = 0.3
    valve: float = 0.15
    straps: float = 0.6
    shield: float = 0.08


@dataclasses.dataclass(frozen=True)
class MaskBody:
    """Where a drawn mask lies, in face-surface coordinates.

    Attributes:
      u: [R, R] across the mask along the eye line: -1 at its image-left edge,
        +1 at its image-right edge (measured at mid height).
      v: [R, R] down the mask: 0 at its top edge, 1 at its bottom edge.
      inside: [R, R] bool, the mask's body (thin loops removed).
      half_width, height: in crop pixels.
      sides: {-1: (upper, lower), +1: (upper, lower)}: points [2] on the body's
        image-left / image-right edge, near its top and its bottom corner.
    """
    u: np.ndarray
    v: np.ndarray
    inside: np.ndarray
    half_width: float
    height: float
    sides: dict


def _surface_axes(geo: FaceGeometry) -> tuple[np.ndarray, np.ndarray]:
    """float32 [R, R] pixel coordinates along the eye line and along `down`."""
    xx, yy = pixel_coords(geo.res)
    (rx, ry), (dx, dy) = (np.float32(c) for c in geo.right), (np.float32(c) for c in geo.down)
    return xx * rx + yy * ry, xx * dx + yy * dy


def mask_body(alpha: np.ndarray, geo: FaceGeometry) -> MaskBody | None:
    """The body of a mask layer, or None when it is too small to measure."""
    k = max(3, int(round(0.03 * geo.face_width)) | 1)
    inside = cv2.morphologyEx((alpha > 0.5).astype(np.uint8), cv2.MORPH_OPEN,
                              np.ones((k, k), np.uint8)) > 0
    if inside.sum() < 64:
        return None
    along, dep = _surface_axes(geo)
    a_in, d_in = along[inside], dep[inside]
    top, bottom = float(np.quantile(d_in, 0.01)), float(np.quantile(d_in, 0.99))
    height = max(bottom - top, 1.0)
    mid = (d_in > top + 0.3 * height) & (d_in < top + 0.6 * height)
    if mid.sum() < 8:
        return None
    lo, hi = float(a_in[mid].min()), float(a_in[mid].max())
    centre, half = (lo + hi) / 2, max((hi - lo) / 2, 1.0)
    sides = {}
    for side in (-1, 1):
        pts = []
        for at in (0.15, 0.8):
            band = np.abs(d_in - (top + at * height)) < 0.06 * height
            if not band.any():
                return None
            a_b, d_b = a_in[band], d_in[band]
            i = int(np.argmin(a_b)) if side < 0 else int(np.argmax(a_b))
            pts.append(geo.right * a_b[i] + geo.down * d_b[i])
        sides[side] = (pts[0], pts[1])
    return MaskBody(u=((along - centre) / half).astype(np.float32),
                    v=((dep - top) / height).astype(np.float32),
                    inside=inside, half_width=half, height=height, sides=sides)


def light_direction(shading: np.ndarray, geo: FaceGeometry) -> np.ndarray:
    """Unit light direction (right, down, towards the camera) from the face's shading.

    A plane fitted to the shading over the face oval gives its slope per face
    width across and down the face; on a roughly spherical face a slope s
    comes from a light tilted by about atan(s / 2) towards the brighter side.
    """
    step = max(1, geo.res // 64)  # a subsampled fit: the shading is smooth
    region = face_oval_region(geo.lm, geo.res)[::step, ::step]
    s = shading[::step, ::step][region]
    if s.size < 16:
        return np.array([0.0, -0.3, 1.0]) / np.hypot(0.3, 1.0)
    xx, yy = pixel_coords(geo.res)
    d = np.stack([xx[::step, ::step][region], yy[::step, ::step][region]], -1) - geo.eye_mid
    u, v = d @ geo.right / geo.face_width, d @ geo.down / geo.face_width
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(u), u, v], -1), s, rcond=None)
    light = np.array([np.clip(coef[1] / 2, -0.9, 0.9), np.clip(coef[2] / 2, -0.9, 0.9), 1.0])
    return light / np.linalg.norm(light)


def _lambert(theta: np.ndarray, phi: np.ndarray, light: np.ndarray, ambient: float) -> np.ndarray:
    """Shading of a surface turned by theta (about the vertical) and tilted by phi (down)."""
    theta = np.asarray(theta, np.float32)
    phi = np.asarray(phi, np.float32)
    lx, ly, lz = (float(x) for x in light)
    cos_phi = np.cos(phi)
    n_dot_l = (np.sin(theta) * lx + np.cos(theta) * lz) * cos_phi + np.sin(phi) * ly
    return ambient + (1 - ambient) * np.clip(n_dot_l, 0, 1)


def _normalised(shade: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Shade with median 1 over the mask: exposure is `finish_layer`'s business."""
    level = float(np.median(shade[inside])) if inside.any() else 1.0
    return (shade / max(level, 1e-3)).astype(np.float32)


def light_shading(body: MaskBody, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[R, R] multiplier: the mask as a surface wrapped round the face, lit by `light`.

    It turns away from the camera towards its side edges (up to about 60-75
    degrees) and from the nose down under the chin, so under a side light one
    cheek of the mask falls off, under a top light its lower part does.
    """
    theta = np.clip(body.u, -1.2, 1.2) * rng.uniform(1.05, 1.3)
    phi = (np.clip(body.v, -0.2, 1.2) - rng.uniform(0.35, 0.5)) * rng.uniform(0.8, 1.4)
    return _normalised(_lambert(theta, phi, light, rng.uniform(0.3, 0.5)), body.inside)


def pleat_shading(body: MaskBody, light: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[R, R] multiplier: 2-4 horizontal pleats, each a band facing down a little
    more towards its lower edge and a crease where the next one overlaps it."""
    n = int(rng.integers(2, 5))
    top, bottom = rng.uniform(0.12, 0.22), rng.uniform(0.78, 0.9)
    bow = rng.uniform(0.0, 0.08)  # pleats bend with the mask's curve
    t = (body.v - top - bow * body.u ** 2) / (bottom - top)
    phase = np.mod(t * n, 1.0)
    on = (t > 0) & (t < 1)
    depth = rng.uniform(0.5, 0.9)
    # Surface tilt within a pleat: flat at its top, folding under at its crease.
    phi = np.where(on, depth * phase ** 2, 0.0)
    theta = np.clip(body.u, -1.2, 1.2)
    lit = _lambert(theta, phi, light, 0.35) / np.maximum(_lambert(theta, 0 * phi, light, 0.35), 1e-3)
    crease = 1 - rng.uniform(0.25, 0.45) * np.exp(-((phase - 1) / 0.045) ** 2) * on
    crease *= 1 - rng.uniform(0.2, 0.4) * np.exp(-(phase / 0.03) ** 2) * on  # the fold's shadow below
    edge = 1 + rng.uniform(0.05, 0.12) * np.exp(-((phase - 0.93) / 0.03) ** 2) * on  # its lit lip
    return (lit * crease * edge).astype(np.float32)


def _side_colour(cloth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's colour, or white / black / grey where that shows against it."""
    lum = float(cloth @ _LUMA)
    choices = [cloth * rng.uniform(0.85, 1.1), np.array([0.93, 0.93, 0.92]),
               np.array([0.08, 0.08, 0.09]) if lum > 0.3 else np.array([0.7, 0.7, 0.72])]
    return np.clip(choices[int(rng.integers(len(choices)))], 0, 1).astype(np.float32)


def valve(body: MaskBody, geo: FaceGeometry, cloth: np.ndarray, light: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exhalation valve on one side of the lower mask: a domed cap, a rim and slats.

    Returns (rgb, coverage, shadow): the valve's layer and the contact shadow
    (0..1) it casts on the mask.

    Drawn on the mask's surface: its width shrinks with how far that part of
    the mask is turned from the camera, and it is shaded by the same light.
    """
    res = geo.res
    side = rng.choice([-1.0, 1.0])
    at_u, at_v = side * rng.uniform(0.35, 0.5), rng.uniform(0.5, 0.62)
    turn = abs(at_u) * 1.15
    # The centre in pixels: invert body.u / body.v at that point by a search of the body grid.
    d = (body.u - at_u) ** 2 + (body.v - at_v) ** 2
    iy, ix = np.unravel_index(int(np.argmin(np.where(body.inside, d, np.inf))), d.shape)
    centre = np.array([ix, iy], np.float64)
    radius = geo.face_width * rng.uniform(0.08, 0.11)
    squareness = 0.0 if rng.random() < 0.6 else rng.uniform(0.4, 0.8)
    half_w, half_h = radius * np.cos(turn), radius
    outline = ellipse_points(centre, half_w, half_h, geo.angle, squareness=squareness)
    inner = ellipse_points(centre, half_w * 0.72, half_h * 0.72, geo.angle, squareness=squareness)
    cap = fill_polygons(res, [outline])
    rim = np.clip(cap - fill_polygons(res, [inner]), 0, 1)
    base = _side_colour(cloth, rng)
    slat_freq = rng.uniform(2.5, 4.0)
    rgb = solid(res, base)
    # Only the valve's neighbourhood is shaded: the rest of its layer is transparent.
    reach = int(np.ceil(radius * 1.2)) + 1
    x0, y0 = (max(0, int(c) - reach) for c in centre)
    x1, y1 = (min(res, int(c) + reach + 1) for c in centre)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    px, py = xx - np.float32(centre[0]), yy - np.float32(centre[1])
    du = (px * np.float32(geo.right[0]) + py * np.float32(geo.right[1])) / np.float32(max(half_w, 1.0))
    dv = (px * np.float32(geo.down[0]) + py * np.float32(geo.down[1])) / np.float32(max(half_h, 1.0))
    # A dome: normals tilt outwards towards its edge, on top of the mask's own turn.
    r = np.clip(np.hypot(du, dv), 0, 1)
    theta = side * turn + 0.9 * du * (1 - 0.3 * r)
    phi = 0.9 * dv * (1 - 0.3 * r)
    local = base[None, None, :] * _lambert(theta, phi, light, 0.35)[..., None]
    local = np.where(rim[y0:y1, x0:x1, None] > 0.5, local * 0.7, local)
    slats = (np.abs(np.mod(dv * slat_freq, 1.0) - 0.5) < 0.12) & (r < 0.6)
    local = np.where(slats[..., None], local * 0.55, local)
    spec = np.exp(-((du + float(light[0]) * 0.6) ** 2 + (dv + float(light[1]) * 0.6) ** 2) / 0.05)
    rgb[y0:y1, x0:x1] = local + 0.25 * (spec * (r < 0.9))[..., None]
    # A contact shadow on the mask just beyond the cap, away from the light.
    shadow_c = centre - (geo.right * light[0] + geo.down * light[1]) * radius * 0.25
    shadow = fill_polygons(res, [ellipse_points(shadow_c, half_w * 1.12, half_h * 1.12, geo.angle,
                                                squareness=squareness)])
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(radius * 0.12, 0.5)) * (1 - cap) * body.inside
    return np.clip(rgb, 0, 1).astype(np.float32), cap.astype(np.float32), shadow.astype(np.float32)


# Face-oval points by one ear, from above it to below it: temple, ear root, lobe, jaw.
_EAR_SIDES = ((127, 234, 93, 132), (356, 454, 323, 361))


def _ear_points(geo: FaceGeometry, side: int) -> np.ndarray:
    """[4, 2] face-oval points by the ear on one side (-1 image-left), pushed out a little."""
    a, b = (geo.lm[list(i)] for i in _EAR_SIDES)
    # Which is which in the image depends on the mirror, not on the names.
    pts = a if np.sign(float((a.mean(0) - b.mean(0)) @ geo.right)) == side else b
    return pts + geo.right * side * 0.015 * geo.face_width


def _curve(a: np.ndarray, ctrl: np.ndarray, b: np.ndarray, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t ** 2 * b


def straps(body: MaskBody, geo: FaceGeometry, cloth: np.ndarray, rng: np.random.Generator,
           bands: bool) -> Layer:
    """Ear loops (from the top and bottom corners of each side round the ear) or,
    for respirators (`bands`), two head bands per side running back above and below it."""
    res = geo.res
    thick = max(1.0, geo.face_width * rng.uniform(0.012, 0.022) * (1.5 if bands else 1.0))
    cover = np.zeros((res, res), np.float32)
    # Where the nose points, the face turns away: that side's straps run behind the cheek.
    oval = geo.lm[list(L.FACE_OVAL)] @ geo.right
    turned = (float(geo.p(L.NOSE_TIP) @ geo.right) - (oval.min() + oval.max()) / 2) / geo.face_width
    eyes = cv2.dilate(fill_polygons(res, [geo.lm[list(L.LEFT_EYE_CONTOUR)],
                                          geo.lm[list(L.RIGHT_EYE_CONTOUR)]]),
                      np.ones((5, 5), np.uint8)) > 0
    for side in (-1, 1):
        upper, lower = body.sides[side]
        temple, root, lobe, jaw = _ear_points(geo, side)
        # A far side whose mask edge is already past the ear: nothing shows either.
        if turned * side > 0.06 or float((root - upper) @ geo.right) * side <= 0:
            continue
        if bands:  # back over the head above the ear, and round the neck below it
            lines = [_curve(upper, (upper + temple) / 2 + geo.down * 0.03 * geo.face_width, temple),
                     _curve(lower, (lower + jaw) / 2, jaw + geo.down * 0.08 * geo.face_width)]
        else:  # to the ear's root and up from its lobe; the loop behind the ear is hidden
            sag = geo.down * rng.uniform(0.0, 0.04) * geo.face_width
            lines = [_curve(upper, (upper + root) / 2 - geo.down * 0.02 * geo.face_width, root),
                     _curve(lower, (lower + lobe) / 2 + sag, lobe)]
        drawn = np.max([stroke(res, line, thick) for line in lines], axis=0)
        if not (drawn[eyes] > 0).any():  # a strap never runs over an eye
            cover = np.maximum(cover, drawn)
    cover = cover * (1 - body.inside)  # the body covers the strap's start
    colour = _side_colour(cloth, rng)
    # A band is round: its antialiased edges (low coverage) darker than its middle.
    rgb = colour * (0.75 + 0.25 * cover)[..., None]
    return rgb.astype(np.float32), (cover * rng.uniform(0.85, 1.0)).astype(np.float32)


_SHIELD_TINTS = np.array([(0.86, 0.9, 0.95), (0.9, 0.92, 0.9), (0.8, 0.88, 0.95),
                          (0.92, 0.9, 0.85)], np.float32)
_BAND_COLOURS = np.array([(0.08, 0.08, 0.1), (0.93, 0.93, 0.92), (0.2, 0.35, 0.7),
                          (0.55, 0.56, 0.58), (0.75, 0.2, 0.2)], np.float32)


def face_shield(geo: FaceGeometry, light: np.ndarray, rng: np.random.Generator) -> Layer:
    """A clear visor from the forehead to below the chin with a headband at its top.

    The plastic takes 15-30% of the light (a tint and its reflections), more
    where it curves away from the camera at its sides and along its cut edge;
    glare is a soft band on the side the light comes from. The headband
    across the forehead is opaque.
    """
    res = geo.res
    fw, fh = geo.face_width, geo.face_height
    top_d = float(np.dot(geo.brow_mid, geo.down)) - rng.uniform(0.12, 0.2) * fh
    bottom_d = float(np.dot(geo.p(L.CHIN), geo.down)) + rng.uniform(0.08, 0.25) * fh
    centre_a = float(np.dot(geo.eye_mid, geo.right))
    half = fw * rng.uniform(0.6, 0.72)
    # Outline in (along, down): a straight top, straight sides, a rounded bottom.
    round_h = (bottom_d - top_d) * rng.uniform(0.2, 0.4)
    t = np.linspace(0, np.pi, 24)
    e = 2.0 / (2.0 + 6.0 * rng.uniform(0.2, 0.7))
    bottom = np.stack([half * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** e,
                       bottom_d - round_h + round_h * np.sin(t) ** e], -1)
    outline = np.concatenate([[[half, top_d]], bottom, [[-half, top_d]]])
    outline = outline[:, :1] * geo.right + outline[:, 1:] * geo.down + centre_a * geo.right
    cover = fill_polygons(res, [outline])
    along, dep = _surface_axes(geo)
    along = along - np.float32(centre_a)
    u = along / half
    v = (dep - top_d) / max(bottom_d - top_d, 1.0)
    # The cut edge catches light: more opaque within a pixel or two of the outline.
    dist = cv2.distanceTransform((cover > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    edge = np.clip(1 - dist / max(0.012 * fw, 1.4), 0, 1)
    base = rng.uniform(0.15, 0.28)
    side = np.minimum(np.abs(u), 1)
    fresnel = base + (0.35 - base) * side * side * side
    glare_u = float(np.sign(light[0]) * rng.uniform(0.3, 0.7) if abs(light[0]) > 0.05
                    else rng.uniform(-0.7, 0.7))
    slant = rng.uniform(-0.25, 0.25)
    g = np.exp(-((u - glare_u - slant * v) / rng.uniform(0.05, 0.12)) ** 2)
    alpha = cover * np.clip(fresnel + 0.3 * edge + g * rng.uniform(0.12, 0.25), 0, 0.6)
    tint = _SHIELD_TINTS[rng.integers(len(_SHIELD_TINTS))]
    rgb = tint * (1 - 0.05 * np.clip(v, 0, 1)[..., None])
    rgb = rgb * (1 - g[..., None]) + 0.98 * g[..., None]
    # Headband: opaque foam over the shield's top, following the head's roll.
    band_h = fh * rng.uniform(0.05, 0.08)
    band = np.clip(0.5 + (band_h / 2 - np.abs(dep - top_d - band_h / 2)), 0, 1)
    band *= np.clip(0.5 + (half * 1.03 - np.abs(along)), 0, 1)
    band_colour = _BAND_COLOURS[rng.integers(len(_BAND_COLOURS))]
    on = band > 0  # shaded as a band round the head, only where it is
    turn = np.clip(u[on], -1, 1)
    band_rgb = np.zeros((res, res, 3), np.float32)
    band_rgb[on] = band_colour * ((0.8 + 0.2 * np.cos(turn * 1.2))
                                  * _lambert(turn * 1.1, 0 * turn, light, 0.5))[:, None]
    shield = (np.clip(rgb, 0, 1).astype(np.float32), alpha.astype(np.float32))
    top = (np.clip(band_rgb, 0, 1), band.astype(np.float32))
    return _over_sparse(top, shield, top)


def _over_sparse(top: Layer, bottom: Layer, sparse: Layer) -> Layer:
    """`over(top, bottom)` where one of them (`sparse`, a valve or straps) covers few
    pixels: elsewhere the other layer is the answer as it is, so only those are blended."""
    dense = bottom if sparse is top else top
    on = sparse[1] > 0
    rgb, alpha = dense[0].copy(), dense[1].copy()
    blended = over((top[0][on][None], top[1][on][None]), (bottom[0][on][None], bottom[1][on][None]))
    rgb[on], alpha[on] = blended[0][0], blended[1][0]
    return rgb, alpha


@dataclasses.dataclass(frozen=True)
class WornMask:
    """A face-mask layer as worn, and the tags of what was drawn (WEAR_TAGS order)."""
    layer: Layer
    tags: tuple[str, ...]


def draw_shield(rng: np.random.Generator, probs: WearProbs = WearProbs()) -> str | None:
    """None, "shield" (over the mask) or "shield_only" (no mask); draws nothing at probability 0.

    Drawn before the mask is restyled, so a shield worn alone skips the print.
    """
    if not (probs.shield > 0 and rng.random() < probs.shield):
        return None
    return SHIELD_ONLY if rng.random() < 0.5 else "shield"


def wear_mask(layer: Layer, geo: FaceGeometry, shading: np.ndarray, rng: np.random.Generator,
              probs: WearProbs = WearProbs(), *, shield: str | None = None,
              loops_drawn: bool = False) -> WornMask:
    """Lights and folds a face mask, fits it with a valve and straps, and adds a shield.

    Args:
      layer: the mask as rendered (and restyled).
      geo: the face.
      shading: `synth.PhotoStats.shading`, the face's measured light.
      rng: the pair's generator; a feature whose probability is 0 draws nothing.
      probs: each feature's probability.
      shield: `draw_shield`'s answer; "shield_only" returns the shield alone.
      loops_drawn: the renderer already drew ear loops (procedural masks), so no straps.

    Returns:
      The worn layer, and tags of what was drawn in WEAR_TAGS order, or
      ("shield_only",) for a shield worn without a mask.
    """
    if shield == SHIELD_ONLY:
        return WornMask(face_shield(geo, light_direction(shading, geo), rng), (SHIELD_ONLY,))

    def draw(p: float) -> bool:
        return p > 0 and rng.random() < p

    wanted = {"lit": draw(probs.light), "pleats": draw(probs.pleats), "valve": draw(probs.valve),
              "straps": draw(probs.straps) and not loops_drawn}
    tags = []
    rgb, alpha = layer
    body = mask_body(alpha, geo) if any(wanted.values()) else None
    light = light_direction(shading, geo) if body is not None or shield else None
    if body is not None:
        cloth = np.median(rgb[body.inside], axis=0).astype(np.float32)
        shade = np.ones(alpha.shape, np.float32)
        if wanted["lit"]:
            strength = rng.uniform(0.6, 1.0)  # partly diffuse light: less than full
            shade *= 1 + strength * (light_shading(body, light, rng) - 1)
            tags.append("lit")
        if wanted["pleats"]:
            shade *= pleat_shading(body, light, rng)
            tags.append("pleats")
        rgb = np.clip(rgb * shade[..., None], 0, 1).astype(np.float32)
        if wanted["valve"]:
            v_rgb, v_cover, v_shadow = valve(body, geo, cloth, light, rng)
            rgb = rgb * (1 - 0.35 * v_shadow[..., None])
            top = (v_rgb, v_cover)
            rgb, alpha = _over_sparse(top, (rgb, alpha), top)
            tags.append("valve")
        if wanted["straps"]:
            # Respirators (a valve) are held by head bands more often than by ear loops.
            bands = rng.random() < (0.7 if wanted["valve"] else 0.2)
            bottom = straps(body, geo, cloth, rng, bands)
            rgb, alpha = _over_sparse((rgb, alpha), bottom, bottom)
            tags.append("straps")
    if shield:
        rgb, alpha = over(face_shield(geo, light, rng), (rgb, alpha))
        tags.append("shield")
    return WornMask((np.clip(rgb, 0, 1).astype(np.float32), alpha.astype(np.float32)), tuple(tags))
