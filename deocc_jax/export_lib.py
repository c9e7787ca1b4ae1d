"""Exports a trained model for serving, and checks the export before reporting it.

`export_model` loads a workdir's checkpoint or a pretrained folder, writes the
SavedModel (`exporters.saved_model`, what TF Serving loads), reloads it in
TensorFlow and compares it with JAX on real aligned face photos
(`exporters.check`).

Nothing unchecked ever sits under the final name `output_dir/<step>` that TF
Serving loads (issue 10 #2): the export is built in a hidden sibling
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

from deocc_jax import errors, loading, models, sample_photos
from deocc_jax.exporters import check as export_check
from deocc_jax.exporters import saved_model
from deocc_jax.io import atomic, saved_model_runner

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
        raise errors.OutputExistsError(f"{target}: exists; pass --overwrite to replace it")
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


def export_model(model_path: str, output_dir: str, *, checkpoint: str | int = "latest",
                 check_images: list[str] | None = None, overwrite: bool = False,
                 landmarker_model: str | None = None,
                 platforms: tuple[str, ...] = ("cpu", "cuda"), param_dtype: str = "float32",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Exports a model as a SavedModel and checks it against JAX.

    Args:
      model_path: training workdir or pretrained folder.
      output_dir: model base path; the model goes to `output_dir/<step>`.
      checkpoint: for workdirs: "latest", "best" or a step.
      check_images: real photos for the self-check (default: the embedded
        sample portraits); each one's largest face is aligned like at inference.
      overwrite: replace an existing export of the same step.
      landmarker_model: explicit face_landmarker.task path.
      platforms: platforms to lower for.
      param_dtype: "float32", or "float16" to store the parameters at half the size
        (they are cast to float32 inside the graph; the self-check compares with JAX
        running the same rounded parameters, and `evaluate` measures what the
        rounding costs).
      log: progress output.

    Returns:
      The metadata dict written beside the model (includes the check results).

    Raises:
      errors.OutputExistsError: `output_dir/<step>` exists and not `overwrite`.
      export_check.ExportCheckError: the reloaded model differs from JAX beyond
        the tolerance; the new export is then at `<step>.failed_check` and an
        existing `<step>` is left as it was.
    """
    if param_dtype not in ("float32", "float16"):
        raise errors.InvalidInputError(f"--param_dtype={param_dtype}: float32 or float16")
    model = loading.load_model(model_path, checkpoint)
    config, variables, step = model.config, model.variables, model.step
    resolution, guided = int(config.resolution), models.is_guided(config)
    target = os.path.join(output_dir, str(step))
    if os.path.lexists(target) and not overwrite:  # before any work; checked again at the end
        raise errors.OutputExistsError(f"{target}: exists; pass --overwrite to replace it")
    variables = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), variables)

    def predict(params, images, masks=None):
        params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
        return models.predict(config, params, images, masks)

    meta = {"model": os.path.abspath(model_path), "kind": model.kind, "checkpoint": str(checkpoint),
            "step": step, "mode": config.model.mode, "param_dtype": param_dtype,
            "config": json.loads(config.to_json_best_effort())}
    paths = check_images or sample_photos.face_photo_paths()
    images = sample_photos.aligned_faces(paths, resolution, landmarker_model)
    masks = export_check.check_masks(len(images), resolution) if guided else None
    jitted = jax.jit(predict)

    def build(staging: str) -> str:
        path = saved_model.export_saved_model(predict, variables, staging, resolution=resolution,
                                              guided=guided, version=step, metadata=meta,
                                              platforms=platforms)
        log(f"wrote SavedModel {path} ({config.model.mode}, {resolution} px); checking it...")
        return path

    def check(path: str) -> dict[str, Any]:
        result = export_check.verify_runner(saved_model_runner.SavedModelRunner(path),
                                            lambda x, m: jitted(variables, x, m), images, masks)
        result["images"] = [os.path.abspath(p) for p in paths]
        # Recorded inside the export before it is moved into place.
        full = {**saved_model_runner.read_metadata(path), "self_check": result}
        saved_model_runner.write_metadata(path, full)
        return full

    try:
        meta = _publish_checked(target, build, check, overwrite=overwrite)
    except export_check.ExportCheckError as e:
        log(f"self-check FAILED: the export is kept at {target + FAILED_SUFFIX} for inspection"
            + (f"; {target} was left as it was" if os.path.exists(target) else "") + f" ({e})")
        raise
    check_result = meta["self_check"]
    log(f"self-check passed on {len(paths)} real photo(s), batch sizes "
        f"{sorted(check_result['batches'], key=int)}: {check_result['batches']} within "
        f"{check_result['tolerance']}; published {target}")
    return meta


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
