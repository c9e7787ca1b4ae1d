"""Loading a trained generator and running it: the one API eval, export and infer use.

    config, variables = load_model("workdir", checkpoint="best")
    predict_fn = jax.jit(functools.partial(predict, config))
    out = predict_fn(variables, images_uint8)          # blind mode
    out["deoccluded"]  # uint8 [B, H, W, 3]
    out["mask"]        # float32 [B, H, W, 1] in [0, 1]

Pre- and post-processing are in JAX so an exported function (orbax-export /
SavedModel) takes and returns the same uint8 tensors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from deocc_jax import checkpointing, models


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Fresh generator variables {"params", "batch_stats"?} for `config`."""
    generator = models.build_generator(config)
    channels = 4 if config.model.mode == "guided" else 3
    x = jnp.zeros((1, config.resolution, config.resolution, channels), jnp.float32)
    return dict(generator.init({"params": rng}, x, train=False))


def load_model(workdir: str, checkpoint: str | int = "latest") -> tuple[ml_collections.ConfigDict, dict]:
    """Restores the generator of a training run.

    Args:
      workdir: the training workdir (holds `checkpoints/`).
      checkpoint: "latest", "best" (highest validation SSIM) or a step number.

    Returns:
      (config, variables): the run's config as saved in the checkpoint, and
      generator variables {"params", "batch_stats"?} on the default device,
      with the EMA params in place of the raw ones when the run kept an EMA.
      Works for checkpoints written with any number of devices or processes.

    Raises:
      FileNotFoundError: no such workdir or checkpoint.
    """
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        step = ckpt.resolve(checkpoint)
        config = ckpt.restore_config(step)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shapes = jax.eval_shape(functools.partial(init_variables, config), jax.random.key(0))
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                shapes)
        items = {"g": abstract}
        if ckpt.has_item(step, "ema"):
            items["ema"] = abstract["params"]
        restored = ckpt.restore(step, items)
    finally:
        ckpt.close()
    variables = dict(restored["g"])
    if "ema" in restored:
        variables["params"] = restored["ema"]
    return config, variables


def predict(config: ml_collections.ConfigDict, variables: dict, images_uint8: jax.Array,
            masks_uint8: jax.Array | None = None) -> dict[str, jax.Array]:
    """De-occludes a batch; pure and jittable (close over `config`).

    Args:
      config: the model's config (from `load_model`).
      variables: generator variables (from `load_model`).
      images_uint8: uint8 [B, H, W, 3] occluded faces, H = W = config.resolution.
      masks_uint8: uint8 [B, H, W, 1], 0 / 255 (or soft): where to fill in.
        Required in guided mode, ignored in blind mode (the model predicts it).

    Returns:
      {"deoccluded": uint8 [B, H, W, 3], "mask": float32 [B, H, W, 1] in [0, 1]}
      where "mask" is the mask used for compositing (predicted in blind mode,
      the given one in guided mode; all ones for models that regenerate the
      whole image).
    """
    res = config.resolution
    if images_uint8.ndim != 4 or images_uint8.shape[1:] != (res, res, 3):
        raise ValueError(f"images must be [B, {res}, {res}, 3] uint8, got {images_uint8.shape}")
    x = images_uint8.astype(jnp.float32) / 127.5 - 1.0
    mask = None
    if masks_uint8 is not None:
        mask = masks_uint8.astype(jnp.float32) / 255.0
    elif config.model.mode == "guided":
        raise ValueError("this model is guided: predict() needs masks_uint8")
    out, _ = models.generate(config, models.build_generator(config), variables, x, mask,
                             train=False)
    deoccluded = jnp.clip(jnp.round((out["output"] + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
    return {"deoccluded": deoccluded, "mask": out["mask"].astype(jnp.float32)}


def make_predict_fn(config: ml_collections.ConfigDict):
    """jax.jit(predict) with `config` closed over: fn(variables, images_uint8, masks_uint8=None)."""
    return jax.jit(functools.partial(predict, config))
