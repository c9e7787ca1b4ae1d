"""Exports a trained model for serving, and checks the export before reporting it.

`export_model` loads a workdir's checkpoint or a pretrained folder, writes the
SavedModel (`exporters.saved_model`, what TF Serving loads), reloads it in
TensorFlow and compares it with JAX on real aligned face photos
(`exporters.check`). An export that fails the check is renamed
`<step>.failed_check` so that TF Serving never loads it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp

from deocc_jax import errors, loading, models, sample_photos
from deocc_jax.exporters import check as export_check
from deocc_jax.exporters import saved_model
from deocc_jax.io import saved_model_runner


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
      export_check.ExportCheckError: the reloaded model differs from JAX beyond
        the tolerance; the export is then renamed to `<step>.failed_check`.
    """
    model = loading.load_model(model_path, checkpoint)
    config, variables, step = model.config, model.variables, model.step
    resolution, guided = int(config.resolution), models.is_guided(config)
    target = os.path.join(output_dir, str(step))
    if os.path.exists(target):
        if not overwrite:
            raise errors.OutputExistsError(f"{target}: exists; pass --overwrite to replace it")
        shutil.rmtree(target)
    if param_dtype not in ("float32", "float16"):
        raise errors.InvalidInputError(f"--param_dtype={param_dtype}: float32 or float16")
    variables = jax.tree.map(lambda x: jnp.asarray(x, param_dtype), variables)

    def predict(params, images, masks=None):
        params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
        return models.predict(config, params, images, masks)

    meta = {"model": os.path.abspath(model_path), "kind": model.kind, "checkpoint": str(checkpoint),
            "step": step, "mode": config.model.mode, "param_dtype": param_dtype,
            "config": json.loads(config.to_json_best_effort())}
    path = saved_model.export_saved_model(predict, variables, output_dir, resolution=resolution,
                                          guided=guided, version=step, metadata=meta,
                                          platforms=platforms)
    log(f"wrote SavedModel {path} ({config.model.mode}, {resolution} px); checking it...")

    paths = check_images or sample_photos.face_photo_paths()
    images = sample_photos.aligned_faces(paths, resolution, landmarker_model)
    masks = export_check.check_masks(len(images), resolution) if guided else None
    jitted = jax.jit(predict)
    try:
        check = export_check.verify_runner(saved_model_runner.SavedModelRunner(path),
                                           lambda x, m: jitted(variables, x, m), images, masks)
    except export_check.ExportCheckError:
        failed = path + ".failed_check"
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(path, failed)
        raise
    check["images"] = [os.path.abspath(p) for p in paths]
    meta = {**saved_model_runner.read_metadata(path), "self_check": check}
    saved_model_runner.write_metadata(path, meta)
    log(f"self-check passed on {len(paths)} real photo(s), batch sizes "
        f"{sorted(check['batches'], key=int)}: {check['batches']} within {check['tolerance']}")
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
