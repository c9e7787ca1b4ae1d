"""Occlusion synthesis: one occluder per variant, composited onto an aligned face.

The contract every pair keeps (tests check it on real faces):
  * `mask` (0/255) is exactly `alpha > 0`, and `alpha` covers the occluder and
    its shadow, so `occluded == clean` wherever `mask == 0`, bit for bit;
  * every random choice comes from the generator passed in, which
    `variant_rng(seed, source_id, variant)` derives with sha256 (never Python's
    salted `hash`), so a pair depends only on its inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np

from data_prep import occluders as occ

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
        out[name] = float(value)
        if out[name] < 0:
            raise ValueError(f"negative weight in {part!r}")
    return out


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
    """
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    image_share: float = 0.7
    shadow_prob: float = 0.4
    min_coverage: float = 0.01


@dataclasses.dataclass(frozen=True)
class Synthesis:
    occluded: np.ndarray  # uint8 [H, W, 3]
    alpha: np.ndarray     # uint8 [H, W, 1]
    mask: np.ndarray      # uint8 [H, W, 1], 0 or 255
    category: str
    occluder: str         # image relpath or "procedural:<category>"


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
        if weights.get(c, 0) > 0 and (has_image or c in occ.PROCEDURAL_CATEGORIES):
            cats.append(c)
            w.append(weights[c])
    if not cats:
        raise ValueError(f"no occluder category is available with weights {weights} "
                         f"(procedural ones: {list(occ.PROCEDURAL_CATEGORIES)})")
    w = np.asarray(w, np.float64)
    return cats, w / w.sum()


def _render(category: str, geo: occ.FaceGeometry, rng: np.random.Generator,
            library: occ.OccluderLibrary | None, image_share: float) -> tuple[occ.Layer, str]:
    has_image = library is not None and bool(library.by_category.get(category))
    use_image = has_image and (category not in occ.PROCEDURAL_CATEGORIES or rng.random() < image_share)
    if use_image:
        return occ.render_image(library, category, geo, rng)
    return occ.render_procedural(category, geo, rng), f"procedural:{category}"


def _face_stats(clean: np.ndarray, geo: occ.FaceGeometry) -> dict[str, np.ndarray | float]:
    """Colour and lighting of the face, sampled at its landmarks (cheap, robust)."""
    f = clean.astype(np.float32) / 255.0
    pts = np.clip(np.rint(geo.lm), 0, geo.res - 1).astype(int)
    samples = f[pts[:, 1], pts[:, 0]]
    lum = samples @ np.array([0.299, 0.587, 0.114], np.float32)
    side = geo.lm @ geo.right - float(np.dot(geo.eye_mid, geo.right))
    left_l = float(lum[side < 0].mean()) if (side < 0).any() else float(lum.mean())
    right_l = float(lum[side >= 0].mean()) if (side >= 0).any() else float(lum.mean())
    return {"lum": float(lum.mean()), "illuminant": f.reshape(-1, 3).mean(0),
            "left_right": (right_l - left_l) / max(float(lum.mean()), 1e-3)}


def finish_layer(layer: occ.Layer, clean: np.ndarray, geo: occ.FaceGeometry,
                 rng: np.random.Generator) -> occ.Layer:
    """Matches brightness, colour cast, side lighting, sharpness and noise to the
    face, and softens the alpha edge."""
    rgb, alpha = layer
    res = geo.res
    st = _face_stats(clean, geo)
    # Objects in a dim photo are dim too: partial gain towards the face's exposure.
    gain = np.clip((st["lum"] / 0.5) ** rng.uniform(0.3, 0.8), 0.35, 1.4)
    # Partial grey-world colour cast of the whole photo.
    ill = st["illuminant"] / max(float(st["illuminant"].mean()), 1e-3)
    cast = np.clip(ill, 0.5, 2.0) ** rng.uniform(0.2, 0.5)
    xx = (np.arange(res, dtype=np.float32) - res / 2) / res
    ramp = 1.0 + np.clip(st["left_right"], -0.6, 0.6) * rng.uniform(0.5, 1.0) * xx
    rgb = rgb * gain * cast[None, None, :] * ramp[None, :, None] * rng.uniform(0.92, 1.08, 3)
    sigma = rng.uniform(0.0, 0.7) * res / 256
    if sigma > 0.2:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    rgb = rgb + rng.normal(0, rng.uniform(0.0, 0.02), rgb.shape).astype(np.float32)
    # Soft edge: real objects are not cut out with scissors at pixel precision.
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.3, rng.uniform(0.3, 1.0) * res / 256))
    return np.clip(rgb, 0, 1).astype(np.float32), np.clip(alpha, 0, 1).astype(np.float32)


def soft_shadow(alpha: np.ndarray, clean: np.ndarray, geo: occ.FaceGeometry,
                rng: np.random.Generator) -> np.ndarray:
    """Shadow strength map (0..1) cast by the occluder away from the brighter side."""
    res = geo.res
    st = _face_stats(clean, geo)
    away = -np.sign(st["left_right"]) if abs(st["left_right"]) > 0.03 else rng.choice([-1.0, 1.0])
    offset = (geo.right * away * rng.uniform(0.0, 0.6) + geo.down) * res * rng.uniform(0.01, 0.04)
    M = np.array([[1, 0, offset[0]], [0, 1, offset[1]]], np.float32)
    shifted = cv2.warpAffine(alpha, M, (res, res), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    shadow = cv2.GaussianBlur(shifted, (0, 0), res * rng.uniform(0.01, 0.03))
    return np.clip(shadow * rng.uniform(0.2, 0.45), 0, 1).astype(np.float32)


def composite(clean: np.ndarray, layer: occ.Layer, shadow: np.ndarray | None = None
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


def synthesize(clean: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               library: occ.OccluderLibrary | None = None,
               config: SynthConfig = SynthConfig()) -> Synthesis:
    """One occluded variant of an aligned face.

    Args:
      clean: uint8 [R, R, 3] aligned face.
      landmarks: [478, 2] landmarks in crop pixels.
      rng: e.g. `variant_rng(seed, source_id, variant)`.
      library: image occluders, or None for procedural ones only.
      config: category weights and effect probabilities.
    """
    res = clean.shape[0]
    geo = occ.FaceGeometry.from_landmarks(landmarks, res)
    cats, probs = available_categories(library, config.weights)
    category = cats[rng.choice(len(cats), p=probs)]
    min_pixels = config.min_coverage * res * res
    for _ in range(4):
        layer, name = _render(category, geo, rng, library, config.image_share)
        if float((layer[1] > 0.5).sum()) >= min_pixels:
            break
    else:
        # Off-crop or degenerate draws four times in a row: shapes on the face never are.
        category = occ.PROCEDURAL
        layer, name = occ.procedural_shapes(geo, rng), "procedural:procedural"
    layer = finish_layer(layer, clean, geo, rng)
    shadow = soft_shadow(layer[1], clean, geo, rng) if rng.random() < config.shadow_prob else None
    occluded, alpha, mask = composite(clean, layer, shadow)
    return Synthesis(occluded=occluded, alpha=alpha, mask=mask, category=category, occluder=name)
