"""The model API: from a config to modules, variables and predictions.

Everything the loop, the evaluator, the exporters and inference need from a
model lives here, so they agree on it:

  build_generator / build_discriminator   modules for `config.model`
  init_generator                          fresh generator variables
  generate                                the generator plus the compositing rule
  predict                                 uint8 in, uint8 out (what every export serves)
  to_model_range / to_uint8 / mask_to_unit  the one uint8 <-> [-1, 1] conversion

Images enter the generator in [-1, 1]. In "blind" mode the input is the
occluded image and the generator also predicts mask logits; in "guided" mode
the mask (in [-1, 1]) is a fourth input channel.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from deocc_jax.models import layers, patchgan
from deocc_jax.models.patchgan import MultiScalePatchGAN, n_layers_for_resolution, receptive_field
from deocc_jax.models.unet import UNet

MODES = ("blind", "guided")
UPSAMPLERS = {"resize_conv": layers.ResizeConv, "conv_transpose": layers.UpConv}

__all__ = ["UNet", "MultiScalePatchGAN", "build_generator", "build_discriminator", "generate",
           "generator_inputs", "compute_dtype", "receptive_field", "n_layers_for_resolution",
           "uses_discriminator", "conv_impl", "MODES", "init_generator", "predict",
           "make_predict_fn", "to_model_range", "to_uint8", "mask_to_unit", "is_guided",
           "predicts_mask"]


# ----------------------------------------------------------------------------- pixels


def to_model_range(images_uint8: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [-1, 1] (what the networks see)."""
    return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float images in [-1, 1] -> uint8, rounded and clipped."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def mask_to_unit(mask_uint8: jax.Array) -> jax.Array:
    """uint8 mask (0 / 255, or soft) -> float32 in [0, 1]."""
    return mask_uint8.astype(jnp.float32) / 255.0


# ----------------------------------------------------------------------------- config facts


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """Activation dtype from `config.model.compute_dtype` ("float32" | "bfloat16")."""
    name = config.model.get("compute_dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {name!r}")
    return jnp.dtype(name)


def conv_impl(config: ml_collections.ConfigDict) -> str:
    """`config.model.conv_impl`: "auto" (matmul on CPU, XLA convs elsewhere), "matmul", "xla_conv".

    Only the computation changes; parameters are identical, so checkpoints move between them.
    """
    name = config.model.get("conv_impl", "auto")
    if name not in layers.CONV_IMPLS:
        raise ValueError(f"model.conv_impl must be one of {layers.CONV_IMPLS}, got {name!r}")
    return name


def is_guided(config: ml_collections.ConfigDict) -> bool:
    """Whether the model takes the true occluder mask as an input."""
    mode = config.model.mode
    if mode not in MODES:
        raise ValueError(f"model.mode must be one of {MODES}, got {mode!r}")
    return mode == "guided"


def predicts_mask(config: ml_collections.ConfigDict) -> bool:
    """Whether the generator predicts an occlusion mask (blind mode with a mask head).

    Without one a blind model regenerates the whole face and its "mask" is all
    ones, so mask metrics (IoU) would only measure the mask's area.
    """
    return not is_guided(config) and bool(config.model.generator.get("mask_head", True))


def generator_depth(config: ml_collections.ConfigDict) -> int:
    """U-Net depth; None in the config means down to 1x1 (pix2pix: 8 at 256 px)."""
    depth = config.model.generator.get("depth")
    if depth is None:
        depth = int(config.resolution).bit_length() - 1
    if config.resolution % (2 ** depth):
        raise ValueError(f"resolution {config.resolution} is not divisible by 2**depth = {2 ** depth}")
    return int(depth)


def uses_discriminator(config: ml_collections.ConfigDict) -> bool:
    """False when the adversarial weight is 0: the discriminator is then never built or run."""
    return float(config.loss.adv_weight) > 0


# ----------------------------------------------------------------------------- modules


def _conv_factories(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The convolution constructors every module uses, bound to `conv_impl`."""
    impl = conv_impl(config)
    return {"down": functools.partial(layers.DownConv, impl=impl),
            "conv": functools.partial(layers.Conv, impl=impl)}


def build_generator(config: ml_collections.ConfigDict) -> UNet:
    """The generator described by `config.model` (mode, generator.*, compute_dtype)."""
    g = config.model.generator
    if g.upsample not in UPSAMPLERS:
        raise ValueError(f"model.generator.upsample must be one of {sorted(UPSAMPLERS)}, "
                         f"got {g.upsample!r}")
    convs = _conv_factories(config)
    return UNet(
        base_width=g.base_width, depth=generator_depth(config), max_width=g.max_width,
        norm=g.norm, dropout=g.dropout, dropout_levels=g.dropout_levels,
        self_attention_stride=g.self_attention_stride, attention_heads=g.get("attention_heads", 4),
        attention_gates=g.attention_gates, mask_head=not is_guided(config) and g.mask_head,
        dtype=compute_dtype(config),
        up=functools.partial(UPSAMPLERS[g.upsample], impl=conv_impl(config)), **convs)


def build_discriminator(config: ml_collections.ConfigDict) -> MultiScalePatchGAN | None:
    """The conditional PatchGAN of `config.model.discriminator`, or None without adversarial loss."""
    if not uses_discriminator(config):
        return None
    d = config.model.discriminator
    n_layers = d.get("n_layers") or n_layers_for_resolution(config.resolution)
    return MultiScalePatchGAN(base_width=d.base_width, n_layers=n_layers, norm=d.norm,
                              spectral_norm=d.spectral_norm, num_scales=d.num_scales,
                              local_parts=patchgan.parse_parts(d.get("local_parts", "")),
                              dtype=compute_dtype(config), **_conv_factories(config))


def init_generator(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
    """Fresh generator variables {"params", "batch_stats"?} for `config` (pure; jit it)."""
    channels = 4 if is_guided(config) else 3
    x = jnp.zeros((1, config.resolution, config.resolution, channels), jnp.float32)
    return dict(build_generator(config).init({"params": rng}, x, train=False))


# ----------------------------------------------------------------------------- running


def generator_inputs(config: ml_collections.ConfigDict, occluded: jax.Array,
                     mask: jax.Array | None) -> jax.Array:
    """Generator input from float images in [-1, 1] and a mask in [0, 1]."""
    if is_guided(config):
        if mask is None:
            raise ValueError("guided mode needs a mask")
        return jnp.concatenate([occluded, mask * 2.0 - 1.0], axis=-1)
    return occluded


def generate(config: ml_collections.ConfigDict, generator: UNet, variables: dict,
             occluded: jax.Array, mask: jax.Array | None, *, train: bool = False,
             rngs: dict | None = None, mutable: Any = False):
    """Runs the generator and composites its output.

    Args:
      config: the experiment config.
      generator: from `build_generator(config)`.
      variables: {"params": ..., "batch_stats": ...} (batch_stats if the norm has them).
      occluded: float32 [B, H, W, 3] in [-1, 1].
      mask: float32 [B, H, W, 1] in [0, 1]; required in guided mode, ignored in blind mode.
      train: training mode (dropout, batch statistics).
      rngs: {"dropout": key} in training.
      mutable: passed to `apply` (["batch_stats"] in training).

    Returns:
      (out, new_model_state) where out has "raw" (generator rgb), "output" (the
      composited result, [-1, 1]), "mask" (the mask used to composite, [0, 1]:
      predicted in blind mode, given in guided mode, ones when nothing is
      composited) and "mask_logits" (or None).
    """
    inputs = generator_inputs(config, occluded, mask)
    result = generator.apply(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    out, new_state = result if mutable else (result, {})
    rgb, logits = out["rgb"], out["mask_logits"]
    if is_guided(config):
        used_mask = mask
    elif logits is not None:
        used_mask = jax.nn.sigmoid(logits)
    else:
        used_mask = None
    if config.model.get("composite", True) and used_mask is not None:
        output = used_mask * rgb + (1.0 - used_mask) * occluded
    else:
        output = rgb
        used_mask = jnp.ones_like(rgb[..., :1]) if used_mask is None else used_mask
    return {"raw": rgb, "output": output, "mask": used_mask, "mask_logits": logits}, new_state


def predict(config: ml_collections.ConfigDict, variables: dict, images_uint8: jax.Array,
            masks_uint8: jax.Array | None = None) -> dict[str, jax.Array]:
    """De-occludes a batch; pure and jittable (close over `config`).

    Args:
      config: the model's config.
      variables: generator variables.
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
    if masks_uint8 is None and is_guided(config):
        raise ValueError("this model is guided: predict() needs masks_uint8")
    mask = None if masks_uint8 is None else mask_to_unit(masks_uint8)
    out, _ = generate(config, build_generator(config), variables, to_model_range(images_uint8),
                      mask, train=False)
    return {"deoccluded": to_uint8(out["output"]), "mask": out["mask"].astype(jnp.float32)}


def make_predict_fn(config: ml_collections.ConfigDict):
    """jax.jit(predict) with `config` closed over: fn(variables, images_uint8, masks_uint8=None)."""
    return jax.jit(functools.partial(predict, config))
