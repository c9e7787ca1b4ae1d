"""Model builders: everything the loop, eval and export need to go from a config to modules.

Images enter the generator in [-1, 1]. In "blind" mode the input is the
occluded image and the generator also predicts mask logits; in "guided" mode
the mask (in [-1, 1]) is a fourth input channel. `generate` applies the
generator and the compositing rule in one place so training, eval and export
agree on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from deocc_jax.models.layers import CONV_IMPLS
from deocc_jax.models.patchgan import MultiScalePatchGAN, n_layers_for_resolution, receptive_field
from deocc_jax.models.unet import UNet

MODES = ("blind", "guided")

__all__ = ["UNet", "MultiScalePatchGAN", "build_generator", "build_discriminator", "generate",
           "generator_inputs", "compute_dtype", "receptive_field", "n_layers_for_resolution",
           "uses_discriminator", "conv_impl", "CONV_IMPLS", "MODES"]


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
    if name not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {name!r}")
    return name


def generator_depth(config: ml_collections.ConfigDict) -> int:
    """U-Net depth; None in the config means down to 1x1 (pix2pix: 8 at 256 px)."""
    depth = config.model.generator.get("depth")
    if depth is None:
        depth = int(config.resolution).bit_length() - 1
    if config.resolution % (2 ** depth):
        raise ValueError(f"resolution {config.resolution} is not divisible by 2**depth = {2 ** depth}")
    return int(depth)


def build_generator(config: ml_collections.ConfigDict) -> UNet:
    """The generator described by `config.model` (mode, generator.*, compute_dtype)."""
    mode = config.model.mode
    if mode not in MODES:
        raise ValueError(f"model.mode must be one of {MODES}, got {mode!r}")
    g = config.model.generator
    return UNet(
        base_width=g.base_width, depth=generator_depth(config), max_width=g.max_width,
        norm=g.norm, upsample=g.upsample, dropout=g.dropout, dropout_levels=g.dropout_levels,
        self_attention_stride=g.self_attention_stride, attention_heads=g.get("attention_heads", 4),
        attention_gates=g.attention_gates,
        mask_head=(mode == "blind" and g.mask_head), dtype=compute_dtype(config),
        conv_impl=conv_impl(config))


def uses_discriminator(config: ml_collections.ConfigDict) -> bool:
    """False when the adversarial weight is 0: the discriminator is then never built or run."""
    return float(config.loss.adv_weight) > 0


def build_discriminator(config: ml_collections.ConfigDict) -> MultiScalePatchGAN | None:
    """The conditional PatchGAN of `config.model.discriminator`, or None without adversarial loss."""
    if not uses_discriminator(config):
        return None
    d = config.model.discriminator
    n_layers = d.get("n_layers") or n_layers_for_resolution(config.resolution)
    return MultiScalePatchGAN(base_width=d.base_width, n_layers=n_layers, norm=d.norm,
                              spectral_norm=d.spectral_norm, num_scales=d.num_scales,
                              dtype=compute_dtype(config), conv_impl=conv_impl(config))


def generator_inputs(config: ml_collections.ConfigDict, occluded: jax.Array,
                     mask: jax.Array | None) -> jax.Array:
    """Generator input from float images in [-1, 1] and a mask in [0, 1]."""
    if config.model.mode == "guided":
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
    if config.model.mode == "guided":
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
