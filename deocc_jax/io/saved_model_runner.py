"""Runs a SavedModel written by `deocc_jax.export` from Python (numpy in, numpy out).

Layout: `base/<version>/saved_model.pb` with a numeric version (the checkpoint
step) as TensorFlow Serving expects under `--model_base_path`, and
`base/<version>/assets.extra/deocc_export.json` describing the model
(resolution, guided, config, self-check results).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from deocc_jax import errors
from deocc_jax.io import atomic

SIGNATURE_KEY = "serving_default"
METADATA_FILE = os.path.join("assets.extra", "deocc_export.json")


def write_metadata(model_dir: str, meta: Mapping[str, Any]) -> None:
    """Writes (or rewrites: the self-check adds its results) an export's deocc metadata."""
    atomic.write_text(os.path.join(model_dir, METADATA_FILE),
                      json.dumps(meta, indent=2, sort_keys=True), overwrite=True)


def read_metadata(model_dir: str) -> dict[str, Any]:
    with open(os.path.join(model_dir, METADATA_FILE)) as f:
        return json.load(f)


def resolve_version_dir(path: str) -> str:
    """The directory holding saved_model.pb: `path` itself or its highest version."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = [d for d in os.listdir(path)
                    if re.fullmatch(r"\d+", d) and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
        if versions:
            return os.path.join(path, max(versions, key=int))
    raise errors.InputNotFoundError(
        f"{path!r} is not a deocc export: expected saved_model.pb in it or in a numeric "
        "version folder below it (write one with `python -m deocc_jax.export`)")


def is_export(path: str) -> bool:
    try:
        resolve_version_dir(path)
        return True
    except FileNotFoundError:
        return False


class SavedModelRunner:
    """Calls an exported model's serving signature from Python (numpy in/out).

    Args:
      path: an export base path or version directory.
    """

    def __init__(self, path: str):
        import tensorflow as tf  # only where a SavedModel is run: TF takes seconds to import

        self.path = resolve_version_dir(path)
        self.metadata = read_metadata(self.path)
        self.resolution = int(self.metadata["resolution"])
        self.guided = bool(self.metadata["guided"])
        self._loaded = tf.saved_model.load(self.path)
        self._fn = self._loaded.signatures[SIGNATURE_KEY]
        self.description = f"SavedModel {self.path}"

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        import tensorflow as tf  # already loaded by __init__; local so importing this module is cheap

        kwargs = {"images": tf.constant(images)}
        if self.guided:
            if masks is None:
                raise errors.InvalidInputError(f"{self.path}: a guided model: it needs masks")
            kwargs["masks"] = tf.constant(masks)
        out = self._fn(**kwargs)
        return {k: v.numpy() for k, v in out.items()}


