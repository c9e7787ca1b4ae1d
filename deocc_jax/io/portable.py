"""What the ONNX and LiteRT runners share: the metadata key and the checks on a request.

A portable export (`.onnx`, `.tflite`) carries its own description under
`METADATA_KEY` as one JSON object, so a runner needs no deocc files and no
model code: `format`, `resolution`, `guided`, the input and output tensors, the
converter, and whatever the exporter was given (mode, step, config, the
self-check). This module imports numpy and `deocc_jax.errors` only.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deocc_jax import errors

METADATA_KEY = "deocc_export"
# Tensor names of every deocc export (the SavedModel's serving signature uses the same ones).
INPUT_IMAGES, INPUT_MASKS = "images", "masks"
OUTPUT_IMAGES, OUTPUT_MASK = "deoccluded", "mask"


def parse_metadata(path: str, text: str | bytes | None, what: str) -> dict[str, Any]:
    """The metadata object of an export, or a one-line error naming `path`.

    Args:
      path: the model file (for the message).
      text: the JSON stored under METADATA_KEY, or None when the file has none.
      what: the format, e.g. "ONNX model".
    """
    if text is None:
        raise errors.InvalidInputError(
            f"{path}: a {what} without deocc metadata ({METADATA_KEY!r}); write it with "
            "`python -m deocc_jax.export --format=...`")
    try:
        meta = json.loads(text)
        resolution, guided = int(meta["resolution"]), meta["guided"]
    except (ValueError, TypeError, KeyError) as e:
        raise errors.InvalidInputError(f"{path}: unreadable deocc metadata in the {what} ({e})") from e
    if resolution <= 0 or not isinstance(guided, bool):
        raise errors.InvalidInputError(f"{path}: bad deocc metadata: resolution={resolution!r}, "
                                       f"guided={guided!r}")
    return meta


def check_request(path: str, resolution: int, guided: bool, images: Any,
                  masks: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Checks a request against the model's signature before it reaches the runtime.

    Runtimes report a wrong shape or dtype in their own words (or not at all,
    for LiteRT's resizable inputs); this says what the model takes.

    Returns:
      (images, masks) as contiguous numpy arrays; masks is None for blind models
      (ignored like `models.predict` ignores them).
    """
    r = resolution

    def checked(x, name: str, channels: int, batch: int | None) -> np.ndarray:
        x = np.asarray(x)
        want = f"uint8 [batch, {r}, {r}, {channels}] (batch >= 1)"
        if batch is not None:
            want += f" with the batch of images ({batch})"
        if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (r, r, channels) or x.shape[0] < 1
                or (batch is not None and x.shape[0] != batch)):
            raise errors.InvalidInputError(f"{path}: {name} must be {want}, got {x.dtype}{list(x.shape)}")
        return np.ascontiguousarray(x)

    images = checked(images, INPUT_IMAGES, 3, None)
    if not guided:
        return images, None
    if masks is None:
        raise errors.InvalidInputError(f"{path}: a guided model: it needs masks")
    return images, checked(masks, INPUT_MASKS, 1, images.shape[0])
