"""TensorFlow SavedModel export of a pure JAX predict function.

Why orbax-export (0.0.8) rather than hand-written jax2tf: `orbax.export`
wraps `jax2tf.convert` with native serialization (the JAX function is embedded
as StableHLO in an `XlaCallModule` op), turns the parameters into
`tf.Variable`s, and writes the serving signature in one `ExportManager.save`.
With the pinned jax 0.10.2 / tensorflow 2.21 this works on CPU and lowers
for CUDA at the same time, so the same SavedModel serves on a GPU. The only TF
code we write is the input validation (`tf.debugging` asserts), which must
run in TF so that a bad request gets an `InvalidArgumentError` with a readable
message instead of reaching XLA.

The exported function takes and returns raw pixels (`models.predict`): a
client sends and receives uint8 images.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax

from deocc_jax import errors
from deocc_jax.io.saved_model_runner import SIGNATURE_KEY, write_metadata

# (variables, images, masks or None) -> {"deoccluded": uint8 [B,H,W,3], "mask": float32 [B,H,W,1]}.
PredictFn = Callable[[Any, Any, Any], Mapping[str, Any]]


def _validated(images, masks, resolution: int):
    """TF graph: asserts on shape/size, returns inputs with static shapes.

    A request with the wrong rank, size or channel count fails here with an
    InvalidArgumentError that says what was expected; TF's signature binding
    already rejects the wrong dtype before this runs.
    """
    import tensorflow as tf  # TF only when exporting: seconds to import

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
    # TF and orbax-export only when exporting: seconds to import.
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
    if os.path.lexists(path):
        raise errors.OutputExistsError(f"{path}: exists; pass another version or remove it")
    manager.save(path)
    meta = {"resolution": int(resolution), "guided": bool(guided), "version": int(version),
            "signature": SIGNATURE_KEY, "platforms": list(platforms), **(metadata or {})}
    write_metadata(path, meta)
    return path


