"""Any trained model as a batch function on aligned face crops, whatever its format.

    predictor = open_predictor("pretrained/deocc-realtime-128")  # or a workdir, an export folder, ...
    out = predictor(crops_uint8)                         # {"deoccluded", "mask"} numpy

`infer`, `live`, `evaluate` and the export self-checks all run models through
this, so a user can compare formats on the same photos:

  workdir / pretrained folder   JAX (jit on the default device)
  SavedModel export folder      TensorFlow
  model.onnx                    onnxruntime
  model.tflite                  LiteRT
"""

from __future__ import annotations

import os
from typing import Protocol

import jax
import numpy as np

from deocc_jax import errors, models
from deocc_jax.artifacts import loading
from deocc_jax.io import onnx_runner, saved_model_runner, tflite_runner

# Where deocc's own trained models live (the repo's pretrained/ folder);
# DEOCC_PRETRAINED_DIR overrides it.
PRETRAINED_DIR = os.environ.get(
    "DEOCC_PRETRAINED_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                 "pretrained"))  # deocc_jax/artifacts/ -> the repository
DEFAULT_MODEL = "deocc-realtime-128"
DEFAULT_LIVE_MODEL = "deocc-realtime-128"


class Predictor(Protocol):
    """What inference needs from a model: crop size, guidance, a batch call."""
    resolution: int
    guided: bool
    description: str

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        ...


def _bucket(n: int) -> int:
    """Next power of two: pads batches so jit compiles a few shapes, not one per count."""
    return 1 << max(0, (n - 1).bit_length())


class JaxPredictor:
    """A workdir's checkpoint or a pretrained folder, run by JAX."""

    def __init__(self, model: loading.LoadedModel):
        self.model = model
        self.config = model.config
        self.resolution = int(model.config.resolution)
        self.guided = models.is_guided(model.config)
        self.description = model.description
        self._predict = models.make_predict_fn(model.config)

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        n = images.shape[0]
        pad = ((0, _bucket(n) - n), (0, 0), (0, 0), (0, 0))
        out = self._predict(self.model.variables, np.pad(images, pad),
                            None if masks is None else np.pad(masks, pad))
        return {k: np.asarray(v)[:n] for k, v in jax.device_get(out).items()}


def default_model_path(name: str = DEFAULT_MODEL) -> str:
    """The shipped model `name` under PRETRAINED_DIR; an error saying what to pass if absent."""
    path = os.path.join(PRETRAINED_DIR, name)
    if not loading.is_pretrained(path):
        raise errors.InputNotFoundError(
            f"{path}: the shipped model {name!r} is missing; pass --model=DIR (a training workdir, "
            "a pretrained folder or an export)")
    return path


def open_predictor(path: str | None, checkpoint: str | int = "latest", *,
                   default: str = DEFAULT_MODEL) -> Predictor:
    """A Predictor for any model format (see the module docstring).

    Args:
      path: model path; None means the shipped model `default`.
      checkpoint: for workdirs, "latest", "best" or a step.
      default: the shipped model used when `path` is None.
    """
    path = default_model_path(default) if path is None else path
    if not os.path.exists(path):
        raise errors.InputNotFoundError(
            f"--model {path}: does not exist (a workdir, a pretrained folder, an export folder, "
            "a .onnx or a .tflite file)")
    if path.endswith(".onnx"):
        return onnx_runner.OnnxRunner(path)
    if path.endswith(".tflite"):
        return tflite_runner.TfliteRunner(path)
    if saved_model_runner.is_export(path):
        return saved_model_runner.SavedModelRunner(path)
    return JaxPredictor(loading.load_model(path, checkpoint))
