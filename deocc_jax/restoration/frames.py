"""One photo's or frame's faces restored in three steps that pipeline threads can run apart.

    crops = align_faces(frame, landmarks, model.resolution, guide)   # detect thread's output
    out = run_model(model, crops)                                    # model thread
    image, weights = blend_faces(frame, crops, out, stabilizer, t)   # output thread

`restore_frame` chains them for sequential use (photos, video files, the
flicker measurement). Crops are padded like the training crops
(`align.padded_crop`); blending is `restoration.blend`'s, so photos, videos
and live frames are restored identically.

Guided models (given the occluder mask) get it from a `GuideMask`: one mask
image either in frame coordinates (it stays where it is in the picture) or in
the aligned face template (it follows the face).
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from deocc_jax import errors
from deocc_jax.faces import align
from deocc_jax.io import timing
from deocc_jax.restoration import blend
from deocc_jax.restoration.stabilize import TemporalStabilizer


class GuideMask:
    """The occluder mask a guided model needs, for every face of every frame.

    The image's white (> 127) pixels are occluded. Its size says its space:
    exactly the frame's size -> frame coordinates, warped into each face's
    crop; any other square image -> the aligned face template (the model's
    crop), resized to the model's resolution and used for every face.

    Args:
      path: a mask image (PNG, JPEG...; colour is converted to grey).
      frame_hw: the stream's frame size (height, width).

    Raises:
      errors.InputNotFoundError / errors.InvalidInputError: unreadable, or
        neither the frame's size nor square.
    """

    def __init__(self, path: str, frame_hw: tuple[int, int]):
        if not os.path.isfile(path):
            raise errors.InputNotFoundError(f"--mask {path}: no such file")
        grey = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise errors.InvalidInputError(f"--mask {path}: not a readable image")
        self.path = path
        self.in_frame = tuple(grey.shape) == tuple(frame_hw)
        if not self.in_frame and grey.shape[0] != grey.shape[1]:
            raise errors.InvalidInputError(
                f"--mask {path}: {grey.shape[1]}x{grey.shape[0]} is neither the frame's size "
                f"({frame_hw[1]}x{frame_hw[0]}, a mask in the picture) nor square (a mask on the "
                "aligned face template)")
        self._mask = np.where(grey > 127, 255, 0).astype(np.uint8)

    @classmethod
    def from_array(cls, mask: np.ndarray, in_frame: bool = True, name: str = "<array>") -> "GuideMask":
        """A GuideMask from a bool/uint8 [H, W] array (frame or template space)."""
        mask = np.asarray(mask)
        guide = cls.__new__(cls)
        guide.path = name
        guide.in_frame = in_frame
        guide._mask = np.where(mask > (0 if mask.dtype == bool else 127), 255, 0).astype(np.uint8)
        return guide

    def crop(self, M: np.ndarray, resolution: int) -> np.ndarray:
        """uint8 [R, R, 1] (0 / 255) mask for the face whose image -> crop matrix is M."""
        if self.in_frame:
            m = cv2.warpAffine(self._mask, np.asarray(M, np.float64), (resolution, resolution),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        else:
            m = cv2.resize(self._mask, (resolution, resolution), interpolation=cv2.INTER_AREA)
        return np.where(m > 127, 255, 0).astype(np.uint8)[..., None]


@dataclasses.dataclass
class FaceCrops:
    """The aligned faces of one frame.

    Attributes:
      matrices: per face, the 2x3 image -> crop matrix.
      crops: uint8 [F, R, R, 3].
      guides: uint8 [F, R, R, 1] occluder masks for a guided model, else None.
    """
    matrices: list[np.ndarray]
    crops: np.ndarray
    guides: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.matrices)


@dataclasses.dataclass
class ModelOutput:
    """Attributes: restored uint8 [F, R, R, 3]; masks float32 [F, R, R] occlusion probability."""
    restored: np.ndarray
    masks: np.ndarray


def check_model(model, mask: str | None) -> None:
    """A guided model needs a mask and a blind one takes none: one clear line otherwise.

    Args:
      model: a `predictors.Predictor`.
      mask: what --mask names (a mask image or a folder of them), or None.
    """
    if model.guided and mask is None:
        raise errors.InvalidInputError(
            f"{model.description} is a guided model: pass the occluder's mask with --mask (an "
            "image the size of the frame or photo, a square one on the aligned face, or for "
            "photos a folder of masks named like them)")
    if not model.guided and mask is not None:
        raise errors.InvalidInputError(
            f"--mask {mask}: {model.description} is a blind model (it finds the occluder "
            "itself); drop --mask or use a guided model")


def align_faces(image: np.ndarray, landmarks: list[np.ndarray], resolution: int,
                guide: GuideMask | None = None) -> FaceCrops:
    """Aligned crops (and guide masks) of every face in `image`."""
    mats = [align.alignment_matrix(lm, resolution) for lm in landmarks]
    if not mats:
        return FaceCrops([], np.zeros((0, resolution, resolution, 3), np.uint8))
    # Padded like the training crops (FFHQ's fill beyond the photo).
    crops = np.stack([align.padded_crop(image, m, resolution).image for m in mats])
    guides = None if guide is None else np.stack([guide.crop(m, resolution) for m in mats])
    return FaceCrops(mats, crops, guides)


def run_model(model, faces: FaceCrops) -> ModelOutput:
    """The model on every face of a frame, in one batch."""
    r = faces.crops.shape[1]
    if not len(faces):
        return ModelOutput(np.zeros((0, r, r, 3), np.uint8), np.zeros((0, r, r), np.float32))
    out = model(faces.crops, faces.guides) if faces.guides is not None else model(faces.crops)
    return ModelOutput(np.asarray(out["deoccluded"], np.uint8),
                       np.asarray(out["mask"], np.float32).reshape(len(faces), r, r))


def blend_faces(image: np.ndarray, faces: FaceCrops, out: ModelOutput,
                stabilizer: TemporalStabilizer | None = None, time_s: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pastes every restored face into `image` (stabilised over time if a stabiliser is given).

    Returns:
      (uint8 [H, W, 3] result, float32 [H, W] max blend weight over faces).
    """
    restored, masks = out.restored, out.masks
    if stabilizer is not None:
        restored, masks = stabilizer(faces.matrices, faces.crops, restored, masks, time_s)
    h, w = image.shape[:2]
    result, weights = image, np.zeros((h, w), np.float32)
    r = faces.crops.shape[1]
    for M, rgb, mask in zip(faces.matrices, restored, masks):
        alpha_crop = blend.blend_alpha_crop(mask, r, blend.MIN_COMPONENT_FRAC)  # the harm gate
        result, alpha = blend.paste_face(result, rgb, alpha_crop, M)
        weights = np.maximum(weights, alpha)
    return result, weights


@dataclasses.dataclass
class Restored:
    """One restored photo or frame.

    Attributes:
      image: uint8 [H, W, 3] result.
      weights: float32 [H, W] max blend weight over faces (0 = untouched pixel).
      faces: the aligned faces.
      out: the model's outputs for them.
    """
    image: np.ndarray
    weights: np.ndarray
    faces: FaceCrops
    out: ModelOutput

    def mask_image(self) -> np.ndarray:
        """uint8 [H, W] predicted occlusion probability of all faces, in image pixels."""
        return blend.mask_image(self.faces.matrices, self.out.masks, self.image.shape[:2])


def restore_frame(image: np.ndarray, landmarks: list[np.ndarray], model, *,
                  stabilizer: TemporalStabilizer | None = None, time_s: float = 0.0,
                  guide: GuideMask | None = None,
                  timer: timing.StageTimer | None = None) -> Restored:
    """Restores every face of one image: `align_faces`, `run_model`, `blend_faces`.

    Args:
      image: uint8 [H, W, 3] RGB.
      landmarks: one [478, 2] pixel landmark array per face.
      model: a `predictors.Predictor`.
      stabilizer: temporal stabilisation across calls (video), or None.
      time_s: the frame's time, for the stabiliser.
      guide: the occluder mask, for guided models.
      timer: receives "align", "model" and "blend" times.
    """
    timer = timer or timing.StageTimer()
    with timer("align"):
        faces = align_faces(image, landmarks, model.resolution, guide)
    with timer("model"):
        out = run_model(model, faces)
    with timer("blend"):
        result, weights = blend_faces(image, faces, out, stabilizer, time_s)
    return Restored(result, weights, faces, out)
