"""Occlusion synthesis: one occluder per variant, composited onto an aligned face.

The contract every pair keeps (tests check it on real faces):
  * `mask` (0/255) is exactly `alpha > 0`, and `alpha` covers the occluder, its
    shadow and every pixel a JPEG round trip changed, so `occluded == clean`
    wherever `mask == 0`, bit for bit;
  * every random choice comes from the generator passed in, which
    `variant_rng(seed, source_id, variant)` derives with sha256 (never Python's
    salted `hash`), so a pair depends only on its inputs.

Occluders are made to look like part of the photo rather than pasted on
(`PhotoStats`, `finish_layer`): they take the scene's light (exposure and
colour cast of the photo, the face's own shading measured on its skin), its
sharpness (blurred to the face's measured blur) and its sensor noise (the
face's measured noise), and optionally one JPEG round trip shared by clean and
occluded. Placement follows the head's roll, yaw and pitch (geometry.py, occluders.py).
"""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np

from data_prep import mask_styles, mask_wear, occluders as occ, procedural
from data_prep.geometry import FaceGeometry, Layer, fill_polygons, stroke
from deocc_jax.faces import landmarks as L

# Relative weight of each category when a variant draws its occluder.
# Categories without images (no --occluders_dir) drop out unless procedural.
# "hair" is off by default: the shared set's hair images are emoji heads.
DEFAULT_WEIGHTS: dict[str, float] = {
    "face_mask": 3.0, "sunglasses": 1.5, "eyeglasses": 1.0, "hand": 2.0, "microphone": 0.7,
    "cup": 0.7, "phone": 0.7, "hat": 0.7, "scarf": 0.5, "hair": 0.0, "other": 0.7,
    "procedural": 1.5,
}


def parse_weights(spec: str | None) -> dict[str, float]:
    """"face_mask=3,hand=1" -> weights; listed categories only. None/"" -> defaults."""
    if not spec:
        return dict(DEFAULT_WEIGHTS)
    out = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in occ.ALL_CATEGORIES:
            raise ValueError(f"bad category weight {part!r}: expected NAME=WEIGHT with NAME in "
                             f"{list(occ.ALL_CATEGORIES)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"bad category weight {part!r}: {value!r} is not a number") from None
    validate_weights(out)
    return out


def validate_weights(weights: dict[str, float]) -> None:
    """Raises ValueError for unknown categories, negative weights or all zeros."""
    for name, w in weights.items():
        if name not in occ.ALL_CATEGORIES:
            raise ValueError(f"unknown occluder category {name!r} (known: {list(occ.ALL_CATEGORIES)})")
        if not w >= 0:
            raise ValueError(f"weight of {name!r} must be >= 0, got {w}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"every category weight is 0 in {weights}")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Knobs of occlusion synthesis.

    Attributes:
      weights: category -> relative weight.
      image_share: for categories with both image and procedural occluders
        (face masks, glasses), the probability of using an image.
      shadow_prob: probability of a soft shadow under the occluder.
      min_coverage: smallest fraction of the crop an occluder must cover; a
        draw below it (e.g. a hat pushed off the crop) is redrawn.
      jpeg_prob: probability of one JPEG round trip shared by clean and occluded.
      jpeg_quality: (lowest, highest) quality of that round trip.
      mask_style_prob: probability that a face mask (image or procedural) is
        printed and/or recoloured as people wear them (`mask_styles.draw_mask_style`:
        dots, stripes, checks, camouflage, text; dark or saturated cloth);
        0 draws nothing, so pairs are those of a build without styles.
      mask_wear: probability of each wear feature of a face mask
        (`mask_wear.WearProbs`: light-following shading, pleats, a valve,
        straps, a face shield); 0 draws nothing, as for styles.
    """
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    image_share: float = 0.7
    shadow_prob: float = 0.4
    min_coverage: float = 0.01
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (50, 95)
    mask_style_prob: float = 0.5
    mask_wear: mask_wear.WearProbs = mask_wear.WearProbs()


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """One pair. `clean` is the input crop, or its JPEG round trip when one was drawn."""
    occluded: np.ndarray  # uint8 [H, W, 3]
    alpha: np.ndarray     # uint8 [H, W, 1]
    mask: np.ndarray      # uint8 [H, W, 1], 0 or 255
    category: str
    occluder: str         # image relpath or "procedural:<category>"
    clean: np.ndarray | None = None     # uint8 [H, W, 3]
    jpeg_quality: int | None = None
    style: str | None = None            # `mask_styles.MaskStyle.kind` of a restyled face mask
    wear: str | None = None             # `mask_wear` tags of a worn face mask, "+"-joined

    @property
    def kind(self) -> str:
        """What a report counts: the category, then a face mask's print/colouring and
        wear, e.g. "face_mask:dots/dark+lit+straps", "face_mask:lit", "face_mask:shield_only"."""
        detail = "+".join(p for p in (self.style, self.wear) if p)
        return f"{self.category}:{detail}" if detail else self.category


def variant_rng(seed: int, source_id: str, variant: int) -> np.random.Generator:
    """Generator for one (seed, source, variant): same numbers in any process."""
    digest = hashlib.sha256(f"{int(seed)}\x00{source_id}\x00{int(variant)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def available_categories(library: occ.OccluderLibrary | None,
                         weights: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """(categories, probabilities) that can actually be drawn, in a fixed order."""
    cats, w = [], []
    for c in occ.ALL_CATEGORIES:
        has_image = library is not None and bool(library.by_category.get(c))
        if weights.get(c, 0) > 0 and (has_image or c in procedural.PROCEDURAL_CATEGORIES):
            cats.append(c)
            w.append(weights[c])
    if not cats:
        raise ValueError(f"no occluder category is available with weights {weights} "
                         f"(procedural ones: {list(procedural.PROCEDURAL_CATEGORIES)})")
    w = np.asarray(w, np.float64)
    return cats, w / w.sum()


def _render(category: str, geo: FaceGeometry, rng: np.random.Generator,
            library: occ.OccluderLibrary | None, image_share: float) -> tuple[Layer, str]:
    has_image = library is not None and bool(library.by_category.get(category))
    use_image = has_image and (category not in procedural.PROCEDURAL_CATEGORIES or rng.random() < image_share)
    if use_image:
        return occ.render_image(library, category, geo, rng)
    return procedural.render_procedural(category, geo, rng), f"procedural:{category}"


# ----------------------------------------------------------------------------
# The photo's light, sharpness and noise, measured on the face.
# ----------------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def skin_mask(geo: FaceGeometry) -> np.ndarray:
    """float32 [R, R] 0/1: inside the face oval, without eyes, brows and lips."""
    res = geo.res
    skin = fill_polygons(res, [geo.lm[list(L.FACE_OVAL)]])
    holes = fill_polygons(res, [geo.lm[list(L.LEFT_EYE_CONTOUR)], geo.lm[list(L.RIGHT_EYE_CONTOUR)],
                                geo.lm[list(L.LIPS_OUTER)]])
    brows = np.maximum(stroke(res, geo.lm[list(L.LEFT_BROW)], 0.04 * geo.face_width),
                       stroke(res, geo.lm[list(L.RIGHT_BROW)], 0.04 * geo.face_width))
    k = max(3, int(round(0.03 * geo.face_width)) | 1)
    holes = cv2.dilate(np.maximum(holes, brows), np.ones((k, k), np.uint8))
    return ((skin > 0.5) & (holes < 0.5)).astype(np.float32)


def estimate_noise(gray: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sensor noise sigma (same units as `gray`), Immerkaer's Laplacian-difference
    estimator with a median, so that edges and texture barely count."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = np.abs(cv2.filter2D(gray.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT))
    r = r[1:-1, 1:-1]
    if region is not None:
        r = r[region[1:-1, 1:-1] > 0.5]
    if r.size < 16:
        return 0.0
    # |N * noise| has std 6 sigma (sum of squared weights 36); median|x| = 0.6745 std.
    return float(np.median(r) / (0.6745 * 6.0))


def estimate_blur(gray: np.ndarray, region: np.ndarray | None = None, probe: float = 1.0) -> float:
    """Gaussian blur sigma (pixels) of an image's edges.

    A step edge blurred by sigma has a gradient peak proportional to 1/sigma,
    and 1/sqrt(sigma^2 + probe^2) after a further known blur; the ratio of the
    strong-edge gradients before and after gives sigma, whatever the edge
    contrast (tests check it on edges of known blur).
    """
    g = gray.astype(np.float32)

    def strong(x):
        gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3) / 8
        m = np.hypot(gx, gy)
        m = m[region > 0.5] if region is not None else m.ravel()
        return float(np.quantile(m, 0.98)) if m.size >= 16 else 0.0

    m0 = strong(g)
    if m0 <= 1e-6:
        return 0.0
    ratio = min(strong(cv2.GaussianBlur(g, (0, 0), probe)) / m0, 0.995)
    # The 3x3 Sobel itself blurs by about 0.5 px; what is left is the image's own.
    total = probe * ratio / np.sqrt(1 - ratio ** 2)
    return float(np.sqrt(max(total ** 2 - 0.5 ** 2, 0.0)))


@dataclasses.dataclass(frozen=True)
class PhotoStats:
    """What an occluder must share with the photo to look like it was there.

    Attributes:
      illuminant: float32 [3], grey-world colour of the crop, mean 1.
      light: exposure of the scene (bright surfaces' luminance, 0..1).
      shading: float32 [R, R], the face's low-frequency shading measured on
        its skin (1 = average), spread smoothly beyond the face.
      light_side: > 0 when the image-right side of the face is brighter.
      blur: Gaussian sigma of the face's edges, in crop pixels.
      noise: noise sigma in 0..1 units.
    """
    illuminant: np.ndarray
    light: float
    shading: np.ndarray
    light_side: float
    blur: float
    noise: float


def photo_stats(clean: np.ndarray, geo: FaceGeometry) -> PhotoStats:
    """Measures light, shading, sharpness and noise of an aligned face crop."""
    f = clean.astype(np.float32) / 255.0
    lum = f @ _LUMA
    skin = skin_mask(geo)
    if skin.sum() < 32:  # a degenerate face: whole-crop statistics only
        skin = np.ones_like(skin)
    sigma = 0.07 * geo.res
    weight = cv2.GaussianBlur(skin, (0, 0), sigma)
    smooth = cv2.GaussianBlur(lum * skin, (0, 0), sigma) / np.maximum(weight, 1e-4)
    level = float(np.median(smooth[skin > 0.5])) if (skin > 0.5).any() else float(lum.mean())
    shading = smooth / max(level, 1e-3)
    # Away from the face the estimate rests on few pixels: fade it to flat.
    trust = np.clip(weight / max(float(weight.max()), 1e-6) * 3.0, 0.0, 1.0)
    shading = np.clip(1.0 + (shading - 1.0) * trust, 0.4, 1.6).astype(np.float32)
    side = (np.stack(np.mgrid[0:geo.res, 0:geo.res][::-1], -1).astype(np.float32) @ geo.right
            - float(np.dot(geo.eye_mid, geo.right)))
    on = skin > 0.5
    left = float(lum[on & (side < 0)].mean()) if (on & (side < 0)).any() else level
    right = float(lum[on & (side >= 0)].mean()) if (on & (side >= 0)).any() else level
    mean_rgb = f.reshape(-1, 3).mean(0)
    return PhotoStats(
        illuminant=(mean_rgb / max(float(mean_rgb.mean()), 1e-3)).astype(np.float32),
        light=float(np.quantile(lum, 0.95)),
        shading=shading,
        light_side=(right - left) / max(level, 1e-3),
        blur=estimate_blur(lum, cv2.dilate(fill_polygons(geo.res, [geo.lm[list(L.FACE_OVAL)]]),
                                          np.ones((5, 5), np.uint8))),
        noise=estimate_noise(lum, skin))


def _layer_blur(layer: Layer) -> float:
    """Blur of an occluder layer's own edges (its outline over mid-grey, and its texture)."""
    rgb, a = layer
    lum = (rgb @ _LUMA) * a + 0.5 * (1 - a)
    region = cv2.dilate((a > 0.02).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    return estimate_blur(lum, region)


def finish_layer(layer: Layer, stats: PhotoStats, rng: np.random.Generator) -> Layer:
    """Gives an occluder the photo's light, colour, shading, sharpness and noise.

    Exposure follows the scene's bright surfaces (a white mask in a dim photo
    is dim), the colour cast is a partial grey-world of the crop, the face's
    own shading (side light, shadow under the brows) is multiplied in, the
    layer is blurred until its edges are as soft as the face's, and noise of
    the face's measured level is added. Each effect has a random strength
    around full, so the model cannot key on one exact rendering.
    """
    rgb, alpha = layer
    gain = np.clip(stats.light / 0.85, 0.3, 1.3) ** rng.uniform(0.6, 1.0)
    cast = np.clip(stats.illuminant, 0.5, 2.0) ** rng.uniform(0.3, 0.7)
    shade = stats.shading ** rng.uniform(0.6, 1.0)
    rgb = rgb * gain * cast[None, None, :] * shade[..., None] * rng.uniform(0.95, 1.05, 3)
    own = _layer_blur((np.clip(rgb, 0, 1).astype(np.float32), alpha))
    extra = np.sqrt(max(stats.blur ** 2 - own ** 2, 0.0)) * rng.uniform(0.8, 1.2)
    if extra > 0.2:
        # Premultiplied, so the occluder's edge blurs into its own colour.
        prem = cv2.GaussianBlur(rgb * alpha[..., None], (0, 0), extra)
        alpha = cv2.GaussianBlur(alpha, (0, 0), extra)
        rgb = prem / np.maximum(alpha, 1e-4)[..., None]
    else:
        # Real objects are never cut out with scissors at pixel precision.
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.3 + 0.3 * rng.random())
    # A Gaussian's far tail changes pixels by less than one level but would still
    # count in the mask (alpha > 0), making it several pixels fatter than the object.
    alpha = np.where(alpha < 1.5 / 255, 0.0, alpha)
    noise = stats.noise * rng.uniform(0.8, 1.2)
    if noise > 1e-4:
        lum_noise = rng.normal(0.0, noise, rgb.shape[:2]).astype(np.float32)[..., None]
        chroma = rng.normal(0.0, noise * 0.3, rgb.shape).astype(np.float32)
        rgb = rgb + lum_noise + chroma
    return np.clip(rgb, 0, 1).astype(np.float32), np.clip(alpha, 0, 1).astype(np.float32)


def soft_shadow(alpha: np.ndarray, stats: PhotoStats, geo: FaceGeometry,
                rng: np.random.Generator) -> np.ndarray:
    """Shadow strength map (0..1) cast by the occluder away from the brighter side."""
    res = geo.res
    away = -np.sign(stats.light_side) if abs(stats.light_side) > 0.03 else rng.choice([-1.0, 1.0])
    offset = (geo.right * away * rng.uniform(0.0, 0.6) + geo.down) * res * rng.uniform(0.01, 0.04)
    M = np.array([[1, 0, offset[0]], [0, 1, offset[1]]], np.float32)
    shifted = cv2.warpAffine(alpha, M, (res, res), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    shadow = cv2.GaussianBlur(shifted, (0, 0), res * rng.uniform(0.01, 0.03)) * rng.uniform(0.2, 0.45)
    # As for the occluder's edge: tails that change no pixel visibly stay out of the mask.
    return np.clip(np.where(shadow < 1.5 / 255, 0.0, shadow), 0, 1).astype(np.float32)


# JPEG round trip: the occluder keeps the compression artefacts of its own
# blocks; outside it, only strong ringing right at its edge (within
# JPEG_EDGE_PX pixels, above JPEG_EDGE_LEVEL levels) joins the mask, the rest
# takes the clean image's round trip. Taking every changed pixel instead would
# turn masks into 8x8 (16x16 for chroma) blocks around every occluder.
JPEG_EDGE_PX = 2
JPEG_EDGE_LEVEL = 8


def jpeg_round_trip(clean: np.ndarray, occluded: np.ndarray, alpha: np.ndarray, quality: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One JPEG encode/decode of both images at the same quality (same blocks).

    Returns:
      (clean, occluded, alpha [H, W, 1], mask [H, W, 1]) after the round trip,
      with `occluded == clean` exactly wherever `mask == 0` and `mask` equal
      to `alpha > 0` (alpha is raised to 1/255 where ringing joined the mask).
    """
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]

    def trip(rgb: np.ndarray) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError("JPEG encoding failed")
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    clean_j, occ_j = trip(clean), trip(occluded)
    inside = alpha[..., 0] > 0
    k = 2 * JPEG_EDGE_PX + 1
    near = cv2.dilate(inside.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    ringing = np.abs(clean_j.astype(np.int16) - occ_j.astype(np.int16)).max(-1) > JPEG_EDGE_LEVEL
    region = inside | (near & ringing)
    alpha = np.where(region[..., None], np.maximum(alpha, 1), 0).astype(np.uint8)
    occ_j = np.where(region[..., None], occ_j, clean_j)
    return clean_j, occ_j, alpha, (region * 255).astype(np.uint8)[..., None]


def composite(clean: np.ndarray, layer: Layer, shadow: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composites a layer (and optional shadow) onto a clean uint8 RGB crop.

    Alphas are quantised to 8 bits first and the blend uses the quantised
    values, so the stored alpha is exactly what was applied.

    Returns:
      (occluded uint8 [H,W,3], alpha uint8 [H,W,1], mask uint8 [H,W,1]) where
      alpha is the combined coverage of occluder and shadow and mask = 255 *
      (alpha > 0); occluded == clean wherever mask == 0.
    """
    rgb, a = layer
    a_q = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    s_q = (np.zeros_like(a_q) if shadow is None
           else np.rint(np.clip(shadow, 0, 1) * 255).astype(np.uint8))
    af = (a_q.astype(np.float32) / 255)[..., None]
    sf = (s_q.astype(np.float32) / 255)[..., None]
    c = clean.astype(np.float32)
    out = c * (1 - sf) * (1 - af) + np.clip(rgb, 0, 1) * 255 * af
    occluded = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    # Coverage of "shadow then occluder": >= max(a, s), so > 0 wherever either is.
    combined = 1 - (1 - a_q.astype(np.float32) / 255) * (1 - s_q.astype(np.float32) / 255)
    alpha_u8 = np.maximum(np.rint(combined * 255), np.maximum(a_q, s_q)).astype(np.uint8)
    changed = alpha_u8 > 0
    # Float blending with a == s == 0 already returns clean exactly; the
    # select makes the invariant hold by construction.
    occluded = np.where(changed[..., None], occluded, clean)
    mask = (changed * 255).astype(np.uint8)
    return occluded, alpha_u8[..., None], mask[..., None]


# What a face mask and glasses must cover to be worn (landmark coverage).
MASK_MOUTH_COVERAGE = 0.9
GLASSES_EYE_COVERAGE = 0.8


def landmark_coverage(region: np.ndarray, points: np.ndarray) -> float:
    """Share of points (crop pixels) that fall on a True pixel of `region`."""
    res = region.shape[0]
    p = np.clip(np.rint(np.asarray(points)), 0, res - 1).astype(int)
    return float(region[p[:, 1], p[:, 0]].mean())


def _filled(region: np.ndarray) -> np.ndarray:
    """`region` with its holes filled (the lens openings inside glasses rims)."""
    flood = np.pad((~region).astype(np.uint8), 1, constant_values=1)
    cv2.floodFill(flood, None, (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


def placed_well(category: str, alpha: np.ndarray, geo: FaceGeometry) -> bool:
    """Whether a face mask covers the mouth, glasses enclose the eyes (others: always).

    The placement follows the landmarks by construction; this catches the
    cases it cannot (an image whose drawing is off its anchors, an extreme
    pose), so no pair teaches that a mask sits on the cheek.
    """
    if category == "face_mask":
        return landmark_coverage(alpha > 0.02, geo.lm[list(L.LIPS_OUTER)]) >= MASK_MOUTH_COVERAGE
    if category in ("sunglasses", "eyeglasses"):
        eyes = geo.lm[list(L.LEFT_EYE_CONTOUR + L.RIGHT_EYE_CONTOUR)]
        return landmark_coverage(_filled(alpha > 0.02), eyes) >= GLASSES_EYE_COVERAGE
    return True


def synthesize(clean: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               library: occ.OccluderLibrary | None = None,
               config: SynthConfig = SynthConfig(), *, geometry: FaceGeometry | None = None,
               stats: PhotoStats | None = None) -> Synthesis:
    """One occluded variant of an aligned face.

    Args:
      clean: uint8 [R, R, 3] aligned face.
      landmarks: [478, 2] landmarks in crop pixels.
      rng: e.g. `variant_rng(seed, source_id, variant)`.
      library: image occluders, or None for procedural ones only.
      config: category weights and effect probabilities.
      geometry, stats: `FaceGeometry.from_landmarks(landmarks, R)` and
        `photo_stats(clean, geometry)`, when the caller computed them once for
        several variants.
    """
    res = clean.shape[0]
    geo = geometry or FaceGeometry.from_landmarks(landmarks, res)
    stats = stats or photo_stats(clean, geo)
    cats, probs = available_categories(library, config.weights)
    category = cats[rng.choice(len(cats), p=probs)]
    min_pixels = config.min_coverage * res * res

    def fits(candidate: Layer) -> bool:
        return (float((candidate[1] > 0.5).sum()) >= min_pixels
                and placed_well(category, candidate[1], geo))

    layer = None
    for _ in range(4):
        candidate, name = _render(category, geo, rng, library, config.image_share)
        if fits(candidate):
            layer = candidate
            break
    if layer is None and category in procedural.PROCEDURAL_CATEGORIES:
        # Images that never sat right (an extreme pose): the procedural kind follows the landmarks.
        candidate, name = procedural.render_procedural(category, geo, rng), f"procedural:{category}"
        layer = candidate if fits(candidate) else None
    if layer is None:
        # Off-crop or misplaced every time: shapes on the face never are.
        category = procedural.PROCEDURAL
        layer, name = procedural.procedural_shapes(geo, rng), "procedural:procedural"
    style = wear = None
    shield = mask_wear.draw_shield(rng, config.mask_wear) if category == "face_mask" else None
    if category == "face_mask" and shield != mask_wear.SHIELD_ONLY \
            and config.mask_style_prob > 0 and rng.random() < config.mask_style_prob:
        drawn = mask_styles.draw_mask_style(rng)
        layer = mask_styles.restyle_mask(layer, geo, rng, drawn)
        style = drawn.kind
    if category == "face_mask":
        # A shield changes every pixel under it (tint, glare, lost contrast), so its
        # whole area joins the mask (alpha > 0) and the target there is the clean
        # face: a mask leaving the see-through part out would keep the tint in the
        # output, and the contract (occluded == clean outside the mask) would break.
        # The stored alpha still says how little of the face it hides.
        worn = mask_wear.wear_mask(layer, geo, stats.shading, rng, config.mask_wear, shield=shield,
                                   loops_drawn=name.startswith("procedural:"))
        layer, wear = worn.layer, "+".join(worn.tags) or None
    layer = finish_layer(layer, stats, rng)
    shadow = soft_shadow(layer[1], stats, geo, rng) if rng.random() < config.shadow_prob else None
    occluded, alpha, mask = composite(clean, layer, shadow)
    quality = None
    if config.jpeg_prob > 0 and rng.random() < config.jpeg_prob:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        clean, occluded, alpha, mask = jpeg_round_trip(clean, occluded, alpha, quality)
    return Synthesis(occluded=occluded, alpha=alpha, mask=mask, category=category, occluder=name,
                     clean=clean, jpeg_quality=quality, style=style, wear=wear)
