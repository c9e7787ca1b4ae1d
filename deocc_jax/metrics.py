"""Image metrics in JAX: MSE, PSNR, SSIM (whole image and inside a mask), mask IoU.

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
