"""Losses for de-occlusion GANs. All return scalar float32 means over the batch.

Adversarial losses take discriminator outputs as produced by
`MultiScalePatchGAN` (a list of {"logits", "features"} per scale) and average
over scales.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from deocc_jax.evaluation import metrics

ADVERSARIAL_KINDS = ("lsgan", "hinge", "nonsaturating")


def _check_kind(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial loss {kind!r}; choose one of {ADVERSARIAL_KINDS}")


def discriminator_loss(real: Sequence[dict], fake: Sequence[dict], kind: str) -> jax.Array:
    """D loss on real and fake outputs (pix2pix halves the sum: 0.5 * (real + fake))."""
    _check_kind(kind)
    total = 0.0
    for r, f in zip(real, fake):
        r, f = r["logits"], f["logits"]
        if kind == "lsgan":
            lr, lf = jnp.mean((r - 1.0) ** 2), jnp.mean(f ** 2)
        elif kind == "hinge":
            lr, lf = jnp.mean(jax.nn.relu(1.0 - r)), jnp.mean(jax.nn.relu(1.0 + f))
        else:
            lr = jnp.mean(optax.sigmoid_binary_cross_entropy(r, jnp.ones_like(r)))
            lf = jnp.mean(optax.sigmoid_binary_cross_entropy(f, jnp.zeros_like(f)))
        total = total + 0.5 * (lr + lf)
    return total / len(real)


def generator_adversarial_loss(fake: Sequence[dict], kind: str) -> jax.Array:
    """G's adversarial loss on the discriminator's outputs for generated images."""
    _check_kind(kind)
    total = 0.0
    for f in fake:
        f = f["logits"]
        if kind == "lsgan":
            total = total + jnp.mean((f - 1.0) ** 2)
        elif kind == "hinge":
            total = total - jnp.mean(f)
        else:
            total = total + jnp.mean(optax.sigmoid_binary_cross_entropy(f, jnp.ones_like(f)))
    return total / len(fake)


def feature_matching_loss(real: Sequence[dict], fake: Sequence[dict]) -> jax.Array:
    """L1 between D's intermediate features of real and generated images (pix2pixHD)."""
    total, count = 0.0, 0
    for r, f in zip(real, fake):
        for fr, ff in zip(r["features"], f["features"]):
            total = total + jnp.mean(jnp.abs(jax.lax.stop_gradient(fr).astype(jnp.float32)
                                             - ff.astype(jnp.float32)))
            count += 1
    return total / max(count, 1)


def weighted_l1(pred: jax.Array, target: jax.Array, mask: jax.Array,
                occluded_weight: float) -> jax.Array:
    """Mean |pred - target| with pixels inside the mask weighted `occluded_weight` times.

    Weight 1 gives plain L1. The mean is over all pixels (not normalised by the
    weights), so loss scales stay comparable with pix2pix's lambda_L1.
    """
    w = 1.0 + (occluded_weight - 1.0) * mask
    return jnp.mean(jnp.abs(pred - target) * w)


def masked_l1(pred: jax.Array, target: jax.Array, mask: jax.Array, eps: float = 1.0) -> jax.Array:
    """Mean |pred - target| over the pixels inside the mask (eps keeps an empty batch finite)."""
    return jnp.sum(jnp.abs(pred - target) * mask) / (jnp.sum(mask) * pred.shape[-1] + eps)


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """1 - SSIM of images in [-1, 1] (data range 2)."""
    return 1.0 - jnp.mean(metrics.ssim(pred, target, data_range=2.0))


def mask_bce(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-pixel binary cross-entropy of predicted mask logits."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))


def mask_dice(logits: jax.Array, mask: jax.Array, eps: float = 1.0) -> jax.Array:
    """Soft Dice loss per image, averaged; eps keeps empty masks finite."""
    p = jax.nn.sigmoid(logits)
    inter = jnp.sum(p * mask, axis=(1, 2, 3))
    denom = jnp.sum(p, axis=(1, 2, 3)) + jnp.sum(mask, axis=(1, 2, 3))
    return jnp.mean(1.0 - (2.0 * inter + eps) / (denom + eps))


def generator_loss(weights, out: dict, clean: jax.Array, mask: jax.Array,
                   d_fake: Sequence[dict] | None = None,
                   d_real: Sequence[dict] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The generator's weighted loss from one forward pass.

    Args:
      weights: `config.loss` (l1_weight, l1_occluded_weight, raw_l1_weight, ssim_weight,
        mask_bce_weight, mask_dice_weight, adv_weight, adversarial,
        feature_matching_weight).
      out: `models.generate` output ("output" in [-1, 1], "raw" (the fill before
        compositing), "mask_logits" or None).
      clean: float32 [B, H, W, 3] target in [-1, 1].
      mask: float32 [B, H, W, 1] true occlusion mask in [0, 1].
      d_fake: the discriminator's outputs for `out["output"]`, or None without D.
      d_real: its outputs for `clean` (feature matching), or None.

    Returns:
      (total, {term name: unweighted value}).
    """
    fake = out["output"]
    terms = {"l1": (weights.l1_weight, weighted_l1(fake, clean, mask, weights.l1_occluded_weight))}
    if weights.raw_l1_weight > 0 and out["mask_logits"] is not None:
        # The composite only trains the fill where the predicted mask is on: where the
        # mask head misses part of an occluder, the fill learns to copy it, and the
        # composite's L1 then gives the mask no reason to grow. Training the raw fill
        # over the whole true region breaks that loop.
        terms["raw_l1"] = (weights.raw_l1_weight, masked_l1(out["raw"], clean, mask))
    if weights.ssim_weight > 0:
        terms["ssim"] = (weights.ssim_weight, ssim_loss(fake, clean))
    if out["mask_logits"] is not None:
        if weights.mask_bce_weight > 0:
            terms["mask_bce"] = (weights.mask_bce_weight, mask_bce(out["mask_logits"], mask))
        if weights.mask_dice_weight > 0:
            terms["mask_dice"] = (weights.mask_dice_weight, mask_dice(out["mask_logits"], mask))
    if d_fake is not None:
        terms["adv"] = (weights.adv_weight, generator_adversarial_loss(d_fake, weights.adversarial))
        if d_real is not None and weights.feature_matching_weight > 0:
            terms["fm"] = (weights.feature_matching_weight, feature_matching_loss(d_real, d_fake))
    total = sum(w * v for w, v in terms.values())
    return total, {k: v for k, (_, v) in terms.items()}
