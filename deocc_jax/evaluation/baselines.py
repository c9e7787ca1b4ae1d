"""Reference methods the model is compared against.

Every baseline has the same signature as a guided model: it gets the occluded
images and the true occluder mask and returns restored images. They run on the
host (OpenCV), one image at a time, so they need no accelerator.

- `occluded_input`: returns the input unchanged; what doing nothing scores.
- `opencv_telea`: OpenCV's fast-marching inpainting (Telea 2004) in the mask.
- `opencv_ns`: OpenCV's Navier-Stokes inpainting (Bertalmio et al. 2001).

The evaluator scores them with the models' realism metrics (detail ratio,
remnants, identity against doing nothing); harm on clean faces is measured for
models only: given the true, empty, mask of a clean face, a baseline changes
nothing by construction.
"""

from __future__ import annotations

from typing import Callable, Mapping

import cv2
import numpy as np

# Neighbourhood radius (px) both OpenCV methods look at around each masked pixel.
# 3 px is OpenCV's documented example value and suits 64..256 px crops.
INPAINT_RADIUS = 3

BaselineFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_batch(images: np.ndarray, masks: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
    if masks.dtype != np.uint8 or masks.shape != images.shape[:3] + (1,):
        raise ValueError(
            f"masks must be uint8 [B, H, W, 1] matching images {images.shape}, got "
            f"{masks.dtype} {masks.shape}")


def occluded_input(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The occluded images themselves (the do-nothing baseline)."""
    _check_batch(images, masks)
    return images.copy()


def opencv_inpaint(images: np.ndarray, masks: np.ndarray, method: str,
                   radius: int = INPAINT_RADIUS) -> np.ndarray:
    """Inpaints every pixel where `masks` > 0 with OpenCV.

    Args:
      images: uint8 [B, H, W, 3] RGB.
      masks: uint8 [B, H, W, 1]; nonzero marks pixels to fill.
      method: "telea" or "ns".
      radius: neighbourhood radius in pixels.

    Returns:
      uint8 [B, H, W, 3]; pixels outside the mask are unchanged.
    """
    _check_batch(images, masks)
    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
    if method not in flags:
        raise ValueError(f"unknown inpainting method {method!r}; expected one of {sorted(flags)}")
    out = np.empty_like(images)
    for i in range(images.shape[0]):
        # cv2.inpaint treats the 3 channels independently, so RGB order is fine.
        out[i] = cv2.inpaint(np.ascontiguousarray(images[i]),
                             (masks[i, ..., 0] > 0).astype(np.uint8), radius, flags[method])
    return out


def opencv_telea(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """OpenCV Telea inpainting given the true mask."""
    return opencv_inpaint(images, masks, "telea")


def opencv_ns(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """OpenCV Navier-Stokes inpainting given the true mask."""
    return opencv_inpaint(images, masks, "ns")


BASELINES: Mapping[str, BaselineFn] = {
    "occluded_input": occluded_input,
    "opencv_telea": opencv_telea,
    "opencv_ns": opencv_ns,
}
