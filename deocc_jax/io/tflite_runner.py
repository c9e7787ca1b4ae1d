"""Runs a deocc LiteRT (.tflite) export with ai-edge-litert (numpy in, numpy out), no model code.

    runner = TfliteRunner("deocc.tflite")
    out = runner(crops_uint8)          # uint8 [B, R, R, 3] aligned faces, any B >= 1
    out["deoccluded"], out["mask"]     # uint8 [B, R, R, 3], float32 [B, R, R, 1]

The file holds the graph (signature `serving_default`: `images` [, `masks`] ->
`deoccluded`, `mask`), the weights (float32, float16, or int8 with dynamic-range
quantisation) and the deocc metadata as JSON in the flatbuffer's `metadata`
table under `deocc_export`, read here with the flatbuffer schema that
ai-edge-litert ships. Exports have a fixed batch (1: what mobile runtimes and
XNNPACK want); this runner cuts any batch into model-sized pieces and pads the
last one.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from deocc_jax import errors
from deocc_jax.io import portable

SIGNATURE_KEY = "serving_default"
_TFLITE_IDENTIFIER = b"TFL3"


def read_tflite_metadata(path: str, name: str = portable.METADATA_KEY) -> bytes | None:
    """The bytes of metadata entry `name` of a .tflite file, or None when it has none.

    Raises:
      errors.InvalidInputError: the file is not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema  # LiteRT only where it is used

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 8:
            raise errors.InvalidInputError(f"{path}: not a TFLite model (too short)")
        # mmap: a model is tens of MB and only a few hundred bytes of it are read here.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[4:8] != _TFLITE_IDENTIFIER:
                raise errors.InvalidInputError(
                    f"{path}: not a TFLite model (no {_TFLITE_IDENTIFIER.decode()} identifier)")
            try:
                model = schema.Model.GetRootAs(buf, 0)
                for i in range(model.MetadataLength()):
                    entry = model.Metadata(i)
                    if entry.Name() != name.encode():
                        continue
                    buffer = model.Buffers(entry.Buffer())
                    if buffer.DataLength():
                        return buffer.DataAsNumpy().tobytes()
                    # Buffers of models over 2 GB live after the flatbuffer, by offset.
                    return bytes(buf[buffer.Offset():buffer.Offset() + buffer.Size()])
            except (IndexError, ValueError, TypeError) as e:  # flatbuffers' errors on a corrupt table
                raise errors.InvalidInputError(f"{path}: corrupt TFLite model ({e})") from e
    return None


class TfliteRunner:
    """A deocc .tflite export loaded in LiteRT's interpreter (XNNPACK on CPU).

    Args:
      path: the .tflite file.
      num_threads: interpreter threads (None: LiteRT's default).

    Raises:
      errors.InputNotFoundError: no such file.
      errors.InvalidInputError: not a TFLite model LiteRT can load, one without
        deocc metadata, or one without the `serving_default` signature.
    """

    def __init__(self, path: str, *, num_threads: int | None = None):
        from ai_edge_litert import interpreter as litert  # LiteRT only where it is used

        if not os.path.isfile(path):
            raise errors.InputNotFoundError(f"{path}: no such TFLite model file")
        self.path = path
        self.metadata: dict[str, Any] = portable.parse_metadata(
            path, read_tflite_metadata(path), "TFLite model")
        self.resolution = int(self.metadata["resolution"])
        self.guided = bool(self.metadata["guided"])
        try:
            self._interpreter = litert.Interpreter(model_path=path, num_threads=num_threads)
            self._runner = self._interpreter.get_signature_runner(SIGNATURE_KEY)
        except (ValueError, RuntimeError) as e:
            raise errors.InvalidInputError(
                f"{path}: not a deocc TFLite model LiteRT can load ({errors.one_line(e)})") from e
        details = self._runner.get_input_details()
        want = {portable.INPUT_IMAGES} | ({portable.INPUT_MASKS} if self.guided else set())
        if set(details) != want:
            raise errors.InvalidInputError(
                f"{path}: the signature's inputs {sorted(details)} do not match its deocc metadata "
                f"(guided={self.guided} needs {sorted(want)})")
        batch = int(details[portable.INPUT_IMAGES]["shape_signature"][0])
        # -1: a resizable batch; else the fixed batch every call must have.
        self.model_batch = batch if batch > 0 else None
        self.quantize = self.metadata.get("quantize", "none")
        self.description = f"TFLite {path} (ai-edge-litert, {self.quantize})"

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """De-occludes aligned face crops.

        Args:
          images: uint8 [B, R, R, 3], any B >= 1.
          masks: uint8 [B, R, R, 1] (0 / 255) for guided models; ignored otherwise.

        Returns:
          {"deoccluded": uint8 [B, R, R, 3], "mask": float32 [B, R, R, 1]}.
        """
        images, masks = portable.check_request(self.path, self.resolution, self.guided, images, masks)
        n = images.shape[0]
        step = self.model_batch or n
        outs = []
        for start in range(0, n, step):
            feeds = {portable.INPUT_IMAGES: images[start:start + step]}
            if masks is not None:
                feeds[portable.INPUT_MASKS] = masks[start:start + step]
            rows = feeds[portable.INPUT_IMAGES].shape[0]
            if rows < step:  # the last piece of a fixed-batch model: pad with zeros, drop after
                feeds = {k: np.concatenate([v, np.zeros((step - rows,) + v.shape[1:], v.dtype)])
                         for k, v in feeds.items()}
            out = self._runner(**feeds)
            outs.append({k: out[k][:rows] for k in (portable.OUTPUT_IMAGES, portable.OUTPUT_MASK)})
        return {k: np.concatenate([o[k] for o in outs]) if len(outs) > 1 else outs[0][k]
                for k in (portable.OUTPUT_IMAGES, portable.OUTPUT_MASK)}
