"""Image metrics in JAX: MSE, PSNR, SSIM (whole image and inside a mask), mask IoU, realism.

Realism (`realism_metrics`, `harm_metrics`, pooled by `realism_summary`)
measures what PSNR/SSIM cannot: fine detail inside the mask (a blur scores
near 0), occluder remnants, and the harm done to a face with nothing over it.

SSIM reproduces `skimage.metrics.structural_similarity(a, b, data_range=R,
gaussian_weights=True, channel_axis=-1)`: an 11x11 Gaussian window with
sigma 1.5 (truncate 3.5), K1 = 0.01, K2 = 0.03, covariances scaled by
N / (N - 1) with N = 121 (skimage's default `use_sample_covariance=True`), and
the mean taken over the map with a 5-pixel border cropped. Because that border
is cropped, skimage's reflect padding never reaches the averaged pixels, so a
'VALID' convolution gives the same numbers.

All functions take [B, H, W, C] arrays and return one value per image, so
callers can aggregate over a dataset by summing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage.gaussian_filter
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


WIN_SIZE = _gaussian_taps().size  # 11
_PAD = (WIN_SIZE - 1) // 2


def _filter_valid(x: jax.Array) -> jax.Array:
    """Separable Gaussian filter of every channel, 'VALID' borders: [B,H,W,C] -> [B,H-10,W-10,C]."""
    b, h, w, c = x.shape
    taps = jnp.asarray(_gaussian_taps())
    y = jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, h, w, 1)
    dn = ("NHWC", "HWIO", "NHWC")
    prec = jax.lax.Precision.HIGHEST
    y = jax.lax.conv_general_dilated(y, taps.reshape(-1, 1, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=prec)
    y = jax.lax.conv_general_dilated(y, taps.reshape(1, -1, 1, 1), (1, 1), "VALID",
                                     dimension_numbers=dn, precision=prec)
    return jnp.transpose(y.reshape(b, c, h - 2 * _PAD, w - 2 * _PAD), (0, 2, 3, 1))


def ssim_map(a: jax.Array, b: jax.Array, data_range: float) -> jax.Array:
    """SSIM map [B, H-10, W-10, C] (the border skimage crops is already gone)."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    if a.shape[1] < WIN_SIZE or a.shape[2] < WIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {WIN_SIZE}x{WIN_SIZE}, got {a.shape[1:3]}")
    n = WIN_SIZE * WIN_SIZE
    cov_norm = n / (n - 1.0)
    stacked = _filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1))
    ux, uy, uxx, uyy, uxy = jnp.split(stacked, 5, axis=-1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Mean SSIM per image, [B]; equals skimage's with gaussian_weights=True, channel_axis=-1."""
    return jnp.mean(ssim_map(a, b, data_range), axis=(1, 2, 3))


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean squared error per image, [B]."""
    d = a.astype(jnp.float32) - b.astype(jnp.float32)
    return jnp.mean(d * d, axis=(1, 2, 3))


def psnr_from_mse(m: jax.Array, data_range: float = 1.0) -> jax.Array:
    return 10.0 * jnp.log10(data_range ** 2 / m)


def psnr(a: jax.Array, b: jax.Array, data_range: float = 1.0) -> jax.Array:
    """PSNR in dB per image, [B] (skimage.metrics.peak_signal_noise_ratio)."""
    return psnr_from_mse(mse(a, b), data_range)


def _mask_weights(mask: jax.Array) -> jax.Array:
    return (mask.astype(jnp.float32) > 0.5).astype(jnp.float32)


def masked_mse(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    """MSE per image over pixels where mask > 0.5 (all channels); 0 for an empty mask."""
    w = _mask_weights(mask)
    d = a.astype(jnp.float32) - b.astype(jnp.float32)
    num = jnp.sum(d * d * w, axis=(1, 2, 3))
    den = jnp.sum(w, axis=(1, 2, 3)) * a.shape[-1]
    return num / jnp.maximum(den, 1.0)


def masked_psnr(a: jax.Array, b: jax.Array, mask: jax.Array, data_range: float = 1.0) -> jax.Array:
    """PSNR per image inside the mask (callers weight images by `has_mask`)."""
    return psnr_from_mse(masked_mse(a, b, mask), data_range)


def masked_ssim(a: jax.Array, b: jax.Array, mask: jax.Array, data_range: float = 1.0) -> jax.Array:
    """Mean of the SSIM map over masked pixels (map and mask cropped alike); 0 when empty."""
    m = ssim_map(a, b, data_range)
    w = _mask_weights(mask)[:, _PAD:mask.shape[1] - _PAD, _PAD:mask.shape[2] - _PAD, :]
    num = jnp.sum(m * w, axis=(1, 2, 3))
    den = jnp.sum(w, axis=(1, 2, 3)) * m.shape[-1]
    return num / jnp.maximum(den, 1.0)


def has_mask(mask: jax.Array) -> jax.Array:
    """1.0 for images with at least one masked pixel, else 0.0, [B]."""
    return (jnp.sum(_mask_weights(mask), axis=(1, 2, 3)) > 0).astype(jnp.float32)


def mask_iou(pred: jax.Array, target: jax.Array, threshold: float = 0.5) -> jax.Array:
    """IoU per image of `pred > threshold` and `target > 0.5`; 1 when both are empty."""
    p = pred > threshold
    t = target > 0.5
    inter = jnp.sum(p & t, axis=(1, 2, 3)).astype(jnp.float32)
    union = jnp.sum(p | t, axis=(1, 2, 3)).astype(jnp.float32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


# ----------------------------------------------------------------------------- realism
#
# PSNR and SSIM reward the average face: a blur inside the mask scores well.
# These measures cannot be won by blurring. Each returns per-image sums (or a
# per-image share) that `realism_summary` pools over a set.

_LUMA = (0.299, 0.587, 0.114)
# The mask is eroded by this many pixels (at the crop's resolution) before
# detail is measured, so the occluder's seam and remnants at its edge do not
# count as detail.
DETAIL_ERODE_PX = 4
# A pixel counts as changed when its grey level moves by more than this (of 255).
HARM_LEVEL = 30.0 / 255.0
# A face counts as unharmed when at most this share of its pixels changed.
HARM_OK_SHARE = 0.01
# Remnants are judged only where the occluder differed visibly from the face
# (RGB distance above this, of 255): elsewhere "closer to the occluder" means nothing.
REMNANT_MIN_CONTRAST = 30.0 / 255.0
# An occluder whose mean grey level (inside the eroded mask) is below this is "dark".
DARK_OCCLUDER_LUMA = 64.0 / 255.0
# The face in an aligned crop, as an ellipse (centre x, centre y, half-width,
# half-height) in units of the crop side: the bounding ellipse of MediaPipe's
# mean face oval over 100 photos of ../shared/data/faces aligned as `infer`
# aligns them (IoU with each face's own oval: mean 0.81, 5th percentile 0.60).
FACE_ELLIPSE = (0.5, 0.586, 0.266, 0.318)


def grey(x: jax.Array) -> jax.Array:
    """ITU-R 601 luma of RGB images, [B, H, W, 3] -> [B, H, W, 1] (same scale)."""
    w = jnp.asarray(_LUMA, jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * w, axis=-1, keepdims=True)


def _disc(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.float32)


def erode(mask: jax.Array, radius: int) -> jax.Array:
    """Binary erosion of `mask > 0.5` by a disc of `radius` px, [B, H, W, 1] -> float 0/1.

    Pixels beyond the image count as unmasked, so nothing within `radius` of
    the border survives (and a Laplacian there never reads padding).
    """
    m = _mask_weights(mask)
    if radius <= 0:
        return m
    k = _disc(radius)
    hits = jax.lax.conv_general_dilated(
        m, jnp.asarray(k)[:, :, None, None], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return (hits >= float(k.sum()) - 0.5).astype(jnp.float32)


def abs_laplacian(g: jax.Array) -> jax.Array:
    """|4-neighbour Laplacian| of grey images [B, H, W, 1] (cv2.Laplacian, ksize=1), edge-padded."""
    p = jnp.pad(g.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    lap = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
           - 4.0 * p[:, 1:-1, 1:-1])
    return jnp.abs(lap)


def detail_sums(pred: jax.Array, target: jax.Array, mask: jax.Array,
                erode_px: int = DETAIL_ERODE_PX) -> tuple[jax.Array, jax.Array]:
    """Sums of |Laplacian| of the grey output and of the clean target inside the eroded mask.

    Their ratio is the detail ratio: 1 = as much fine structure as the real
    face, a blur is near 0, noise exceeds 1 (so it is read beside PSNR).

    Returns:
      ([B] output sums, [B] target sums), both 0 for a mask the erosion empties.
    """
    inner = erode(mask, erode_px)
    num = jnp.sum(abs_laplacian(grey(pred)) * inner, axis=(1, 2, 3))
    den = jnp.sum(abs_laplacian(grey(target)) * inner, axis=(1, 2, 3))
    return num, den


def remnant_counts(pred: jax.Array, occluded: jax.Array, clean: jax.Array, mask: jax.Array,
                   min_contrast: float = REMNANT_MIN_CONTRAST) -> tuple[jax.Array, jax.Array]:
    """Mask pixels whose restored colour is still closer to the occluder than to the clean face.

    Only mask pixels where the occluder differs from the face by more than
    `min_contrast` (RGB distance, same scale as the images) are judged.

    Returns:
      ([B] remnant pixel counts, [B] judged pixel counts).
    """
    p, o, c = (x.astype(jnp.float32) for x in (pred, occluded, clean))

    def dist(a, b):
        return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1, keepdims=True))

    judged = _mask_weights(mask) * (dist(o, c) > min_contrast)
    remnant = judged * (dist(p, o) < dist(p, c))
    return jnp.sum(remnant, axis=(1, 2, 3)), jnp.sum(judged, axis=(1, 2, 3))


def occluder_luma(occluded: jax.Array, mask: jax.Array,
                  erode_px: int = DETAIL_ERODE_PX) -> jax.Array:
    """Mean grey level of the occluder, [B]: inside the eroded mask (the whole mask when
    erosion empties it), so soft edges and shadows barely count; NaN for an empty mask."""
    g = grey(occluded)
    inner = erode(mask, erode_px)
    whole = _mask_weights(mask)
    use = jnp.where(jnp.sum(inner, axis=(1, 2, 3), keepdims=True) > 0, inner, whole)
    n = jnp.sum(use, axis=(1, 2, 3))
    return jnp.where(n > 0, jnp.sum(g * use, axis=(1, 2, 3)) / jnp.maximum(n, 1.0), jnp.nan)


def changed_share(pred: jax.Array, reference: jax.Array, region: jax.Array,
                  level: float = HARM_LEVEL) -> jax.Array:
    """Share of `region` pixels whose grey level moved by more than `level`, [B].

    Run on a clean face (nothing to remove), this is the harm a method does.
    """
    w = _mask_weights(region)
    moved = (jnp.abs(grey(pred) - grey(reference)) > level).astype(jnp.float32)
    return jnp.sum(moved * w, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(w, axis=(1, 2, 3)), 1.0)


def mask_area(pred_mask: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Share of the crop where the predicted mask exceeds `threshold`, [B]."""
    return jnp.mean((pred_mask > threshold).astype(jnp.float32), axis=(1, 2, 3))


def face_region(resolution: int) -> np.ndarray:
    """float32 [1, R, R, 1] 0/1: where the face lies in an aligned crop (a template ellipse).

    Eval batches carry no landmarks; crops are aligned to one template, so a
    fixed ellipse around it stands for the face oval (see FACE_ELLIPSE).
    """
    cx, cy, ax, ay = FACE_ELLIPSE
    y, x = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution
    inside = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
    return inside.astype(np.float32)[None, :, :, None]


@functools.partial(jax.jit, static_argnames=("data_range",))
def realism_metrics(pred: jax.Array, target: jax.Array, occluded: jax.Array, mask: jax.Array,
                    data_range: float = 1.0) -> dict[str, jax.Array]:
    """Per-image inputs of the realism summary for a restoration of an occluded face.

    Args:
      pred, target, occluded: [B, H, W, 3] restored, clean and occluded images in [0, data_range].
      mask: [B, H, W, 1] true occlusion mask in [0, 1].

    Returns:
      [B] arrays "detail_num", "detail_den" (`detail_sums`), "remnant_num",
      "remnant_den" (`remnant_counts`) and "occluder_luma" (in [0, 1]).
    """
    scale = 1.0 / data_range
    pred, target, occluded = pred * scale, target * scale, occluded * scale
    num, den = detail_sums(pred, target, mask)
    rn, rd = remnant_counts(pred, occluded, target, mask)
    return {"detail_num": num, "detail_den": den, "remnant_num": rn, "remnant_den": rd,
            "occluder_luma": occluder_luma(occluded, mask)}


@functools.partial(jax.jit, static_argnames=("data_range",))
def harm_metrics(pred: jax.Array, clean: jax.Array, pred_mask: jax.Array | None,
                 data_range: float = 1.0) -> dict[str, jax.Array]:
    """Per-image harm of a method run on the clean faces themselves.

    Returns:
      [B] "harm_changed" (`changed_share` over the template face region) and,
      with a predicted mask, "harm_mask_area" (`mask_area`).
    """
    region = jnp.broadcast_to(jnp.asarray(face_region(clean.shape[1])), clean.shape[:3] + (1,))
    out = {"harm_changed": changed_share(pred / data_range, clean / data_range, region)}
    if pred_mask is not None:
        out["harm_mask_area"] = mask_area(pred_mask)
    return out


REALISM_INPUTS = ("detail_num", "detail_den", "remnant_num", "remnant_den", "occluder_luma")
HARM_KEYS = ("harm_changed", "harm_mask_area")


def realism_summary(per_image: dict, select: np.ndarray | None = None) -> dict[str, float]:
    """Pools the per-image realism and harm values of some images.

    detail_ratio and remnants are ratios of sums over the selected images (so
    a face counts by its number of mask pixels), remnants_dark the same over
    images whose occluder is dark (`DARK_OCCLUDER_LUMA`). harm_changed and
    harm_mask_area are means over images; harm_ok_share is the share of faces
    with at most HARM_OK_SHARE of their pixels changed. A value is left out
    when nothing it needs was selected.

    Args:
      per_image: arrays [N] from `realism_metrics` and/or `harm_metrics`.
      select: optional bool [N].
    """
    n = len(next(iter(per_image.values())))
    sel = np.ones(n, bool) if select is None else np.asarray(select, bool)
    v = {k: np.asarray(x, np.float64)[sel] for k, x in per_image.items()}
    out: dict[str, float] = {}
    if "detail_num" in v and v["detail_den"].sum() > 0:
        out["detail_ratio"] = float(v["detail_num"].sum() / v["detail_den"].sum())
    if "remnant_num" in v:
        if v["remnant_den"].sum() > 0:
            out["remnants"] = float(v["remnant_num"].sum() / v["remnant_den"].sum())
        dark = np.nan_to_num(v["occluder_luma"], nan=np.inf) < DARK_OCCLUDER_LUMA
        out["count_dark"] = int(dark.sum())
        if v["remnant_den"][dark].sum() > 0:
            out["remnants_dark"] = float(v["remnant_num"][dark].sum() / v["remnant_den"][dark].sum())
    if "harm_changed" in v and len(v["harm_changed"]):
        out["harm_changed"] = float(v["harm_changed"].mean())
        out["harm_ok_share"] = float(np.mean(v["harm_changed"] <= HARM_OK_SHARE))
    if "harm_mask_area" in v and len(v["harm_mask_area"]):
        out["harm_mask_area"] = float(v["harm_mask_area"].mean())
    return out


@functools.partial(jax.jit, static_argnames=("data_range",))
def image_metrics(pred: jax.Array, target: jax.Array, mask: jax.Array,
                  pred_mask: jax.Array | None = None, data_range: float = 1.0) -> dict[str, jax.Array]:
    """All per-image evaluation metrics at once.

    Args:
      pred, target: [B, H, W, C] images in [0, data_range].
      mask: [B, H, W, 1] true occlusion mask in [0, 1].
      pred_mask: [B, H, W, 1] predicted mask probability, or None.
      data_range: value range of the images.

    Returns:
      Dict of [B] arrays: mse, psnr, ssim (whole image), masked_mse,
      masked_psnr, masked_ssim (inside the true mask; weight them with
      has_mask), has_mask, and mask_iou when pred_mask is given.
    """
    out = {
        "mse": mse(pred, target),
        "psnr": psnr(pred, target, data_range),
        "ssim": ssim(pred, target, data_range),
        "masked_mse": masked_mse(pred, target, mask),
        "masked_psnr": masked_psnr(pred, target, mask, data_range),
        "masked_ssim": masked_ssim(pred, target, mask, data_range),
        "has_mask": has_mask(mask),
    }
    if pred_mask is not None:
        out["mask_iou"] = mask_iou(pred_mask, mask)
    return out


MASKED_KEYS = ("masked_mse", "masked_psnr", "masked_ssim")


class MetricAccumulator:
    """Host-side running means of `image_metrics` outputs over a dataset.

    Whole-image metrics are averaged over valid images; masked metrics only
    over valid images that have a non-empty mask. `valid` marks padding rows
    that eval batches add to reach a fixed batch size.
    """

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, float] = {}

    def add(self, per_image: dict, valid: np.ndarray | None = None) -> None:
        per_image = {k: np.asarray(v, np.float64) for k, v in per_image.items()}
        n = next(iter(per_image.values())).shape[0]
        valid = np.ones(n) if valid is None else np.asarray(valid, np.float64)
        for k, v in per_image.items():
            if k == "has_mask":
                continue
            w = valid * per_image["has_mask"] if k in MASKED_KEYS else valid
            self._sums[k] = self._sums.get(k, 0.0) + float(np.sum(np.where(w > 0, v, 0.0) * w))
            self._counts[k] = self._counts.get(k, 0.0) + float(np.sum(w))

    def result(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k] > 0}
