"""Similarity alignment of a face to an FFHQ-style canonical crop, and back.

A face wider than any real one (a stretched picture) is first squeezed back
(`unstretch_matrix`), so its matrix is then an affine, not a similarity.

The template is the FFHQ 5-point layout (eye centres, nose tip, mouth corners)
used by FFHQ-trained face restorers, in units of the crop size. A face that is
already an FFHQ-style aligned crop therefore maps (close) to itself, so aligned
datasets (FFHQ, CelebA-HQ) come through at their own framing.

A matrix `M` (2x3, float64) maps source-image pixels to crop pixels:
`crop = warp_to_crop(image, M, res)`, and `warp_back(crop, M, (h, w))` pastes a
processed crop back into the source frame.

Where the crop reaches past the photo (tight face crops), `padded_crop` fills
the outside as FFHQ's own alignment recipe does (NVlabs/ffhq-dataset,
`recreate_aligned_images`): reflect the photo, blur the reflection more the
further it is from the photo's edge, and fade it towards the photo's median
colour, so the padding reads as out-of-focus background rather than a mirrored
copy of the face. `padding_fraction` measures how much of a crop is such fill.
"""

from __future__ import annotations

import dataclasses

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


# No face is wider than it is tall: cheek to cheek (LEFT_CHEEK-RIGHT_CHEEK) over
# forehead to chin (FOREHEAD-CHIN) in MediaPipe's mesh spans 0.60-1.03 over 900 photos
# of faces/, lfw and utkface (median 0.85; a turned head is narrower, a tilted one up to
# ~1), and exceeds 1.0 in 2 of them. A wider face is a stretched picture, a video scaled
# to another aspect: 1.2-1.4 for portrait photos stretched to 800x600. The similarity
# alignment would hand the model that face too wide, and the model paints masks over its
# eyes and mouth (benchmarks/video_harm.py).
MAX_FACE_ASPECT = 1.0


def face_aspect(landmarks: np.ndarray) -> float:
    """Cheek-to-cheek over forehead-to-chin distance of MediaPipe landmarks."""
    lm = np.asarray(landmarks, np.float64)
    width = np.linalg.norm(lm[lmk.RIGHT_CHEEK] - lm[lmk.LEFT_CHEEK])
    return float(width / max(np.linalg.norm(lm[lmk.CHIN] - lm[lmk.FOREHEAD]), 1e-9))


def unstretch_matrix(landmarks: np.ndarray, max_aspect: float = MAX_FACE_ASPECT) -> np.ndarray:
    """2x3 affine squeezing a face wider than `max_aspect` back to it (else the identity).

    The squeeze runs along the cheek-to-cheek line, about the centre of the four
    points, so a stretched picture's face reaches the model no wider than a real one.
    """
    lm = np.asarray(landmarks, np.float64)
    aspect = face_aspect(lm)
    if aspect <= max_aspect:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    across = lm[lmk.RIGHT_CHEEK] - lm[lmk.LEFT_CHEEK]
    u = across / np.linalg.norm(across)
    A = np.eye(2) + (max_aspect / aspect - 1.0) * np.outer(u, u)
    centre = lm[[lmk.LEFT_CHEEK, lmk.RIGHT_CHEEK, lmk.FOREHEAD, lmk.CHIN]].mean(0)
    return np.concatenate([A, (centre - A @ centre)[:, None]], axis=1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of `outer` applied after `inner`."""
    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return np.concatenate([outer[:, :2] @ inner[:, :2],
                           (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


def alignment_matrix(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """2x3 matrix mapping image pixels to a `resolution`^2 aligned crop.

    A similarity fit of the five points to the template, after `unstretch_matrix`
    (the identity for every real face; a squeeze for a stretched picture's).

    Args:
      landmarks: [478, 2] MediaPipe landmarks in image pixels.
      resolution: crop side in pixels.
    """
    five = np.asarray(lmk.five_points(landmarks), np.float64)
    if face_aspect(landmarks) <= MAX_FACE_ASPECT:
        return umeyama_similarity(five, TEMPLATE_5 * resolution)
    squeeze = unstretch_matrix(landmarks)
    five = five @ squeeze[:, :2].T + squeeze[:, 2]
    return compose(umeyama_similarity(five, TEMPLATE_5 * resolution), squeeze)


def matrix_scale(M: np.ndarray) -> float:
    """Uniform scale factor of a similarity matrix (crop px per image px; an affine's mean)."""
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


def _crop_to_source(M: np.ndarray, resolution: int, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source-image (x, y) of every pixel centre of a crop grown by `margin` on each side."""
    inv = inverse_matrix(M)
    c = np.arange(-margin, resolution + margin, dtype=np.float64)
    xs = inv[0, 0] * c[None, :] + inv[0, 1] * c[:, None] + inv[0, 2]
    ys = inv[1, 0] * c[None, :] + inv[1, 1] * c[:, None] + inv[1, 2]
    return xs, ys


def outside_photo(M: np.ndarray, image_hw: tuple[int, int], resolution: int) -> np.ndarray:
    """bool [res, res]: crop pixels whose centre maps outside the source photo."""
    h, w = image_hw
    xs, ys = _crop_to_source(M, resolution)
    return (xs < -0.5) | (xs > w - 0.5) | (ys < -0.5) | (ys > h - 0.5)


def padding_fraction(M: np.ndarray, image_hw: tuple[int, int], resolution: int) -> float:
    """Share of the crop whose pixels lie outside the source photo (0 = all real)."""
    return float(outside_photo(M, image_hw, resolution).mean())


@dataclasses.dataclass(frozen=True)
class PaddedCrop:
    """An aligned crop and how much of it had to be filled.

    Attributes:
      image: uint8 [res, res, C].
      padding_fraction: share of pixels outside the source photo.
    """
    image: np.ndarray
    padding_fraction: float


def _median_colour(image: np.ndarray) -> np.ndarray:
    """Per-channel median of the photo, from at most ~65k evenly spaced pixels."""
    h, w = image.shape[:2]
    step = max(1, int(np.sqrt(h * w / 65536)))
    sample = image[::step, ::step].reshape(-1, 1 if image.ndim == 2 else image.shape[-1])
    return np.median(sample.astype(np.float32), axis=0)


def padded_crop(image: np.ndarray, M: np.ndarray, resolution: int) -> PaddedCrop:
    """Aligned crop whose part outside the photo is filled as FFHQ does it.

    FFHQ's recipe, expressed in crop pixels (one FFHQ "quad" is the crop):
    pad widths are at least 0.3 crop sides beyond each photo edge; a ramp
    `mask` is 0 at the photo's edge, 1 a pad width outside it and negative
    inside; the reflected image is blended with a Gaussian blur (sigma 0.02
    crop sides) by clip(3 mask + 1) and then towards the photo's median colour
    by clip(mask). So the blur starts a third of a pad width inside the photo
    and hides the seam, and the fill fades to a flat colour with distance.
    Crops that stay more than 4 source pixels inside the photo are plain warps,
    as in FFHQ.

    Args:
      image: uint8 [H, W, C] source photo.
      M: 2x3 similarity, image -> crop pixels.
      resolution: crop side.
    """
    M = np.asarray(M, np.float64)
    h, w = image.shape[:2]
    scale = matrix_scale(M)           # crop px per source px
    qsize = resolution / scale        # the crop's side in source px
    inv = inverse_matrix(M)
    corners = np.array([[-0.5, -0.5], [resolution - 0.5, -0.5], [resolution - 0.5, resolution - 0.5],
                        [-0.5, resolution - 0.5]]) @ inv[:, :2].T + inv[:, 2]
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(corners.min(0)), np.ceil(corners.max(0))
    pad = np.maximum([-lo[0] + border, -lo[1] + border, hi[0] - w + border, hi[1] - h + border], 0)
    fraction = padding_fraction(M, (h, w), resolution)
    if pad.max() <= border - 4:
        return PaddedCrop(warp_to_crop(image, M, resolution), fraction)
    pad = np.maximum(pad, np.rint(qsize * 0.3))  # source px: left, top, right, bottom
    sigma = 0.02 * resolution
    margin = int(np.ceil(3 * sigma))
    # A grown canvas, so that the blur near the crop's edge sees fill, not a border.
    big = resolution + 2 * margin
    M_big = M.copy()
    M_big[:, 2] += margin
    crop = warp_to_crop(image, M_big, big, cv2.BORDER_REFLECT_101).astype(np.float32)
    if crop.ndim == 2:
        crop = crop[..., None]
    xs, ys = _crop_to_source(M, resolution, margin)
    ramp = np.maximum(np.maximum(-xs / pad[0], (xs - (w - 1)) / pad[2]),
                      np.maximum(-ys / pad[1], (ys - (h - 1)) / pad[3])).astype(np.float32)[..., None]
    blurred = cv2.GaussianBlur(crop, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    blurred = blurred.reshape(crop.shape)
    crop = crop + (blurred - crop) * np.clip(ramp * 3.0 + 1.0, 0.0, 1.0)
    crop = crop + (_median_colour(image) - crop) * np.clip(ramp, 0.0, 1.0)
    out = np.clip(np.rint(crop[margin:margin + resolution, margin:margin + resolution]), 0, 255)
    out = out.astype(np.uint8)
    return PaddedCrop(out.reshape((resolution, resolution) + image.shape[2:]), fraction)


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
