"""LiteRT (.tflite) export of a pure JAX predict function, float32 or quantised, and its check.

The path (the one LiteRT documents for JAX models, with the pinned jax 0.10.2
and tensorflow-cpu 2.21): `jax2tf.convert` with native serialization embeds
the JAX function as StableHLO in a TF `XlaCallModule`; a `tf.function` with
the uint8 signature is saved as a SavedModel (a temporary one: it gives the
`.tflite` a `serving_default` signature with the tensor names `images`,
`masks`, `deoccluded`, `mask`, which `from_concrete_functions` does not); and
`tf.lite.TFLiteConverter.from_saved_model` legalises the StableHLO to TFLite
builtin ops (CONV_2D, FULLY_CONNECTED, BATCH_MATMUL, ...; no Flex/TF ops).

The batch is fixed (`batch_size`, default 1). With a symbolic batch the
converter fails: under shape polymorphism JAX lowers the generator's channel
slices (`h[..., :3]`) to `stablehlo.dynamic_gather`, which TF 2.21's
StableHLO->TFLite legalisation does not support ("'vhlo.dynamic_gather_v1' op
is not part of the vhlo support yet"). Batch 1 is also what phones and
XNNPACK run best; `io.tflite_runner.TfliteRunner` cuts any batch into pieces.

Variants (`quantize`):
  none           float32 weights and compute.
  float16        float16 weights (half the file), dequantised to float32 when loaded.
  dynamic_int8   int8 weights (a quarter of the file), activations quantised on the fly
                 (dynamic-range quantisation; no calibration data needed).
The deocc metadata is a JSON flatbuffer metadata entry `deocc_export` (see
`io.portable`), so the file alone is the model.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np

from deocc_jax.evaluation import metrics
from deocc_jax.artifacts.exporters import check
from deocc_jax.io import atomic, portable
from deocc_jax.io.tflite_runner import SIGNATURE_KEY, TfliteRunner, read_tflite_metadata

QUANTIZE_MODES = ("none", "float16", "dynamic_int8")

# A quantised export is only approximately the JAX model; its quality is measured as the
# masked-PSNR change on real pairs (`masked_psnr`). The self-check records its differences and
# fails only past this mean error per pixel value, which no working quantisation reaches
# (measured on the deocc generator at 128 px: float16 0.03, dynamic_int8 1.5 grey levels).
QUANTIZED_MAX_MEAN_ABS = 8.0

# (variables, images, masks or None) -> {"deoccluded": uint8 [B,H,W,3], "mask": float32 [B,H,W,1]}.
PredictFn = Callable[[Any, Any, Any], Mapping[str, Any]]


def converter_info() -> dict[str, str]:
    """Versions of the packages that write the file (stored in its metadata)."""
    return {name: importlib.metadata.version(name) for name in ("tensorflow-cpu", "jax")}


def export_tflite(predict_fn: PredictFn, variables: Any, path: str, *, resolution: int,
                  guided: bool, quantize: str = "none", metadata: Mapping[str, Any] | None = None,
                  batch_size: int = 1) -> str:
    """Writes one self-contained .tflite file (graph, weights, deocc metadata).

    Args:
      predict_fn: pure JAX `predict_fn(variables, images_uint8, masks_uint8 or
        None)` returning {"deoccluded": uint8, "mask": float32}, e.g.
        `functools.partial(models.predict, config)` (prefer `conv_impl="xla_conv"`:
        its convolutions become CONV_2D ops).
      variables: the model's variables (a pytree of arrays).
      path: the .tflite file to write (it appears complete or not at all; an
        existing file is refused, see `io.atomic`).
      resolution: the square face-crop size R the model takes.
      guided: whether the model takes the occluder mask as a second input.
      quantize: one of QUANTIZE_MODES.
      metadata: extra JSON-able facts (mode, step, config...) stored with the
        file's own (format, quantize, resolution, guided, batch, tensors, converter).
      batch_size: the model's fixed batch.

    Returns:
      `path`.

    Raises:
      ValueError: an unknown `quantize`.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    import tensorflow as tf  # TF only when exporting: seconds to import
    from jax.experimental import jax2tf

    variables = jax.device_get(variables)
    r, b = int(resolution), int(batch_size)

    def fn(images, masks=None):
        out = predict_fn(variables, images, masks)
        return {portable.OUTPUT_IMAGES: out[portable.OUTPUT_IMAGES],
                portable.OUTPUT_MASK: out[portable.OUTPUT_MASK]}

    tf_fn = jax2tf.convert(fn, native_serialization_platforms=("cpu",), with_gradient=False)
    images_spec = tf.TensorSpec([b, r, r, 3], tf.uint8, name=portable.INPUT_IMAGES)
    if guided:
        serve = tf.function(lambda images, masks: tf_fn(images, masks), autograph=False,
                            input_signature=[images_spec,
                                             tf.TensorSpec([b, r, r, 1], tf.uint8,
                                                           name=portable.INPUT_MASKS)])
    else:
        serve = tf.function(lambda images: tf_fn(images), autograph=False,
                            input_signature=[images_spec])
    module = tf.Module()
    module.serve = serve
    saved = tempfile.mkdtemp(prefix="deocc_tflite_")
    try:
        tf.saved_model.save(module, saved, signatures={SIGNATURE_KEY: serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[SIGNATURE_KEY])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        flatbuffer = converter.convert()
    finally:
        shutil.rmtree(saved, ignore_errors=True)

    names = [portable.INPUT_IMAGES] + ([portable.INPUT_MASKS] if guided else [])
    meta = {"format": "tflite", "quantize": quantize, "resolution": r, "guided": bool(guided),
            "batch": b, "signature": SIGNATURE_KEY, "converter": converter_info(),
            "inputs": {n: f"uint8 [{b}, {r}, {r}, {3 if n == portable.INPUT_IMAGES else 1}]"
                       for n in names},
            "outputs": {portable.OUTPUT_IMAGES: f"uint8 [{b}, {r}, {r}, 3]",
                        portable.OUTPUT_MASK: f"float32 [{b}, {r}, {r}, 1] in [0, 1]"},
            **(metadata or {})}
    atomic.write_bytes(path, _with_metadata(flatbuffer, meta))
    return path


def _with_metadata(flatbuffer: bytes, meta: Mapping[str, Any]) -> bytes:
    """The model with `meta` as JSON in its metadata entry `deocc_export` (replacing one)."""
    # LiteRT's own flatbuffer schema and object API: the runner reads the entry with the same schema.
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    key = portable.METADATA_KEY.encode()
    # Names read back from a file are bytes; a stale entry would shadow the new one for readers.
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.encode() if isinstance(m.name, str) else m.name) != key]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = portable.METADATA_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: str) -> dict[str, Any]:
    """The deocc metadata of a .tflite file."""
    return portable.parse_metadata(path, read_tflite_metadata(path), "TFLite model")


def write_metadata(path: str, meta: Mapping[str, Any]) -> None:
    """Replaces the deocc metadata of a .tflite file (e.g. to add the self-check results)."""
    with open(path, "rb") as f:
        data = f.read()
    atomic.write_bytes(path, _with_metadata(data, meta), overwrite=True)  # the same file, new metadata


class _Recorder:
    """Passes calls through and keeps the outputs (to add mean differences to a check)."""

    def __init__(self, fn: Callable[..., Mapping[str, Any]]):
        self._fn = fn
        self.description = getattr(fn, "description", "the export")
        self.outputs: list[dict[str, np.ndarray]] = []

    def __call__(self, images, masks):
        out = {k: np.asarray(v) for k, v in self._fn(images, masks).items()}
        self.outputs.append(out)
        return out


def mean_differences(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean absolute differences of two outputs (grey levels; mask probability)."""
    d = np.abs(got[portable.OUTPUT_IMAGES].astype(np.int16) - want[portable.OUTPUT_IMAGES].astype(np.int16))
    return {"deoccluded_mean_abs": float(d.mean()),
            "mask_mean_abs": float(np.abs(got[portable.OUTPUT_MASK] - want[portable.OUTPUT_MASK]).mean())}


def verify_tflite(path: str, reference_fn: Callable[..., Mapping[str, Any]], images: np.ndarray,
                  masks: np.ndarray | None, batch_sizes: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """Loads the file in LiteRT and compares it with the JAX model.

    float32 exports must be within `check.TOLERANCE` (1 grey level). Quantised
    ones are measured: max and mean differences per batch size, returned for
    the export's metadata; they fail only past QUANTIZED_MAX_MEAN_ABS.

    Args:
      path: the .tflite file.
      reference_fn: `reference_fn(images, masks)` running the JAX model.
      images: uint8 [N, R, R, 3] real aligned face crops (batches cycle through them).
      masks: uint8 [N, R, R, 1] for guided models, else None.
      batch_sizes: batch sizes to check (other than the model's batch: the
        runner's splitting and padding are checked too).

    Returns:
      {"tolerance", "batches": {size: differences incl. deoccluded_mean_abs,
      mask_mean_abs}, "quantize"}.

    Raises:
      check.ExportCheckError: some batch differs beyond the tolerance.
    """
    runner = TfliteRunner(path)
    got, want = _Recorder(runner), _Recorder(reference_fn)
    if runner.quantize == "none":
        result = check.verify_runner(got, want, images, masks, batch_sizes)
    else:
        # Any difference is allowed here; the mean is bounded below.
        loose = {"deoccluded_max_abs": 255, "deoccluded_frac_differing": 1.0, "mask_max_abs": 1.0}
        result = check.verify_runner(got, want, images, masks, batch_sizes, tolerance=loose)
        result["tolerance"] = {"deoccluded_mean_abs": QUANTIZED_MAX_MEAN_ABS}
    for b, g, w in zip(batch_sizes, got.outputs, want.outputs):
        result["batches"][str(b)].update(mean_differences(g, w))
        mean = result["batches"][str(b)]["deoccluded_mean_abs"]
        if runner.quantize != "none" and mean > QUANTIZED_MAX_MEAN_ABS:
            raise check.ExportCheckError(
                f"{runner.description} differs from the JAX model at batch size {b} by "
                f"{mean:.2f} grey levels on average (more than {QUANTIZED_MAX_MEAN_ABS}): "
                "the quantised conversion is broken")
    result["quantize"] = runner.quantize
    return result


def masked_psnr(fns: Mapping[str, Callable[..., Mapping[str, Any]]], occluded: np.ndarray,
                clean: np.ndarray, masks: np.ndarray, batch_size: int = 16) -> dict[str, float]:
    """Mean PSNR inside the true occluder mask of each model on the same pairs (as eval reports).

    Use it for the quality cost of a quantised export: `masked_psnr({"jax": ref,
    "tflite": runner}, ...)` on the test split; images with an empty mask do
    not count (`metrics.MetricAccumulator`'s rule).

    Args:
      fns: name -> `fn(images, masks)` returning {"deoccluded", ...} (runners,
        or a JAX predict with its variables closed over). Every fn is given the
        true masks; blind models ignore them.
      occluded, clean: uint8 [N, R, R, 3].
      masks: uint8 [N, R, R, 1], 0 / 255: the true occluder masks.
      batch_size: images per call.

    Returns:
      name -> mean masked PSNR in dB (images scaled to [0, 1]).
    """
    accumulators = {name: metrics.MetricAccumulator() for name in fns}
    for start in range(0, len(occluded), batch_size):
        x, c, m = (a[start:start + batch_size] for a in (occluded, clean, masks))
        unit_mask = m.astype(np.float32) / 255.0
        has_mask = metrics.has_mask(unit_mask)
        for name, fn in fns.items():
            pred = np.asarray(fn(x, m)[portable.OUTPUT_IMAGES], np.float32) / 255.0
            accumulators[name].add({
                "masked_psnr": metrics.masked_psnr(pred, c.astype(np.float32) / 255.0, unit_mask),
                "has_mask": has_mask})
    if not np.any(masks > 127):
        raise ValueError("masked_psnr: no image has a non-empty mask")
    return {name: acc.result()["masked_psnr"] for name, acc in accumulators.items()}
