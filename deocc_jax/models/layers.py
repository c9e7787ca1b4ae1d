"""Small building blocks shared by the generator and the discriminator."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "instance", "group", "none")


class Norm(nn.Module):
    """Normalisation chosen by name, so configs can switch it without code changes.

    Attributes:
      kind: "batch" (running stats in the `batch_stats` collection), "instance",
        "group" (32 groups, or fewer when the width is smaller) or "none".
      dtype: computation dtype; statistics and scales stay float32 params.
    """
    kind: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "batch":
            # momentum 0.9 matches PyTorch's BatchNorm2d(momentum=0.1).
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                dtype=self.dtype)(x)
        if self.kind == "instance":
            # PyTorch pix2pix uses InstanceNorm2d(affine=False).
            return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, use_bias=False,
                                use_scale=False, dtype=self.dtype)(x)
        if self.kind == "group":
            groups = _largest_divisor_at_most(x.shape[-1], 32)
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "none":
            return x
        raise ValueError(f"unknown norm {self.kind!r}; choose one of {NORMS}")


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def conv_init() -> nn.initializers.Initializer:
    # pix2pix initialises convs with N(0, 0.02).
    return nn.initializers.normal(0.02)
