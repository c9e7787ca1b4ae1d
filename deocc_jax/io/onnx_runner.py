"""Runs a deocc ONNX export with onnxruntime (numpy in, numpy out), no model code needed.

    runner = OnnxRunner("deocc.onnx")
    out = runner(crops_uint8)          # uint8 [B, R, R, 3] aligned faces, any B >= 1
    out["deoccluded"], out["mask"]     # uint8 [B, R, R, 3], float32 [B, R, R, 1]

The file holds everything: the graph (dynamic batch, uint8 in and out), the
weights, and the deocc metadata (resolution, guided, mode, step, config, the
export's self-check) as JSON in the model's `metadata_props`. Only onnxruntime
and numpy are imported, so the same file runs from any onnxruntime binding
(C++, C#, Java, onnxruntime-web) given the tensor names below.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from deocc_jax import errors
from deocc_jax.io import portable


class OnnxRunner:
    """A deocc ONNX export loaded in onnxruntime.

    Args:
      path: the .onnx file.
      num_threads: onnxruntime intra-op threads (None: onnxruntime's default,
        one per physical core).
      providers: execution providers, in order of preference.

    Raises:
      errors.InputNotFoundError: no such file.
      errors.InvalidInputError: not an ONNX model onnxruntime can load, or one
        without deocc metadata.
    """

    def __init__(self, path: str, *, num_threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort  # only where an ONNX model is run

        if not os.path.isfile(path):
            raise errors.InputNotFoundError(f"{path}: no such ONNX model file")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        # Keep onnxruntime's warnings about unused initializers and the like off stderr.
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(path, options, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own pybind types for every load failure
            raise errors.InvalidInputError(
                f"{path}: not an ONNX model onnxruntime can load ({errors.one_line(e)})") from e
        meta_map = self._session.get_modelmeta().custom_metadata_map
        self.path = path
        self.metadata: dict[str, Any] = portable.parse_metadata(
            path, meta_map.get(portable.METADATA_KEY), "ONNX model")
        self.resolution = int(self.metadata["resolution"])
        self.guided = bool(self.metadata["guided"])
        self.providers = tuple(self._session.get_providers())
        self.description = f"ONNX {path} (onnxruntime {ort.__version__}, {self.providers[0]})"
        inputs = {i.name for i in self._session.get_inputs()}
        want = {portable.INPUT_IMAGES} | ({portable.INPUT_MASKS} if self.guided else set())
        if inputs != want:
            raise errors.InvalidInputError(
                f"{path}: the graph's inputs {sorted(inputs)} do not match its deocc metadata "
                f"(guided={self.guided} needs {sorted(want)})")

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """De-occludes aligned face crops.

        Args:
          images: uint8 [B, R, R, 3], any B >= 1 (the graph's batch is dynamic).
          masks: uint8 [B, R, R, 1] (0 / 255) for guided models; ignored otherwise.

        Returns:
          {"deoccluded": uint8 [B, R, R, 3], "mask": float32 [B, R, R, 1]}.
        """
        images, masks = portable.check_request(self.path, self.resolution, self.guided, images, masks)
        feeds = {portable.INPUT_IMAGES: images}
        if masks is not None:
            feeds[portable.INPUT_MASKS] = masks
        names = [portable.OUTPUT_IMAGES, portable.OUTPUT_MASK]
        deoccluded, mask = self._session.run(names, feeds)
        return {portable.OUTPUT_IMAGES: deoccluded, portable.OUTPUT_MASK: mask}
