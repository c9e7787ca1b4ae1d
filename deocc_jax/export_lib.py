"""TensorFlow SavedModel export of a deocc model, with a self-check.

Why orbax-export (0.0.8) rather than hand-written jax2tf: `orbax.export`
wraps `jax2tf.convert` with native serialization (the JAX function is embedded
as StableHLO in an `XlaCallModule` op), turns the parameters into
`tf.Variable`s, and writes the serving signature in one `ExportManager.save`.
With the pinned jax 0.10.2 / tensorflow 2.21 this works on CPU and lowers
for CUDA at the same time, so the same SavedModel serves on a GPU. The only TF
code we write is the input validation (`tf.debugging` asserts), which must
run in TF so that a bad request gets an `InvalidArgumentError` with a readable
message instead of reaching XLA.

The JAX function that is exported takes and returns raw pixels: pre- and
post-processing (uint8 -> float, the network, float -> uint8, mask sigmoid)
are part of it, so a client sends and receives uint8 images.

Layout: `output_dir/<version>/saved_model.pb` with a numeric version (the
checkpoint step) as TensorFlow Serving expects under `--model_base_path`, and
`output_dir/<version>/assets.extra/deocc_export.json` describing the model.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

SIGNATURE_KEY = "serving_default"
METADATA_FILE = os.path.join("assets.extra", "deocc_export.json")

# How closely the reloaded SavedModel must reproduce the JAX model. Both run
# the same StableHLO, but TensorFlow's and jaxlib's XLA builds may fuse and
# order float ops differently, so a value that lands on a .5 rounding boundary
# can come out one grey level apart.
TOLERANCE = {
    "deoccluded_max_abs": 1,        # uint8 levels, any pixel
    "deoccluded_frac_differing": 0.01,  # at most 1% of values may differ at all
    "mask_max_abs": 1e-4,           # float32 mask in [0, 1]
}

# (images, masks or None) -> {"deoccluded": uint8 [B,H,W,3], "mask": float32 [B,H,W,1]}.
PredictFn = Callable[[Any, Any, Any], Mapping[str, Any]]


class ExportCheckError(RuntimeError):
    """The reloaded SavedModel does not reproduce the JAX model."""


def _validated(images, masks, resolution: int):
    """TF graph: asserts on shape/size, returns inputs with static shapes.

    A request with the wrong rank, size or channel count fails here with an
    InvalidArgumentError that says what was expected; TF's signature binding
    already rejects the wrong dtype before this runs.
    """
    import tensorflow as tf

    r = resolution

    def check(x, name: str, channels: int, batch=None):
        # Every op here is valid for any rank, so a bad request reaches the
        # Assert (and its message) instead of failing in a shape op.
        shape = tf.shape(x)
        shape4 = tf.concat([shape, tf.fill([4], -1)], 0)[:4]
        ok = tf.logical_and(tf.equal(tf.size(shape), 4),
                            tf.reduce_all(tf.equal(shape4[1:], [r, r, channels])))
        ok = tf.logical_and(ok, shape4[0] > 0)
        if batch is not None:
            ok = tf.logical_and(ok, tf.equal(shape4[0], batch))
        what = f"{name} must be uint8 [batch, {r}, {r}, {channels}]"
        if batch is not None:
            what += " with the same batch as images"
        return tf.debugging.Assert(ok, [f"deocc: {what} (batch >= 1); got shape", shape], summarize=8)

    checks = [check(images, "images", 3)]
    out = {"images": images}
    if masks is not None:
        checks.append(check(masks, "masks", 1, batch=tf.shape(images)[0]))
        out["masks"] = masks
    with tf.control_dependencies(checks):
        out = {k: tf.identity(v) for k, v in out.items()}
    out["images"] = tf.ensure_shape(out["images"], [None, r, r, 3])
    if "masks" in out:
        out["masks"] = tf.ensure_shape(out["masks"], [None, r, r, 1])
    return out


def export_saved_model(predict_fn: PredictFn, variables: Any, output_dir: str, *,
                       resolution: int, guided: bool, version: int,
                       metadata: Mapping[str, Any] | None = None,
                       platforms: tuple[str, ...] = ("cpu", "cuda")) -> str:
    """Writes a SavedModel with a `serving_default` signature.

    Args:
      predict_fn: pure JAX `predict_fn(variables, images_uint8, masks_uint8 or
        None)` returning {"deoccluded": uint8, "mask": float32}.
      variables: the model's variables (a pytree of arrays).
      output_dir: the model base path; the model goes to `output_dir/version`.
      resolution: the square face-crop size the model was trained on.
      guided: whether the model takes the occluder mask as a second input.
      version: numeric version directory (TF Serving loads the highest).
      metadata: extra JSON-able facts stored in assets.extra/deocc_export.json.
      platforms: platforms the StableHLO is lowered for.

    Returns:
      The version directory that holds saved_model.pb.
    """
    import jax
    import tensorflow as tf
    from orbax.export import ExportManager, JaxModule, ServingConfig

    variables = jax.device_get(variables)

    def apply_fn(params, inputs):
        return dict(predict_fn(params, inputs["images"], inputs.get("masks")))

    poly = {"images": "(b, ...)"}
    specs = [tf.TensorSpec(None, tf.uint8, name="images")]
    if guided:
        poly["masks"] = "(b, ...)"
        specs.append(tf.TensorSpec(None, tf.uint8, name="masks"))

        def preprocess(images, masks):
            return _validated(images, masks, resolution)
    else:
        def preprocess(images):
            return _validated(images, None, resolution)

    module = JaxModule(variables, apply_fn, trainable=False, input_polymorphic_shape=poly,
                       jax2tf_kwargs={"native_serialization_platforms": tuple(platforms)})
    manager = ExportManager(module, [ServingConfig(
        SIGNATURE_KEY, input_signature=specs, tf_preprocessor=preprocess,
        tf_postprocessor=lambda out: {"deoccluded": out["deoccluded"], "mask": out["mask"]})])
    path = os.path.join(output_dir, str(int(version)))
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; pass another --version or remove it")
    manager.save(path)
    meta = {"resolution": int(resolution), "guided": bool(guided), "version": int(version),
            "signature": SIGNATURE_KEY, "platforms": list(platforms), **(metadata or {})}
    write_metadata(path, meta)
    return path


def write_metadata(model_dir: str, meta: Mapping[str, Any]) -> None:
    os.makedirs(os.path.join(model_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(model_dir, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


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
    raise FileNotFoundError(
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
        import tensorflow as tf

        self.path = resolve_version_dir(path)
        self.metadata = read_metadata(self.path)
        self.resolution = int(self.metadata["resolution"])
        self.guided = bool(self.metadata["guided"])
        self._loaded = tf.saved_model.load(self.path)
        self._fn = self._loaded.signatures[SIGNATURE_KEY]

    def __call__(self, images: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        import tensorflow as tf

        kwargs = {"images": tf.constant(images)}
        if self.guided:
            if masks is None:
                raise ValueError(f"the model in {self.path} is guided: it needs masks")
            kwargs["masks"] = tf.constant(masks)
        out = self._fn(**kwargs)
        return {k: v.numpy() for k, v in out.items()}


def compare_outputs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Differences between two model outputs, in the units of TOLERANCE."""
    g, w = np.asarray(got["deoccluded"]), np.asarray(want["deoccluded"])
    if g.shape != w.shape or g.dtype != np.uint8 or w.dtype != np.uint8:
        raise ExportCheckError(f"deoccluded: got {g.dtype}{g.shape}, want {w.dtype}{w.shape}")
    gm, wm = np.asarray(got["mask"]), np.asarray(want["mask"])
    if gm.shape != wm.shape or gm.dtype != np.float32:
        raise ExportCheckError(f"mask: got {gm.dtype}{gm.shape}, want {wm.dtype}{wm.shape}")
    diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
    return {"deoccluded_max_abs": int(diff.max()),
            "deoccluded_frac_differing": float((diff > 0).mean()),
            "mask_max_abs": float(np.abs(gm - wm).max())}


def within_tolerance(diffs: Mapping[str, float]) -> bool:
    return all(diffs[k] <= TOLERANCE[k] for k in TOLERANCE)


def verify_saved_model(path: str, reference_fn: Callable[..., Mapping[str, Any]],
                       images: np.ndarray, masks: np.ndarray | None,
                       batch_sizes: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """Reloads the SavedModel and compares it with the JAX model on `images`.

    Args:
      path: export base path or version directory.
      reference_fn: `reference_fn(images, masks)` running the JAX model.
      images: uint8 [N, R, R, 3] real face crops; batches are cut from them,
        cycling when N is smaller than a batch size.
      masks: uint8 [N, R, R, 1] for guided models, else None.
      batch_sizes: batch sizes to check (any batch size must work).

    Returns:
      {"tolerance": TOLERANCE, "batches": {size: diffs}}.

    Raises:
      ExportCheckError: some batch exceeds TOLERANCE.
    """
    runner = SavedModelRunner(path)
    results = {}
    for b in batch_sizes:
        idx = np.arange(b) % len(images)
        m = None if masks is None else masks[idx]
        diffs = compare_outputs(runner(images[idx], m),
                                {k: np.asarray(v) for k, v in reference_fn(images[idx], m).items()})
        results[str(b)] = diffs
        if not within_tolerance(diffs):
            raise ExportCheckError(
                f"SavedModel {runner.path} differs from the JAX model at batch size {b}: "
                f"{diffs} exceeds tolerance {TOLERANCE}")
    return {"tolerance": dict(TOLERANCE), "batches": results}


def check_masks(n: int, resolution: int) -> np.ndarray:
    """uint8 [n, R, R, 1] masks over the lower face (mouth and chin) of aligned crops.

    Used to exercise guided models in the self-check; any mask would do, this
    one looks like a face mask in the training template.
    """
    m = np.zeros((n, resolution, resolution, 1), np.uint8)
    r = resolution
    m[:, int(0.58 * r):int(0.88 * r), int(0.25 * r):int(0.75 * r)] = 255
    return m


def export_workdir(workdir: str, output_dir: str, *, checkpoint: str | int = "latest",
                   check_images: list[str] | None = None, overwrite: bool = False,
                   landmarker_model: str | None = None,
                   platforms: tuple[str, ...] = ("cpu", "cuda"),
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Exports a training run's checkpoint and checks the SavedModel against JAX.

    Args:
      workdir: training workdir.
      output_dir: model base path; the model goes to `output_dir/<step>`.
      checkpoint: "latest", "best" or a step.
      check_images: real photos for the self-check (default: the embedded
        sample portraits); each one's largest face is aligned like at inference.
      overwrite: replace an existing export of the same step.
      landmarker_model: explicit face_landmarker.task path.
      platforms: platforms to lower for.
      log: progress output.

    Returns:
      The metadata dict written beside the model (includes the check results).

    Raises:
      ExportCheckError: the reloaded model differs from JAX beyond TOLERANCE;
        the export is then renamed to `<step>.failed_check` so that TF Serving
        never loads it.
    """
    import functools
    import shutil

    from deocc_jax import inference, infer_lib, sample_photos

    config, variables = inference.load_model(workdir, checkpoint)
    step = infer_lib.checkpoint_step(workdir, checkpoint)
    resolution = infer_lib.model_resolution(config)
    guided = infer_lib.model_is_guided(config)
    target = os.path.join(output_dir, str(step))
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        shutil.rmtree(target)
    predict = functools.partial(inference.predict, config)
    meta = {"workdir": os.path.abspath(workdir), "checkpoint": str(checkpoint), "step": step,
            "mode": config.model.mode, "config": json.loads(config.to_json_best_effort())}
    path = export_saved_model(predict, variables, output_dir, resolution=resolution,
                              guided=guided, version=step, metadata=meta, platforms=platforms)
    log(f"wrote SavedModel {path} ({config.model.mode}, {resolution} px); checking it...")

    paths = check_images or sample_photos.face_photo_paths()
    images = sample_photos.aligned_faces(paths, resolution, landmarker_model)
    masks = check_masks(len(images), resolution) if guided else None
    import jax
    jitted = jax.jit(predict)
    try:
        check = verify_saved_model(path, lambda x, m: jitted(variables, x, m), images, masks)
    except ExportCheckError:
        failed = path + ".failed_check"
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(path, failed)
        raise
    check["images"] = [os.path.abspath(p) for p in paths]
    meta = {**read_metadata(path), "self_check": check}
    write_metadata(path, meta)
    log(f"self-check passed on {len(paths)} real photo(s), batch sizes "
        f"{sorted(check['batches'], key=int)}: {check['batches']} within {TOLERANCE}")
    return meta


def serving_help(output_dir: str, resolution: int, guided: bool) -> str:
    """How to inspect and serve an export (printed by the export binary)."""
    base = os.path.abspath(output_dir)
    inputs = '"images": [[[[0, 0, 0], ...]]]' + (', "masks": [[[[0], ...]]]' if guided else "")
    return (
        f"inspect:  saved_model_cli show --dir {resolve_version_dir(base)} --tag_set serve "
        f"--signature_def {SIGNATURE_KEY}\n"
        f"serve:    tensorflow_model_server --rest_api_port=8501 --model_name=deocc "
        f"--model_base_path={base}\n"
        f"request:  POST http://localhost:8501/v1/models/deocc:predict with JSON "
        f'{{"signature_name": "{SIGNATURE_KEY}", "inputs": {{{inputs}}}}} '
        f"(uint8 [batch, {resolution}, {resolution}, 3] aligned faces)")
