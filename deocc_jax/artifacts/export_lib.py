"""Exports a trained model for serving, and checks every export before reporting it.

`export_model` loads a workdir's checkpoint or a pretrained folder and writes
any of: the SavedModel (`exporters.saved_model`, what TF Serving loads), an
ONNX file (`exporters.onnx`, onnxruntime and the web page) and LiteRT files
(`exporters.tflite`: float32, float16, dynamic-range int8). Each is reloaded in
its own runtime and compared with JAX on real aligned face photos
(`exporters.check`); quantised variants also record what they cost in masked
PSNR on the test split.

Nothing unchecked ever sits under the final name `output_dir/<step>` that TF
Serving loads: the export is built in a hidden sibling
`output_dir/.<step>.partial-PID-XXXX/` (TF Serving only loads numeric folders),
checked there, and only then moved into place (`_publish_checked`); with
`overwrite` the old version is swapped out in the same step, so it stays
served until the new one has passed. An export that fails the check goes to
`<step>.failed_check` and leaves the old version as it was; a SIGKILL at any
moment leaves the old version (or nothing) under the final name, plus at worst
a hidden leftover that the next export into the folder removes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from deocc_jax import errors, models
from deocc_jax.artifacts import loading
from deocc_jax.faces import sample_photos
from deocc_jax.data import features, input_pipeline
from deocc_jax.artifacts.exporters import check as export_check
from deocc_jax.artifacts.exporters import onnx, saved_model, tflite
from deocc_jax.io import atomic, saved_model_runner, tflite_runner

FAILED_SUFFIX = ".failed_check"


def _publish_checked(target: str, build: Callable[[str], str], check: Callable[[str], Any], *,
                     overwrite: bool) -> Any:
    """Builds an export in a hidden sibling of `target`, checks it, then moves it into place.

    Works for folders (SavedModel) and single files (ONNX, LiteRT) alike.

    Args:
      target: the final path (e.g. `base/<step>`, or `model.onnx`).
      build: `build(staging_folder) -> path` writes the export inside the
        (empty, hidden) staging folder and returns where.
      check: `check(path)` verifies it there; raises
        `export_check.ExportCheckError` when it does not reproduce the model.
      overwrite: replace an existing `target` (only once the new one passed).

    Returns:
      What `check` returned.

    Raises:
      errors.OutputExistsError: `target` exists and not `overwrite`.
      export_check.ExportCheckError: the export failed its check; it was moved
        to `target + ".failed_check"` and `target` is untouched.
    """
    if os.path.lexists(target) and not overwrite:
        raise errors.OutputExistsError(atomic.exists_message(target))
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    atomic.remove_stale_partials(parent)  # staging folders of exports that were killed
    staging = atomic.temp_sibling(target)
    os.makedirs(staging)
    try:
        built = build(staging)
        try:
            result = check(built)
        except export_check.ExportCheckError:
            atomic.publish(built, target + FAILED_SUFFIX, replace=True)
            raise
        atomic.publish(built, target, replace=overwrite)
        return result
    finally:
        atomic.remove_quietly(staging)


FORMATS = ("saved_model", "onnx", "tflite")
# Examples of the test split on which a quantised export's quality cost is measured.
QUANTIZED_EVAL_EXAMPLES = 256


def portable_path(output_dir: str, step: int, fmt: str, quantize: str = "none") -> str:
    """Where an ONNX / LiteRT export goes: `output_dir/deocc-<step>[.<quantize>].<fmt>`.

    Beside the SavedModel's numeric version folders, which TF Serving loads; it
    ignores these files.
    """
    suffix = "" if quantize == "none" else f".{quantize}"
    return os.path.join(output_dir, f"deocc-{step}{suffix}.{fmt}")


def _test_pairs(data_dir: str, resolution: int) -> dict[str, np.ndarray]:
    """Occluded / clean / mask of QUANTIZED_EVAL_EXAMPLES test pairs spread over the split."""
    info = features.read_dataset_info(data_dir)
    if int(info["resolution"]) != resolution:
        raise errors.InvalidInputError(f"--data_dir={data_dir}: {info['resolution']} px, the model "
                                       f"works at {resolution} px")
    n = input_pipeline.split_size(data_dir, "test")
    rows = input_pipeline.read_examples(
        data_dir, "test", list(input_pipeline.subset_positions(n, QUANTIZED_EVAL_EXAMPLES)))
    return {k: np.stack([r[k] for r in rows]) for k in ("occluded", "clean", "mask")}


def export_model(model_path: str, output_dir: str, *, checkpoint: str | int = "latest",
                 formats: tuple[str, ...] = ("saved_model",),
                 quantize: tuple[str, ...] = ("none",), data_dir: str | None = None,
                 check_images: list[str] | None = None, overwrite: bool = False,
                 landmarker_model: str | None = None,
                 platforms: tuple[str, ...] = ("cpu", "cuda"), param_dtype: str = "float32",
                 stop: errors.StopSignals | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Exports a model in each of `formats`, checking every export against JAX first.

    Args:
      model_path: training workdir or pretrained folder.
      output_dir: model base path: the SavedModel goes to `output_dir/<step>`,
        ONNX and LiteRT files beside it (`portable_path`).
      checkpoint: for workdirs: "latest", "best" or a step.
      formats: any of FORMATS.
      quantize: LiteRT variants: any of "none" (float32), "float16", "dynamic_int8".
      data_dir: a prepared dataset whose test split measures what each quantised
        LiteRT variant costs in masked PSNR (default: the run's own data_dir).
      check_images: real photos for the self-checks (default: the embedded
        sample portraits); each one's largest face is aligned like at inference.
      overwrite: replace existing exports of the same step.
      landmarker_model: explicit face_landmarker.task path.
      platforms: platforms the SavedModel is lowered for.
      param_dtype: "float32", or "float16" to store the SavedModel's parameters at half
        the size (cast to float32 inside the graph; every check compares with JAX
        running the same rounded parameters).
      stop: a SIGINT/SIGTERM request (`errors.StopSignals`), checked between
        exports and once an export is built, never inside a conversion: the
        exports published so far stay, the unfinished one leaves nothing.
      log: progress output.

    Returns:
      {"step", "resolution", "guided", "exports": {name: metadata incl. "path" and
      "self_check"}} (names: "saved_model", "onnx", "tflite[.<quantize>]").

    Raises:
      atomic.NotWritableError: `output_dir` is a file, or cannot be created or
        written (before any work).
      errors.OutputExistsError: an export of this step exists and not `overwrite`.
      export_check.ExportCheckError: a reloaded export differs from JAX beyond
        the tolerance; it is then kept at `<path>.failed_check` and an existing
        export under the final name is left as it was.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise errors.InvalidInputError(f"--format={','.join(formats)}: choose from {FORMATS}")
    bad_q = sorted(set(quantize) - set(tflite.QUANTIZE_MODES))
    if bad_q or not quantize:
        raise errors.InvalidInputError(f"--quantize={','.join(quantize)}: choose from "
                                       f"{tflite.QUANTIZE_MODES}")
    if param_dtype not in ("float32", "float16"):
        raise errors.InvalidInputError(f"--param_dtype={param_dtype}: float32 or float16")
    # Before the model is loaded or anything converted: a file in the way or a read-only
    # folder would otherwise surface only after the conversion.
    atomic.require_writable_dir(output_dir, flag="--output_dir", create=False)
    model = loading.load_model(model_path, checkpoint)
    config, step = model.config, model.step
    resolution, guided = int(config.resolution), models.is_guided(config)
    targets = {}
    if "saved_model" in formats:
        targets["saved_model"] = os.path.join(output_dir, str(step))
    if "onnx" in formats:
        targets["onnx"] = portable_path(output_dir, step, "onnx")
    if "tflite" in formats:
        for q in quantize:
            targets["tflite" if q == "none" else f"tflite.{q}"] = portable_path(
                output_dir, step, "tflite", q)
    for target in targets.values():  # before any work; checked again when publishing
        if os.path.lexists(target) and not overwrite:
            raise errors.OutputExistsError(atomic.exists_message(target))
    variables = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), model.variables)

    def predict_with(cfg):
        def predict(params, images, masks=None):
            params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
            return models.predict(cfg, params, images, masks)
        return predict

    predict = predict_with(config)
    # ONNX and LiteRT get XLA convolutions (CONV ops in their graphs, about 2x faster in
    # onnxruntime than the im2col matmuls); the parameters are the same.
    portable_config = config.copy_and_resolve_references()
    portable_config.model.conv_impl = "xla_conv"
    meta = {"model": os.path.abspath(model_path), "kind": model.kind, "checkpoint": str(checkpoint),
            "step": step, "mode": config.model.mode, "param_dtype": param_dtype,
            "config": json.loads(config.to_json_best_effort())}
    paths = check_images or sample_photos.face_photo_paths()
    images = sample_photos.aligned_faces(paths, resolution, landmarker_model)
    masks = export_check.check_masks(len(images), resolution) if guided else None
    jitted = jax.jit(predict)

    def reference(x, m):
        return jitted(variables, x, m)

    exports: dict[str, Any] = {}

    def stop_here(target: str) -> None:
        if stop is not None and stop.requested:
            done = ", ".join(e["path"] for e in exports.values()) or "none"
            raise stop.interrupted(f"exports published: {done}; {target} was not finished, "
                                   "and nothing is left under its name")

    for name, target in targets.items():
        fmt, _, q = name.partition(".")
        q = q or "none"
        stop_here(target)

        def build(staging: str, fmt=fmt, q=q) -> str:
            if fmt == "saved_model":
                path = saved_model.export_saved_model(
                    predict, variables, staging, resolution=resolution, guided=guided,
                    version=step, metadata=meta, platforms=platforms)
            elif fmt == "onnx":
                path = onnx.export_onnx(predict_with(portable_config), variables,
                                        os.path.join(staging, os.path.basename(target)),
                                        resolution=resolution, guided=guided, metadata=meta)
            else:
                path = tflite.export_tflite(predict_with(portable_config), variables,
                                            os.path.join(staging, os.path.basename(target)),
                                            resolution=resolution, guided=guided, quantize=q,
                                            metadata=meta)
            stop_here(target)  # an unchecked export is never kept; its staging folder goes
            log(f"wrote {fmt}{'' if q == 'none' else ' ' + q} export {target}; checking it...")
            return path

        def check(path: str, fmt=fmt, q=q) -> dict[str, Any]:
            if fmt == "saved_model":
                result = export_check.verify_runner(saved_model_runner.SavedModelRunner(path),
                                                    reference, images, masks)
                read, write = saved_model_runner.read_metadata, saved_model_runner.write_metadata
            elif fmt == "onnx":
                result = onnx.verify_onnx(path, reference, images, masks)
                read, write = onnx.read_metadata, onnx.write_metadata
            else:
                result = tflite.verify_tflite(path, reference, images, masks)
                read, write = tflite.read_metadata, tflite.write_metadata
                if q != "none":
                    result["test_masked_psnr"] = _quantization_cost(path, reference, data_dir or
                                                                    config.get("data_dir"), log)
            result["images"] = [os.path.abspath(p) for p in paths]
            # Recorded inside the export before it is moved into place.
            full = {**read(path), "self_check": result}
            write(path, full)
            return full

        try:
            exports[name] = _publish_checked(target, build, check, overwrite=overwrite)
        except export_check.ExportCheckError as e:
            log(f"self-check FAILED: the export is kept at {target + FAILED_SUFFIX} for inspection"
                + (f"; {target} was left as it was" if os.path.exists(target) else "") + f" ({e})")
            raise
        exports[name]["path"] = target
        result = exports[name]["self_check"]
        log(f"{name}: self-check passed on {len(paths)} real photo(s) at batch sizes "
            f"{sorted(result['batches'], key=int)}: {result['batches']} (tolerance "
            f"{result['tolerance']}); published {target}")
        if "test_masked_psnr" in result:
            log(f"{name}: masked PSNR on the test split {result['test_masked_psnr']}")
    return {"step": step, "resolution": resolution, "guided": guided, "exports": exports}


def _quantization_cost(path: str, reference: Callable, data_dir: str | None,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """Masked PSNR of a quantised LiteRT export and of JAX on the same test pairs."""
    if not data_dir or not os.path.isdir(data_dir):
        log(f"{path}: masked-PSNR cost of quantisation NOT measured: no test split (pass "
            "--data_dir=DATA)")
        return {"measured": False, "reason": "no --data_dir with a test split"}
    pairs = _test_pairs(data_dir, tflite_runner.TfliteRunner(path).resolution)
    got = tflite.masked_psnr({"jax": reference, "export": tflite_runner.TfliteRunner(path)},
                             pairs["occluded"], pairs["clean"], pairs["mask"])
    return {"measured": True, "data_dir": os.path.abspath(data_dir), "examples": len(pairs["clean"]),
            "jax_db": got["jax"], "export_db": got["export"], "change_db": got["export"] - got["jax"]}


def serving_help(output_dir: str, resolution: int, guided: bool) -> str:
    """How to inspect and serve an export (printed by the export binary)."""
    base = os.path.abspath(output_dir)
    key = saved_model_runner.SIGNATURE_KEY
    inputs = '"images": [[[[0, 0, 0], ...]]]' + (', "masks": [[[[0], ...]]]' if guided else "")
    return (
        f"inspect:  saved_model_cli show --dir {saved_model_runner.resolve_version_dir(base)} "
        f"--tag_set serve --signature_def {key}\n"
        f"serve:    tensorflow_model_server --rest_api_port=8501 --model_name=deocc "
        f"--model_base_path={base}\n"
        f"request:  POST http://localhost:8501/v1/models/deocc:predict with JSON "
        f'{{"signature_name": "{key}", "inputs": {{{inputs}}}}} '
        f"(uint8 [batch, {resolution}, {resolution}, 3] aligned faces)")
