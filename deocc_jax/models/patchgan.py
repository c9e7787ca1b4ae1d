"""Conditional PatchGAN discriminator (pix2pix `NLayerDiscriminator`).

The discriminator sees concat(condition, image) and returns a logit map in
which each value judges one receptive-field patch. With n_layers stride-2 convs
followed by two stride-1 convs (all 4x4) the receptive field is
1 + 3 * (3 * 2**n - 1): 70 px for n = 3, pix2pix's setting at 256 px.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deocc_jax.models.layers import Conv, DownConv, Norm


def receptive_field(n_layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with `n_layers` stride-2 convs."""
    return 1 + 3 * (3 * 2 ** n_layers - 1)


def n_layers_for_resolution(resolution: int) -> int:
    """n_layers whose receptive field is closest to 70 px scaled from 256 px to `resolution`."""
    target = 70.0 * resolution / 256.0
    max_layers = max(1, int(math.log2(resolution)) - 2)  # keep at least a 2x2 logit map
    return min(range(1, max_layers + 1), key=lambda n: abs(receptive_field(n) - target))


class _Conv(nn.Module):
    """4x4 conv, padding 1, stride 2 (layers.DownConv) or 1 (layers.Conv), optionally spectral-normed.

    nn.SpectralNorm reshapes the kernel to (-1, Cout) before its power iteration; DownConv's
    (2, 2, 4*Cin, Cout) kernel holds the same rows as nn.Conv's (4, 4, Cin, Cout), permuted, so
    the matrix has the same singular values whatever the layout.
    """
    features: int
    strides: int
    use_bias: bool
    spectral_norm: bool
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.strides == 2:
            conv = DownConv(self.features, self.use_bias, self.dtype, self.conv_impl, name="conv")
        elif self.strides == 1:
            conv = Conv(self.features, self.use_bias, self.dtype, self.conv_impl,
                        kernel_size=(4, 4), padding=((1, 1), (1, 1)), name="conv")
        else:
            raise ValueError(f"PatchGAN convs have stride 1 or 2, got {self.strides}")
        if self.spectral_norm:
            # The power-iteration vector lives in the `batch_stats` collection.
            return nn.SpectralNorm(conv)(x, update_stats=train)
        return conv(x)


class PatchGAN(nn.Module):
    """One scale of the conditional PatchGAN.

    Returns {"logits": [B, h, w, 1] float32, "features": [intermediate maps]}.
    """
    base_width: int = 64
    n_layers: int = 3
    norm: str = "batch"
    spectral_norm: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, condition: jax.Array, image: jax.Array, train: bool = False):
        use_bias = self.norm != "batch"
        h = jnp.concatenate([condition, image], axis=-1).astype(self.dtype)
        features = []
        h = _Conv(self.base_width, 2, True, self.spectral_norm, self.dtype, self.conv_impl)(h, train)
        h = nn.leaky_relu(h, 0.2)
        features.append(h)
        for n in range(1, self.n_layers + 1):
            width = self.base_width * min(2 ** n, 8)
            stride = 2 if n < self.n_layers else 1
            h = _Conv(width, stride, use_bias, self.spectral_norm, self.dtype, self.conv_impl)(h, train)
            h = Norm(self.norm, dtype=self.dtype)(h, train)
            h = nn.leaky_relu(h, 0.2)
            features.append(h)
        logits = _Conv(1, 1, True, self.spectral_norm, self.dtype, self.conv_impl)(h, train)
        return {"logits": logits.astype(jnp.float32), "features": features}


class MultiScalePatchGAN(nn.Module):
    """`num_scales` PatchGANs; scale s sees the inputs average-pooled by 2**s."""
    base_width: int = 64
    n_layers: int = 3
    norm: str = "batch"
    spectral_norm: bool = False
    num_scales: int = 1
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, condition: jax.Array, image: jax.Array, train: bool = False) -> list[dict]:
        outputs = []
        for s in range(self.num_scales):
            if s > 0:
                condition = nn.avg_pool(condition, (2, 2), strides=(2, 2))
                image = nn.avg_pool(image, (2, 2), strides=(2, 2))
            outputs.append(PatchGAN(self.base_width, max(1, self.n_layers - s), self.norm,
                                    self.spectral_norm, self.dtype, self.conv_impl,
                                    name=f"scale{s}")(
                                        condition, image, train))
        return outputs
