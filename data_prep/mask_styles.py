"""Face masks as people wear them: printed patterns and cloth colours over a drawn mask."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from data_prep.geometry import FaceGeometry, Layer, pixel_coords, smooth_noise


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
    xx, yy = pixel_coords(geo.res)
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


