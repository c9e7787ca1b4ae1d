"""Blending a restored face crop back into its photo or frame.

The predicted mask (> MASK_THRESHOLD) is grown so the occluder's soft edge is
replaced too, feathered so no seam shows, and faded out towards the crop
border; pixels where the blend weight is 0 keep their values bit for bit, so
everything outside the occluder's neighbourhood is untouched. Photos, videos,
live frames (and the web page, `web/src/blend.js`) blend identically, all with
the harm gate (`MIN_COMPONENT_FRAC`: small predicted-mask regions keep the input).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from deocc_jax.faces import align

# Blending, in units of the crop side: the predicted mask (> MASK_THRESHOLD) is
# grown by DILATE_FRAC so the occluder's soft edge is replaced too, then
# feathered with a Gaussian of sigma FEATHER_FRAC so no seam shows.
MASK_THRESHOLD = 0.5
DILATE_FRAC = 0.03
FEATHER_FRAC = 0.015
# Blend weights below this are set to 0: they could not change a uint8 value.
MIN_ALPHA = 1.0 / 512.0
# The harm gate: predicted-mask regions (> MASK_THRESHOLD, 8-connected) smaller
# than this share of the crop keep the input's pixels. On faces with nothing
# over them the shipped model predicts small spurious blobs that the dilation
# and the restored average face turn into smears; real occluders are larger.
# `python -m benchmarks.harm` (benchmarks/results/harm.json), 197 faces of
# ../shared/data/faces clean and 394 occluded by data_prep's generator: the
# largest gate that skips at most 1 % of the occluded faces. It raises the
# clean faces left (nearly) untouched (<= 1 % of face pixels changed) from
# 65.5 % to 74.1 % and skips 2 of 394 occluded ones (a hand, a procedural
# shape); larger, confident false masks (shadows, beards, open mouths) pass
# it, and only training can remove them.
# `frames.blend_faces` (photos, videos, live) and the web page's pipeline apply it.
MIN_COMPONENT_FRAC = 0.015


def gate_mask(hard: np.ndarray, min_component_frac: float = MIN_COMPONENT_FRAC) -> np.ndarray:
    """`hard` (uint8 0/1 [R, R]) without its 8-connected regions smaller than the given share."""
    if min_component_frac <= 0 or not hard.any():
        return hard
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_component_frac * hard.size
    keep[0] = False  # the background label
    return keep[labels].astype(np.uint8)


def blend_alpha_crop(mask: np.ndarray, resolution: int,
                     min_component_frac: float = 0.0) -> np.ndarray:
    """Feathered blend weights in crop space from a predicted mask.

    Args:
      mask: float [R, R] or [R, R, 1] occlusion probability.
      resolution: R.
      min_component_frac: the harm gate (`gate_mask`): mask regions smaller
        than this share of the crop are not replaced; 0 (no gate) replaces
        every region; MIN_COMPONENT_FRAC is the measured setting.

    Returns:
      float32 [R, R] in [0, 1]: 1 inside the dilated mask, falling smoothly to
      0 outside it and towards the crop border (so no crop edge shows).
    """
    mask = np.asarray(mask, np.float32).reshape(resolution, resolution)
    hard = gate_mask((mask > MASK_THRESHOLD).astype(np.uint8), min_component_frac)
    sigma = max(FEATHER_FRAC * resolution, 0.5)
    grow = max(1, int(round(DILATE_FRAC * resolution + 2 * sigma)))
    hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma)
    # Ramp down over 3 sigma next to the crop border: the crop's footprint
    # edge never becomes a hard seam.
    ramp = np.clip((np.arange(resolution) + 0.5) / (3 * sigma), 0, 1)
    ramp = np.minimum(ramp, ramp[::-1])
    alpha *= np.minimum(ramp[:, None], ramp[None, :])
    alpha[alpha < MIN_ALPHA] = 0.0
    return alpha


def crop_roi(M: np.ndarray, resolution: int, shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the photo region a crop's footprint falls in, clipped to the photo."""
    h, w = shape_hw
    corners = np.array([[0, 0], [resolution, 0], [0, resolution], [resolution, resolution]], np.float64)
    pts = align.transform_landmarks(corners, align.inverse_matrix(M))
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def roi_matrix(M: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Image->crop matrix for pixels of a sub-image whose origin is (x0, y0)."""
    M = np.asarray(M, np.float64)
    return np.concatenate([M[:, :2], (M[:, :2] @ np.array([x0, y0]) + M[:, 2])[:, None]], axis=1)


def paste_face(image: np.ndarray, restored_crop: np.ndarray, alpha_crop: np.ndarray,
               M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blends a restored crop back into the image.

    Only the crop's footprint is warped (not the whole photo), and the mixing
    arithmetic runs only over the box where the warped weights are non-zero
    (`weight_box`), so the cost per face follows the replaced region, not the
    photo. The result is the same, byte for byte, as mixing the whole
    footprint: the warps are the same calls, and where the weight is 0 the
    mix gives back the input exactly (orig + 0 * (restored - orig) == orig).

    Args:
      image: uint8 [H, W, 3] the photo (after earlier faces were pasted).
      restored_crop: uint8 [R, R, 3] model output for this face.
      alpha_crop: float32 [R, R] blend weights in crop space.
      M: 2x3 image -> crop matrix used for the crop.

    Returns:
      (uint8 [H, W, 3] blended image, float32 [H, W] blend weights). Where the
      weight is 0 the image is returned bit-for-bit unchanged.
    """
    h, w = image.shape[:2]
    weights = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = crop_roi(M, alpha_crop.shape[0], (h, w))
    if x1 <= x0 or y1 <= y0:
        return image, weights
    # The warps keep the footprint's origin (x0, y0): a warp from another
    # origin can round a sample differently, and the output must not change.
    Mr = roi_matrix(M, x0, y0)
    alpha = align.warp_back(alpha_crop, Mr, (y1 - y0, x1 - x0)).astype(np.float32)
    alpha[alpha < MIN_ALPHA] = 0.0
    box = weight_box(alpha)
    if box is None:
        return image, weights
    bx0, by0, bx1, by1 = box
    restored = align.warp_back(restored_crop, Mr, (y1 - y0, x1 - x0))[by0:by1, bx0:bx1]
    a = alpha[by0:by1, bx0:bx1, None]
    out = image.copy()
    out_box = out[y0 + by0:y0 + by1, x0 + bx0:x0 + bx1]
    orig = out_box.astype(np.float32)
    mixed = orig + a * (restored.astype(np.float32) - orig)
    out_box[...] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    weights[y0:y1, x0:x1] = alpha
    return out, weights


def weight_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the smallest box holding every non-zero weight, or None if none is."""
    cols = np.flatnonzero(alpha.any(axis=0))
    if not cols.size:
        return None
    rows = np.flatnonzero(alpha.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_image(matrices: Sequence[np.ndarray], masks: Sequence[np.ndarray],
               shape_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] predicted occlusion probability of all faces, in photo pixels.

    Args:
      matrices: per face, the 2x3 image -> crop matrix.
      masks: per face, float [R, R] occlusion probability in crop pixels.
      shape_hw: the photo's (height, width).
    """
    full = np.zeros(shape_hw, np.float32)
    for M, mask in zip(matrices, masks):
        mask = np.asarray(mask, np.float32)
        x0, y0, x1, y1 = crop_roi(M, mask.shape[0], shape_hw)
        if x1 > x0 and y1 > y0:
            part = align.warp_back(mask, roi_matrix(M, x0, y0), (y1 - y0, x1 - x0))
            full[y0:y1, x0:x1] = np.maximum(full[y0:y1, x0:x1], part)
    return np.clip(np.round(full * 255), 0, 255).astype(np.uint8)
