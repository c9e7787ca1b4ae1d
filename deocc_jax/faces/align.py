"""Similarity alignment of a face to an FFHQ-style canonical crop, and back.

The template is the FFHQ 5-point layout (eye centres, nose tip, mouth corners)
used by FFHQ-trained face restorers, in units of the crop size. A face that is
already an FFHQ-style aligned crop therefore maps (close) to itself, so aligned
datasets (FFHQ, CelebA-HQ) come through at their own framing.

A matrix `M` (2x3, float64) maps source-image pixels to crop pixels:
`crop = warp_to_crop(image, M, res)`, and `warp_back(crop, M, (h, w))` pastes a
processed crop back into the source frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from deocc_jax.faces import landmarks as lmk

# FFHQ 5-point template at 512 px (left eye, right eye, nose tip, left and
# right mouth corners), divided by 512.
TEMPLATE_5 = np.array([
    [192.98138, 239.94708],
    [318.90277, 240.19360],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
]) / 512.0


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) src -> dst.

    Closed form (Umeyama 1991): deterministic, unlike RANSAC/LMedS estimators.

    Returns:
      2x3 float64 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = np.trace(np.diag(sig) @ sign) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def alignment_matrix(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """2x3 similarity mapping image pixels to a `resolution`^2 aligned crop.

    Args:
      landmarks: [478, 2] MediaPipe landmarks in image pixels.
      resolution: crop side in pixels.
    """
    return umeyama_similarity(lmk.five_points(landmarks), TEMPLATE_5 * resolution)


def matrix_scale(M: np.ndarray) -> float:
    """Uniform scale factor of a similarity matrix (crop px per image px)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(M)[:, :2]))))


def inverse_matrix(M: np.ndarray) -> np.ndarray:
    """2x3 matrix mapping crop pixels back to image pixels."""
    return cv2.invertAffineTransform(np.asarray(M, np.float64))


def transform_landmarks(landmarks: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Applies a 2x3 matrix to [N, 2] points; float32 result."""
    pts = np.asarray(landmarks, np.float64)
    return (pts @ np.asarray(M)[:, :2].T + np.asarray(M)[:, 2]).astype(np.float32)


def warp_to_crop(image: np.ndarray, M: np.ndarray, resolution: int,
                 border_mode: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """Aligned `resolution`^2 crop of `image`.

    Large downscales first shrink the image with area averaging, so small crops
    of big photos are not aliased (warpAffine alone samples, it does not average).
    """
    M = np.asarray(M, np.float64)
    scale = matrix_scale(M)
    if scale < 0.5:
        f = 2.0 * scale
        h, w = image.shape[:2]
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        fx, fy = size[0] / w, size[1] / h
        # crop = M @ image_pt = M @ diag(1/fx, 1/fy) @ small_pt
        M = M @ np.array([[1 / fx, 0, 0], [0, 1 / fy, 0], [0, 0, 1]])
        image = small
    return cv2.warpAffine(image, M, (resolution, resolution), flags=cv2.INTER_LINEAR,
                          borderMode=border_mode)


def warp_back(crop: np.ndarray, M: np.ndarray, out_hw: tuple[int, int],
              interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Warps a crop (or a crop-sized mask) back into the source image frame.

    Pixels outside the crop's footprint are 0; warp a ones-mask the same way to
    know where to paste.
    """
    h, w = out_hw
    return cv2.warpAffine(crop, np.asarray(M, np.float64), (w, h),
                          flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
