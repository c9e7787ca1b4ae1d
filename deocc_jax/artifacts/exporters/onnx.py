"""ONNX export of a pure JAX predict function (jax2onnx), and its check in onnxruntime.

Why jax2onnx (0.17.1): it converts the jaxpr of the same `models.predict` the
SavedModel serves, primitive by primitive, to standard ONNX operators, with a
symbolic batch dimension; no TensorFlow or PyTorch round trip, so what runs in
onnxruntime is the JAX computation itself, pre- and post-processing included
(uint8 in, uint8 and float32 out). It is installed with `--no-deps`
(requirements-nodeps.txt): its metadata pins orbax-checkpoint<0.11.37 (deocc
pins 0.12.8), and lists equinox, dm-pix, netron and huggingface-hub for
plugins and tools we do not use; the converter itself imports none of them.

The graph (opset `OPSET`):
  inputs   images  uint8 [batch, R, R, 3]       (guided models also: masks uint8 [batch, R, R, 1])
  outputs  deoccluded uint8 [batch, R, R, 3], mask float32 [batch, R, R, 1]
and `metadata_props["deocc_export"]` holds the deocc metadata as JSON
(`io.portable`), so `io.onnx_runner.OnnxRunner` needs no deocc files.

Convert a model with `conv_impl="xla_conv"`: same parameters, but each
convolution becomes one ONNX Conv; the CPU im2col form ("matmul") becomes
slices, concats and Gemms that onnxruntime runs ~2x slower at the same size.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from deocc_jax.artifacts.exporters import check
from deocc_jax.io import atomic, portable
from deocc_jax.io.onnx_runner import OnnxRunner

# The oldest opset jax2onnx 0.17.1 writes valid graphs for (at 17 it emits ReduceMean with
# `axes` as an input, an opset-18 form): runs on onnxruntime >= 1.14 and onnxruntime-web, passes
# onnx.checker's full check, and gives the same graph and speed as its default, 23.
OPSET = 18
BATCH_DIM = "batch"

# (variables, images, masks or None) -> {"deoccluded": uint8 [B,H,W,3], "mask": float32 [B,H,W,1]}.
PredictFn = Callable[[Any, Any, Any], Mapping[str, Any]]


def converter_info() -> dict[str, str]:
    """Versions of the packages that write the file (stored in its metadata)."""
    return {name: importlib.metadata.version(name) for name in ("jax2onnx", "onnx", "jax")}


@contextlib.contextmanager
def _nearest_resize_as_repeat() -> Iterator[None]:
    """While jax2onnx traces: `jax.image.resize(x, s, "nearest")` by an integer factor as repeats.

    jax2onnx 0.17.1 replaces `jax.image.resize` during tracing with its own
    primitive whose shape rule needs every dimension to be a constant, so
    `layers.ResizeConv` (nearest x2 of a [batch, h, w, c] map) fails with a
    symbolic batch. Nearest resizing by an integer factor k picks source pixel
    floor((i + 0.5) / k) = i // k, which is exactly `jnp.repeat(x, k, axis)`,
    and repeats convert to standard ONNX ops; the export's self-check compares
    the result with JAX anyway. Other resizes go to jax2onnx unchanged. Entered
    inside the traced function, i.e. after jax2onnx patched `jax.image.resize`,
    and undone before jax2onnx restores it.
    """
    patched = jax.image.resize

    def factor(src, dst) -> int | None:
        if isinstance(src, int) and isinstance(dst, int):
            return dst // src if src and dst % src == 0 else None
        # A symbolic dimension (the batch) may only stay as it is; `==` on the same
        # symbolic dimension is decidable (True), on different ones it is False.
        return 1 if src is dst or bool(src == dst) else None

    def resize(image, shape, method, antialias=True, precision=jax.lax.Precision.HIGHEST):
        name = str(getattr(method, "name", method)).lower()
        factors = [factor(s, d) for s, d in zip(image.shape, shape)]
        if name == "nearest" and len(shape) == image.ndim and None not in factors:
            for axis, k in enumerate(factors):
                if k > 1:
                    image = jnp.repeat(image, k, axis=axis)
            return image
        return patched(image, shape, method, antialias=antialias, precision=precision)

    jax.image.resize = resize
    try:
        yield
    finally:
        jax.image.resize = patched


@contextlib.contextmanager
def _quiet_converter_logs() -> Iterator[None]:
    """Mutes two loggers that warn about things that do not affect the file.

    jax2onnx logs a traceback for each plugin of a library we do not install
    (equinox, dm-pix: see the module docstring); onnx_ir warns for every
    intermediate value whose type it leaves out of the graph's value_info.
    """
    loggers = [logging.getLogger(n) for n in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(predict_fn: PredictFn, variables: Any, path: str, *, resolution: int,
                guided: bool, metadata: Mapping[str, Any] | None = None,
                opset: int = OPSET) -> str:
    """Writes one self-contained .onnx file (graph, weights, deocc metadata).

    Args:
      predict_fn: pure JAX `predict_fn(variables, images_uint8, masks_uint8 or
        None)` returning {"deoccluded": uint8, "mask": float32}, e.g.
        `functools.partial(models.predict, config)` (see the module docstring
        on `conv_impl`).
      variables: the model's variables (a pytree of arrays); they become the
        graph's initializers.
      path: the .onnx file to write (it appears complete or not at all; an
        existing file is refused, see `io.atomic`).
      resolution: the square face-crop size R the model takes.
      guided: whether the model takes the occluder mask as a second input.
      metadata: extra JSON-able facts (mode, step, config...) stored with the
        file's own (format, resolution, guided, tensors, opset, converter).
      opset: ONNX opset of the default domain.

    Returns:
      `path`.
    """
    from jax2onnx import to_onnx  # converter only when exporting
    import onnx

    variables = jax.device_get(variables)
    r = int(resolution)

    def fn(*inputs):
        images, masks = inputs[0], (inputs[1] if guided else None)
        with _nearest_resize_as_repeat():
            out = predict_fn(variables, images, masks)
        return out[portable.OUTPUT_IMAGES], out[portable.OUTPUT_MASK]

    specs = [jax.ShapeDtypeStruct((BATCH_DIM, r, r, 3), jnp.uint8)]
    names = [portable.INPUT_IMAGES]
    if guided:
        specs.append(jax.ShapeDtypeStruct((BATCH_DIM, r, r, 1), jnp.uint8))
        names.append(portable.INPUT_MASKS)
    with _quiet_converter_logs():
        model = to_onnx(fn, specs, model_name="deocc", opset=int(opset), input_names=names,
                        output_names=[portable.OUTPUT_IMAGES, portable.OUTPUT_MASK],
                        return_mode="proto")
    meta = {"format": "onnx", "resolution": r, "guided": bool(guided), "opset": int(opset),
            "converter": converter_info(),
            "inputs": {n: f"uint8 [{BATCH_DIM}, {r}, {r}, {3 if n == portable.INPUT_IMAGES else 1}]"
                       for n in names},
            "outputs": {portable.OUTPUT_IMAGES: f"uint8 [{BATCH_DIM}, {r}, {r}, 3]",
                        portable.OUTPUT_MASK: f"float32 [{BATCH_DIM}, {r}, {r}, 1] in [0, 1]"},
            **(metadata or {})}
    _set_metadata(model, meta)
    with atomic.atomic_file(path) as f:
        onnx.save_model(model, f)  # one file: the generator's weights are far below protobuf's 2 GB
    return path


def _set_metadata(model, meta: Mapping[str, Any]) -> None:
    props = [p for p in model.metadata_props if p.key != portable.METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = portable.METADATA_KEY, json.dumps(meta, sort_keys=True)


def read_metadata(path: str) -> dict[str, Any]:
    """The deocc metadata of an .onnx file (without loading its weights)."""
    import onnx  # the exporter's dependency; runners read metadata with onnxruntime

    model = onnx.load_model(path, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return portable.parse_metadata(path, props.get(portable.METADATA_KEY), "ONNX model")


def write_metadata(path: str, meta: Mapping[str, Any]) -> None:
    """Replaces the deocc metadata of an .onnx file (e.g. to add the self-check results)."""
    import onnx  # the exporter's dependency; runners read metadata with onnxruntime

    model = onnx.load_model(path)
    _set_metadata(model, meta)
    with atomic.atomic_file(path, overwrite=True) as f:  # the same file, with new metadata
        onnx.save_model(model, f)


def verify_onnx(path: str, reference_fn: Callable[..., Mapping[str, Any]], images: np.ndarray,
                masks: np.ndarray | None, batch_sizes: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """Loads the file in onnxruntime and compares it with the JAX model (`check.TOLERANCE`).

    Args:
      path: the .onnx file.
      reference_fn: `reference_fn(images, masks)` running the JAX model.
      images: uint8 [N, R, R, 3] real aligned face crops (batches cycle through them).
      masks: uint8 [N, R, R, 1] for guided models, else None.
      batch_sizes: batch sizes to check; sizes other than the conversion's prove
        the batch is dynamic.

    Returns:
      {"tolerance", "batches": {size: differences}} (`check.verify_runner`).

    Raises:
      check.ExportCheckError: some batch differs beyond the tolerance.
    """
    return check.verify_runner(OnnxRunner(path), reference_fn, images, masks, batch_sizes)

