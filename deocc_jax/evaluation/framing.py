"""How the evaluated faces are framed: the dataset's template crops, or tight re-crops of them.

A prepared split holds aligned crops in the FFHQ-style template framing
(`faces.align.TEMPLATE_5`): forehead, hair and some background around the face.
Users also give `infer` tight face crops (an ID photo cut to the face). `infer`
aligns such a photo to the same template, and the part of the crop that lies
outside the photo is filled by `align.padded_crop` (reflect, blur, fade to the
photo's median colour). So a tight re-crop of an aligned example, as the model
sees it, is `padded_crop` of the part of the example inside a tight face box,
put back at its place in the crop: the same warp, at scale 1.

That includes `padded_crop`'s seam: FFHQ's recipe blends the photo with its
blur from a third of a pad width inside the photo's edge, so near the box's
edge (13 px at the sides and bottom, 16 at the top, of a 128 px crop) its pixels
are softened exactly as a tight photo's are in `infer`; deeper inside, they are
unchanged.

The clean target, the occluded input and the mask are re-cropped alike (the
mask is cut to the box), so every method, model or baseline, gets the same
input and is scored against the same target inside the same mask.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from deocc_jax.faces import align

TEMPLATE = "template"
TIGHT = "tight"
FRAMINGS = (TEMPLATE, TIGHT)

# UTKFace's "Aligned & Cropped" photos (the tight crops in ../shared/data/utkface), mapped into
# the template by their MediaPipe five points, span x 0.18-0.83 and y 0.27-0.92 of the crop side
# (medians of 40 photos; quartiles within 0.02): from mid-forehead to just below the chin, cheek to
# cheek, little background. That is the box around TEMPLATE_5's five points grown by 0.8 eye
# distances on every side (x 0.18-0.82, y 0.27-0.92).
TIGHT_MARGIN = 0.8


def tight_box(resolution: int, margin: float = TIGHT_MARGIN) -> tuple[int, int, int, int]:
    """The tight face box in a `resolution`^2 template crop.

    Args:
      resolution: crop side in pixels.
      margin: how far the box reaches beyond the five template points, in eye
        distances.

    Returns:
      (x0, y0, x1, y1) in crop pixels, x1 and y1 exclusive, within the crop.
    """
    points = align.TEMPLATE_5 * resolution
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    lo = np.rint(points.min(0) - margin * eye_distance)
    hi = np.rint(points.max(0) + margin * eye_distance)
    x0, y0 = (int(v) for v in np.clip(lo, 0, resolution))
    x1, y1 = (int(v) for v in np.clip(hi, 0, resolution))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"margin {margin} leaves no tight box in a {resolution} px crop")
    return x0, y0, x1, y1


def _check_box(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    h, w = shape[1:3]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {box} does not fit a {w}x{h} crop")


def tight_recrop(images: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Aligned crops as `infer` frames them when the photo held only the `box` part of each.

    Args:
      images: uint8 [B, R, R, C] aligned crops.
      box: (x0, y0, x1, y1) from `tight_box`.

    Returns:
      uint8 [B, R, R, C]: the box's pixels (softened within `padded_crop`'s seam
      of its edge), the FFHQ-style fill of that part outside it.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be uint8 [B, R, R, C], got {images.dtype} {images.shape}")
    _check_box(images.shape, box)
    x0, y0, x1, y1 = box
    resolution = images.shape[1]
    # The photo's pixel (0, 0) is the crop's (x0, y0): a translation, so the box is copied, not
    # resampled.
    to_crop = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])
    return np.stack([align.padded_crop(np.ascontiguousarray(image[y0:y1, x0:x1]), to_crop,
                                       resolution).image.reshape(image.shape)
                     for image in images])


def cut_to_box(masks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`masks` [B, H, W, 1] with everything outside `box` cleared."""
    masks = np.asarray(masks)
    _check_box(masks.shape, box)
    x0, y0, x1, y1 = box
    out = np.zeros_like(masks)
    out[:, y0:y1, x0:x1] = masks[:, y0:y1, x0:x1]
    return out


def recrop_batch(batch: Mapping[str, Any], box: tuple[int, int, int, int]) -> dict[str, Any]:
    """The batch with "clean" and "occluded" re-cropped tight and "mask" cut to `box`."""
    out = dict(batch)
    out["clean"] = tight_recrop(batch["clean"], box)
    out["occluded"] = tight_recrop(batch["occluded"], box)
    out["mask"] = cut_to_box(batch["mask"], box)
    return out


def describe(framing: str, resolution: int) -> dict[str, Any]:
    """What metrics.json records about the framing (the box in crop pixels for tight)."""
    if framing == TEMPLATE:
        return {"name": TEMPLATE, "description": "the dataset's aligned template crops"}
    x0, y0, x1, y1 = tight_box(resolution)
    return {"name": TIGHT, "box": [x0, y0, x1, y1],
            "box_fraction": (x1 - x0) * (y1 - y0) / resolution ** 2,
            "margin_eye_distances": TIGHT_MARGIN,
            "description": f"tight re-crops: each crop's {x1 - x0}x{y1 - y0} px box (the five "
                           f"template points grown by {TIGHT_MARGIN} eye distances, as UTKFace "
                           "crops) kept, the rest filled as infer fills a tight photo "
                           "(faces.align.padded_crop: reflect, blur, fade to the median colour, "
                           "its seam blur reaching inside the box's edge); clean and occluded "
                           "alike, the mask cut to the box"}
