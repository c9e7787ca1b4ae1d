"""Conditional PatchGAN discriminator (pix2pix `NLayerDiscriminator`).

The discriminator sees concat(condition, image) and returns a logit map in
which each value judges one receptive-field patch. With n_layers stride-2 convs
followed by two stride-1 convs (all 4x4) the receptive field is
1 + 3 * (3 * 2**n - 1): 70 px for n = 3, pix2pix's setting at 256 px.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deocc_jax.models import layers
from deocc_jax.models.layers import ModuleDef


# Face parts as (top, bottom, left, right) fractions of deocc's aligned crop. Faces are aligned
# to the FFHQ 5-point template (eyes at y 0.47, nose tip 0.61, mouth corners 0.73 and x 0.39-0.61),
# so a part is the same box in every example: a local critic there is a fixed crop
# (Li et al. 2017, Generative Face Completion: a global and a local discriminator).
FACE_PARTS = {
    "mouth": (0.5, 0.875, 0.25, 0.75),   # nose and mouth: what masks, hands and cups cover
    "eyes": (0.3, 0.6, 0.2, 0.8),        # both eyes and brows: sunglasses and glasses
}


def parse_parts(parts: str) -> tuple[str, ...]:
    """'mouth,eyes' -> ('mouth', 'eyes'); '' -> (). Unknown names raise ValueError."""
    names = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = [n for n in names if n not in FACE_PARTS]
    if unknown:
        raise ValueError(f"model.discriminator.local_parts: unknown part(s) {unknown}; "
                         f"known: {sorted(FACE_PARTS)}")
    return names


def part_box(part: str, height: int, width: int, multiple: int = 8) -> tuple[int, int, int, int]:
    """Pixel bounds (top, bottom, left, right) of a face part in a height x width crop.

    Bounds snap to multiples of `multiple` so that the crop halves evenly through the critic's
    stride-2 convolutions.
    """
    t, b, l, r = FACE_PARTS[part]

    def snap(f, n):
        return multiple * round(f * n / multiple)

    return snap(t, height), snap(b, height), snap(l, width), snap(r, width)


def receptive_field(n_layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with `n_layers` stride-2 convs."""
    return 1 + 3 * (3 * 2 ** n_layers - 1)


def n_layers_for_resolution(resolution: int) -> int:
    """n_layers whose receptive field is closest to 70 px scaled from 256 px to `resolution`."""
    target = 70.0 * resolution / 256.0
    max_layers = max(1, int(math.log2(resolution)) - 2)  # keep at least a 2x2 logit map
    return min(range(1, max_layers + 1), key=lambda n: abs(receptive_field(n) - target))


class _Conv(nn.Module):
    """4x4 conv, padding 1, stride 2 (`down`) or 1 (`conv`), optionally spectral-normed.

    nn.SpectralNorm reshapes the kernel to (-1, Cout) before its power iteration; DownConv's
    (2, 2, 4*Cin, Cout) kernel holds the same rows as nn.Conv's (4, 4, Cin, Cout), permuted, so
    the matrix has the same singular values whatever the layout.
    """
    features: int
    strides: int
    use_bias: bool
    spectral_norm: bool
    dtype: Any = jnp.float32
    down: ModuleDef = layers.DownConv
    conv: ModuleDef = layers.Conv

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.strides == 2:
            conv = self.down(features=self.features, use_bias=self.use_bias, dtype=self.dtype,
                             name="conv")
        elif self.strides == 1:
            conv = self.conv(features=self.features, use_bias=self.use_bias, dtype=self.dtype,
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
    down: ModuleDef = layers.DownConv
    conv: ModuleDef = layers.Conv

    @nn.compact
    def __call__(self, condition: jax.Array, image: jax.Array, train: bool = False):
        conv = functools.partial(_Conv, spectral_norm=self.spectral_norm, dtype=self.dtype,
                                 down=self.down, conv=self.conv)
        h = jnp.concatenate([condition, image], axis=-1).astype(self.dtype)
        features = []
        h = conv(features=self.base_width, strides=2, use_bias=True)(h, train)
        h = nn.leaky_relu(h, 0.2)
        features.append(h)
        for n in range(1, self.n_layers + 1):
            width = self.base_width * min(2 ** n, 8)
            stride = 2 if n < self.n_layers else 1
            # A norm follows: its mean subtraction cancels a bias.
            h = conv(features=width, strides=stride, use_bias=self.norm == "none")(h, train)
            h = layers.Norm(kind=self.norm, dtype=self.dtype)(h, train)
            h = nn.leaky_relu(h, 0.2)
            features.append(h)
        logits = conv(features=1, strides=1, use_bias=True)(h, train)
        return {"logits": logits.astype(jnp.float32), "features": features}


class MultiScalePatchGAN(nn.Module):
    """`num_scales` PatchGANs; scale s sees the inputs average-pooled by 2**s.

    Each name in `local_parts` (see FACE_PARTS) adds one more PatchGAN, at full resolution
    on that part's fixed crop, whose outputs follow the scales' in the returned list (the
    losses treat every entry alike).
    """
    base_width: int = 64
    n_layers: int = 3
    norm: str = "batch"
    spectral_norm: bool = False
    num_scales: int = 1
    local_parts: tuple[str, ...] = ()
    dtype: Any = jnp.float32
    down: ModuleDef = layers.DownConv
    conv: ModuleDef = layers.Conv

    @nn.compact
    def __call__(self, condition: jax.Array, image: jax.Array, train: bool = False) -> list[dict]:
        outputs = []
        full_condition, full_image = condition, image
        for s in range(self.num_scales):
            if s > 0:
                condition = nn.avg_pool(condition, (2, 2), strides=(2, 2))
                image = nn.avg_pool(image, (2, 2), strides=(2, 2))
            scale = PatchGAN(base_width=self.base_width, n_layers=max(1, self.n_layers - s),
                             norm=self.norm, spectral_norm=self.spectral_norm, dtype=self.dtype,
                             down=self.down, conv=self.conv, name=f"scale{s}")
            outputs.append(scale(condition, image, train))
        for part in self.local_parts:
            t, b, l, r = part_box(part, full_image.shape[1], full_image.shape[2])
            local = PatchGAN(base_width=self.base_width, n_layers=self.n_layers, norm=self.norm,
                             spectral_norm=self.spectral_norm, dtype=self.dtype,
                             down=self.down, conv=self.conv, name=f"local_{part}")
            outputs.append(local(full_condition[:, t:b, l:r], full_image[:, t:b, l:r], train))
        return outputs
