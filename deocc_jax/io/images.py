"""The one image decoder of deocc: data prep and inference read photos through it.

Any file a user points deocc at becomes a uint8 array or a `DecodeError` whose
`reason` is one of `REASONS`. Handled here, so that prep and infer agree on
every photo:
  * EXIF orientation (a phone photo shot in portrait is upright);
  * every Pillow mode: grayscale, palette, CMYK, 16-bit, float, with or
    without alpha (composited over white, or kept with `keep_alpha=True`);
  * a pixel limit checked from the header, before any pixel is decoded
    (decompression bombs, 12000x9000 photos);
  * truncated and corrupt files are refused (Pillow's default), never
    returned with grey rows where the data ran out.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from deocc_jax import errors

# Why a file could not become an image, in the order dataset_info.json lists them.
UNREADABLE = "unreadable"        # empty, truncated, corrupt, or the file cannot be read
NOT_AN_IMAGE = "not_an_image"    # not a format Pillow recognises
TOO_LARGE = "too_large"          # more pixels than the limit
REASONS = (UNREADABLE, NOT_AN_IMAGE, TOO_LARGE)

DEFAULT_MAX_PIXELS = 50_000_000

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class DecodeError(errors.InvalidInputError):
    """A file that cannot become an image.

    Attributes:
      reason: one of `REASONS`.
      detail: what exactly went wrong.
      path: the file, when it is known.
    """

    def __init__(self, reason: str, detail: str, path: str | None = None):
        super().__init__(f"{path}: {reason}: {detail}" if path else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.path = path


def to_uint8(array: np.ndarray, keep_alpha: bool = False) -> np.ndarray:
    """HxW, HxWx1..4 array of any integer/float dtype -> HxWx3 (or HxWx4) uint8.

    16-bit and wider integers are scaled by their dtype's range; floats are
    taken as 0..1 unless their maximum exceeds 1 (then 0..255). Without
    `keep_alpha`, alpha is composited over white, which is how viewers show
    transparent photos; with it, a 2- or 4-channel input returns RGBA.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise DecodeError(NOT_AN_IMAGE, f"unsupported array shape {a.shape}")
    c = a.shape[-1]
    if a.dtype == np.uint8 and (c in (1, 3) or keep_alpha):
        # Exact for 8-bit input: no float round trip.
        if c == 1:
            return np.ascontiguousarray(np.repeat(a, 3, -1))
        if c == 2:
            return np.ascontiguousarray(np.concatenate([np.repeat(a[..., :1], 3, -1), a[..., 1:]], -1))
        return np.ascontiguousarray(a)
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == bool:
        f = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        f = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32))
        if f.size and f.max() > 1.0:
            f = f / 255.0
    else:
        raise DecodeError(NOT_AN_IMAGE, f"unsupported pixel type {a.dtype}")
    alpha = None
    if c in (2, 4):
        f, alpha = f[..., :c - 1], f[..., c - 1:]
        if not keep_alpha:
            f = f * alpha + (1.0 - alpha)
            alpha = None
    if f.shape[-1] == 1:
        f = np.repeat(f, 3, axis=-1)
    if alpha is not None:
        f = np.concatenate([f, alpha], -1)
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


def _pil_to_array(im: Image.Image, keep_alpha: bool) -> np.ndarray:
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        mode = "PA"
    if mode in ("RGB", "L", "RGBA", "LA"):
        return np.asarray(im)
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA" if mode == "PA" else "RGB"))
    if mode in ("RGBa", "La"):  # premultiplied: let Pillow un-premultiply
        return np.asarray(im.convert("RGBA" if keep_alpha else "RGB"))
    if mode.startswith("I;16"):
        # Big/little-endian 16-bit gray; numpy handles the byte order.
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        # 16-bit PNGs open as 32-bit "I" with values in 0..65535.
        return arr.astype(np.uint16) if arr.min() >= 0 and arr.max() <= 65535 else arr
    if mode == "F":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, 1, ...


_STRICT_LOAD = threading.Lock()


def _load_strict(im: Image.Image) -> None:
    """`im.load()` that raises on truncated data even where a library (TFDS does)
    has set Pillow's process-wide LOAD_TRUNCATED_IMAGES, which pads with grey."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _STRICT_LOAD:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, keep_alpha: bool = False,
                 path: str | None = None) -> np.ndarray:
    """Decodes image bytes to uint8 RGB (or RGBA), applying EXIF orientation.

    Args:
      data: encoded file contents (JPEG, PNG, WebP, TIFF, BMP, GIF... anything
        Pillow reads; the first frame of animations).
      max_pixels: refuse images with more pixels than this, judged from the
        header before decoding.
      keep_alpha: return HxWx4 RGBA for images that have an alpha channel
        (others stay HxWx3); by default alpha is composited over white.
      path: the file name, for error messages.

    Returns:
      uint8 [H, W, 3], or [H, W, 4] when `keep_alpha` and the image has alpha.

    Raises:
      DecodeError: reason `unreadable` (empty, truncated or corrupt),
        `not_an_image`, or `too_large`.
    """
    if not data:
        raise DecodeError(UNREADABLE, "empty file (0 bytes)", path)
    try:
        with warnings.catch_warnings():
            # Our own limit applies; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise DecodeError(NOT_AN_IMAGE, "not a recognised image format", path) from None
    except Image.DecompressionBombError as e:
        raise DecodeError(TOO_LARGE, str(e), path) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise DecodeError(UNREADABLE, f"{type(e).__name__}: {e}", path) from None
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError(TOO_LARGE, f"{w}x{h} = {w * h} pixels > limit {max_pixels}", path)
    if w < 1 or h < 1:
        raise DecodeError(UNREADABLE, f"empty image {w}x{h}", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _load_strict(im)
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
            arr = _pil_to_array(im, keep_alpha and has_alpha)
        return to_uint8(arr, keep_alpha=keep_alpha and has_alpha)
    except DecodeError as e:
        raise DecodeError(e.reason, e.detail, path) from None
    except Exception as e:  # noqa: BLE001 - truncated JPEG, bad CRC, ...
        raise DecodeError(UNREADABLE, f"{type(e).__name__}: {e}", path) from None


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of one local image file, with `read_image`'s errors.

    Raises:
      errors.InputNotFoundError: the file does not exist.
      DecodeError: it cannot be read (permissions, a folder...); the message names it.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise errors.InputNotFoundError(f"{os.fsdecode(path)}: no such file") from None
    except OSError as e:  # permissions, a folder, a vanished file...
        raise DecodeError(UNREADABLE, f"cannot read file: {e.strerror or e}",
                          os.fsdecode(path)) from None


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               keep_alpha: bool = False) -> np.ndarray:
    """Reads and decodes one local image file (see `decode_image`).

    Raises:
      errors.InputNotFoundError: the file does not exist.
      DecodeError: it exists but cannot become an image; the message names it.
    """
    return decode_image(read_file(path), max_pixels, keep_alpha=keep_alpha, path=os.fsdecode(path))


def animation_frames(data: bytes) -> int:
    """Frames of an animated image (GIF, APNG, WebP, multi-page TIFF); 1 for a still one.

    `decode_image` keeps the first frame; callers that take an animation as a
    photo say so with this count. Only the header and a second frame's
    presence are read (`is_animated`), and only for formats that can animate.
    """
    if not data.startswith((b"GIF8", b"\x89PNG", b"RIFF", b"II*\x00", b"MM\x00*")):
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(getattr(im, "n_frames", 1)) if getattr(im, "is_animated", False) else 1
    except Exception:  # noqa: BLE001 - decode_image judges whether the file is readable
        return 1
