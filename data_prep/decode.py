"""Robust image decoding: any photo a user points us at becomes RGB uint8 or a
`DecodeError` with a reason from `REJECT_REASONS`.

Handles EXIF orientation, grayscale, palette, RGBA/LA (composited on white),
CMYK, 16-bit and float images, and refuses decompression bombs before the
pixels are decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Rejection reasons, in the order dataset_info.json lists them.
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not_an_image"
TOO_LARGE = "too_large"
NO_FACE = "no_face"
FACE_TOO_SMALL = "face_too_small"
REJECT_REASONS = (UNREADABLE, NOT_AN_IMAGE, TOO_LARGE, NO_FACE, FACE_TOO_SMALL)

DEFAULT_MAX_PIXELS = 50_000_000


class DecodeError(ValueError):
    """An input that cannot become a training image; `reason` is in REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array of any integer/float dtype -> HxWx3 uint8.

    16-bit and wider integers are scaled by their dtype's range; floats are
    taken as 0..1 unless their maximum exceeds 1 (then 0..255). Alpha is
    composited over white, which is how viewers show transparent photos.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise DecodeError(NOT_AN_IMAGE, f"unsupported array shape {a.shape}")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.integer):
        f = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if np.nanmax(f) > 1.0:
            f = f / 255.0
        f = np.nan_to_num(f)
    elif a.dtype == bool:
        f = a.astype(np.float32)
    else:
        raise DecodeError(NOT_AN_IMAGE, f"unsupported pixel type {a.dtype}")
    c = f.shape[-1]
    if c in (2, 4):
        color, alpha = f[..., :c - 1], f[..., c - 1:]
        f = color * alpha + (1.0 - alpha)
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    if a.dtype == np.uint8 and c in (1, 3):
        # Exact for 8-bit input: no float round trip.
        return np.ascontiguousarray(np.repeat(a, 3, -1) if c == 1 else a)
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "L", "RGBA", "LA"):
        return np.asarray(im)
    if mode == "P" or mode == "PA":
        return np.asarray(im.convert("RGBA"))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "1"):
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I;16"):
        # Big/little-endian 16-bit gray; numpy handles the byte order.
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        # 16-bit PNGs open as 32-bit "I" with values in 0..65535.
        return arr.astype(np.uint16) if arr.min() >= 0 and arr.max() <= 65535 else arr
    if mode == "F":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes image bytes to RGB uint8, applying EXIF orientation.

    Args:
      data: encoded file contents (JPEG, PNG, WebP, TIFF, BMP, ... anything
        Pillow reads).
      max_pixels: refuse images with more pixels than this before decoding
        them (decompression bombs).

    Raises:
      DecodeError: reason `unreadable` (empty, truncated or corrupt),
        `not_an_image`, or `too_large`.
    """
    if not data:
        raise DecodeError(UNREADABLE, "empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise DecodeError(NOT_AN_IMAGE, "not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(TOO_LARGE, str(e)) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise DecodeError(UNREADABLE, f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(TOO_LARGE, f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    if w < 1 or h < 1:
        raise DecodeError(UNREADABLE, f"empty image {w}x{h}")
    try:
        with warnings.catch_warnings():
            # Our own limit applies; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _pil_to_array(im)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated JPEG, bad CRC, ...
        raise DecodeError(UNREADABLE, f"{type(e).__name__}: {e}") from None
    return to_rgb_uint8(arr)


def read_and_decode(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads a local or remote (gs://, ...) file via Beam's FileSystems and decodes it."""
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 - permissions, vanished file, ...
        raise DecodeError(UNREADABLE, f"cannot read file: {type(e).__name__}: {e}") from None
    return decode_image(data, max_pixels)
