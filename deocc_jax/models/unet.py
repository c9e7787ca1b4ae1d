"""U-Net generator (pix2pix layout) with optional attention and a mask head.

Layout follows pix2pix's `UnetGenerator`: `depth` stride-2 4x4 convolutions
down to a bottleneck, mirrored upsampling with skip connections, LeakyReLU(0.2)
in the encoder and ReLU in the decoder, no norm on the outermost and innermost
encoder convs, dropout on the decoder levels just above the bottleneck.

Convolutions come from factories passed as module fields (the flax
`partial(nn.Conv, ...)` idiom): `down` (stride 2), `up` (x2 upsampling:
`layers.ResizeConv`, no checkerboard artefacts, or `layers.UpConv`, pix2pix's
transposed conv) and `conv` (stride 1, used by the attention gates).
`models.build_generator` binds how they compute (`conv_impl`), so the network
never sees that choice. A convolution followed by a normalisation has no bias:
the norm subtracts it again, so its gradient is rounding noise that Adam would
turn into steps of size lr.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deocc_jax.models import layers
from deocc_jax.models.layers import ModuleDef


class SelfAttention(nn.Module):
    """Non-local block x + gamma * MHA(norm(x)); gamma starts at 0 (SAGAN)."""
    num_heads: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        heads = self.num_heads if c % self.num_heads == 0 else 1
        y = nn.GroupNorm(num_groups=None, group_size=1, dtype=self.dtype)(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(num_heads=heads, dtype=self.dtype)(y, y)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return x + gamma * y.reshape(b, h, w, c).astype(x.dtype)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al., Attention U-Net).

    The decoder feature at the same resolution is the gating signal, so the
    network can learn to pass skip features only where the input is not hidden.
    """
    conv: ModuleDef = layers.Conv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, skip: jax.Array, gate: jax.Array) -> jax.Array:
        inter = max(skip.shape[-1] // 2, 1)
        # 1x1 convs with flax's default lecun-normal init (as nn.Conv had).
        conv = functools.partial(self.conv, kernel_size=(1, 1), dtype=self.dtype,
                                 kernel_init=nn.initializers.lecun_normal())
        theta = conv(features=inter, use_bias=False, name="theta")(skip)
        phi = conv(features=inter, name="phi")(gate)
        psi = conv(features=1, name="psi")(nn.relu(theta + phi))
        return skip * nn.sigmoid(psi)


class UNet(nn.Module):
    """pix2pix-style U-Net returning {"rgb": tanh [-1,1], "mask_logits": [B,H,W,1] | None}.

    Attributes:
      base_width: channels of the first encoder conv (pix2pix: 64).
      depth: number of stride-2 downsamplings (pix2pix U-Net-256: 8).
      max_width: channel cap (pix2pix: 512).
      norm: "batch" | "instance" | "group" | "none".
      dropout: rate on the `dropout_levels` decoder levels above the bottleneck.
      dropout_levels: how many decoder levels get dropout (pix2pix: 3).
      self_attention_stride: self-attention on decoder features whose stride
        (input size / feature size) is at least this and whose size is at least
        2x2; 0 disables it.
      attention_heads: heads of the self-attention blocks.
      attention_gates: gate every skip connection with the decoder feature.
      mask_head: also predict occlusion-mask logits (blind mode).
      out_channels: RGB channels.
      dtype: compute dtype (parameters stay float32).
      down, up, conv: convolution factories (see the module docstring).
    """
    base_width: int = 64
    depth: int = 8
    max_width: int = 512
    norm: str = "batch"
    dropout: float = 0.5
    dropout_levels: int = 3
    self_attention_stride: int = 0
    attention_heads: int = 4
    attention_gates: bool = False
    mask_head: bool = True
    out_channels: int = 3
    dtype: Any = jnp.float32
    down: ModuleDef = layers.DownConv
    up: ModuleDef = layers.ResizeConv
    conv: ModuleDef = layers.Conv

    def _width(self, level: int) -> int:
        return min(self.base_width * 2 ** level, self.max_width)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array | None]:
        size = x.shape[1]
        if x.shape[1] != x.shape[2] or size % (2 ** self.depth):
            raise ValueError(f"U-Net of depth {self.depth} needs square inputs divisible by "
                             f"{2 ** self.depth}, got {x.shape[1:3]}")
        normed_bias = self.norm == "none"  # a norm after the conv cancels its bias
        down = functools.partial(self.down, dtype=self.dtype)
        up = functools.partial(self.up, dtype=self.dtype)
        norm = functools.partial(layers.Norm, kind=self.norm, dtype=self.dtype)
        h = x.astype(self.dtype)

        skips = []
        for level in range(self.depth):
            if level > 0:
                h = nn.leaky_relu(h, 0.2)
            has_norm = 0 < level < self.depth - 1
            h = down(features=self._width(level), use_bias=not has_norm or normed_bias,
                     name=f"down{level}")(h)
            if has_norm:
                h = norm(name=f"down{level}_norm")(h, train)
            skips.append(h)

        for level in reversed(range(self.depth - 1)):
            h = nn.relu(h)
            h = up(features=self._width(level), use_bias=normed_bias, name=f"up{level}")(h)
            h = norm(name=f"up{level}_norm")(h, train)
            from_bottom = self.depth - 2 - level
            if self.dropout > 0 and 1 <= from_bottom <= self.dropout_levels:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            stride = size // h.shape[1]
            if self.self_attention_stride and stride >= self.self_attention_stride and h.shape[1] >= 2:
                h = SelfAttention(num_heads=self.attention_heads, dtype=self.dtype,
                                  name=f"attn{level}")(h)
            skip = skips[level]
            if self.attention_gates:
                skip = AttentionGate(conv=self.conv, dtype=self.dtype, name=f"gate{level}")(skip, h)
            h = jnp.concatenate([h, skip], axis=-1)

        h = nn.relu(h)
        out_ch = self.out_channels + (1 if self.mask_head else 0)
        h = up(features=out_ch, use_bias=True, name="out")(h)
        h = h.astype(jnp.float32)
        return {
            "rgb": jnp.tanh(h[..., :self.out_channels]),
            "mask_logits": h[..., self.out_channels:] if self.mask_head else None,
        }
