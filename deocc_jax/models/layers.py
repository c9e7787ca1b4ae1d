"""Small building blocks shared by the generator and the discriminator."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NORMS = ("batch", "instance", "group", "none")

# A module constructor, usually a functools.partial of one (flax's ResNet idiom).
ModuleDef = Callable[..., nn.Module]


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
            # PyTorch pix2pix uses InstanceNorm2d(affine=False). Written out rather than as
            # nn.GroupNorm(group_size=1) (same function, no parameters either way): on XLA:CPU
            # GroupNorm's (..., C, 1)-shaped statistics made deocc's training step ~1.3x slower.
            return instance_norm(x, epsilon=1e-5, dtype=self.dtype)
        if self.kind == "group":
            groups = _largest_divisor_at_most(x.shape[-1], 32)
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=self.dtype)(x)
        if self.kind == "none":
            return x
        raise ValueError(f"unknown norm {self.kind!r}; choose one of {NORMS}")


def instance_norm(x: jax.Array, epsilon: float = 1e-5, dtype: Any = jnp.float32) -> jax.Array:
    """Per-sample, per-channel normalisation over H, W (statistics in float32), no affine."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xf), axis=(1, 2), keepdims=True) - jnp.square(mean), 0.0)
    return ((xf - mean) * lax.rsqrt(var + epsilon)).astype(dtype)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


# ----------------------------------------------------------------------------------------------
# Convolutions.
#
# Every convolution of the models goes through the modules below. Their parameters have one
# layout whatever the implementation, so a checkpoint trained on CPU loads on GPU and back:
#
#   DownConv   (k4, s2, p1)          kernel (2, 2, 4*Cin, Cout)   space-to-depth + 2x2 conv
#   UpConv     (transposed k4 s2 p1) kernel (2, 2, Cin, 4*Cout)   2x2 conv + depth-to-space
#   ResizeConv (nearest x2 + 3x3)    kernel (3, 3, Cin, Cout)     mapped each step to UpConv's form
#   Conv       (stride 1, k x k)     kernel (kh, kw, Cin, Cout)   = nn.Conv's layout
#
# `impl` picks the compute: "matmul" = im2col + one dot_general, "xla_conv" =
# lax.conv_general_dilated on the same rearranged input and kernel, "auto" = matmul on the CPU
# backend, xla_conv elsewhere. Why: on XLA:CPU a convolution's weight gradient is emitted as a
# convolution whose window is a whole activation map, 10-40x slower than the same contraction
# as a matmul (docs/speed.md: the pix2pix step is 2.8x faster as matmuls); on GPU
# cuDNN convolutions win. The kernels are stored in the fast layout because rearranging them
# every step cost ~0.2 s per pix2pix step on CPU. `*_kernel_from_*` below are the exact
# bijections with flax nn.Conv / nn.ConvTranspose layouts (for loading other weights; N(0, s)
# init of either layout is the same distribution). They are not used per step.
# ----------------------------------------------------------------------------------------------

CONV_IMPLS = ("auto", "matmul", "xla_conv")

_Padding = str | tuple[tuple[int, int], tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
    """"auto" -> "matmul" on the CPU backend, "xla_conv" otherwise; checks the name."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla_conv"
    return impl


def conv_valid(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """Stride-1 VALID convolution, NHWC input, HWIO kernel, by `impl` ("matmul" | "xla_conv")."""
    kh, kw, c, cout = kernel.shape
    if x.shape[-1] != c:
        raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {c}")
    if impl == "xla_conv":
        return lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl != "matmul":
        raise ValueError(f"conv impl must be 'matmul' or 'xla_conv' here, got {impl!r}")
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    if kh == kw == 1:
        patches = x
    else:
        # im2col: taps in (row, col) order then channels, matching kernel.reshape(kh*kw*c, cout).
        patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)],
                                  axis=-1)
    y = lax.dot_general(patches.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, cout),
                        (((1,), (0,)), ((), ())))
    return y.reshape(n, ho, wo, cout)


def _pad_hw(x: jax.Array, pads) -> jax.Array:
    (t, b), (l, r) = pads
    return jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))


def same_padding(kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Stride-1 "SAME" padding as lax/flax compute it (the extra pixel goes after)."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size)


def down_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """== Conv2d(k=4, stride=2, padding=1). x (N, H, W, C) with H, W even; kernel (2, 2, 4C, Cout)."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"DownConv needs even height and width, got {h}x{w}")
    xp = _pad_hw(x, ((1, 1), (1, 1)))
    hp, wp = (h + 2) // 2, (w + 2) // 2
    # Space-to-depth: channel index = (row parity, col parity, c), as s2d_kernel_from_conv expects.
    s = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    return conv_valid(s, kernel, impl)


def up_conv(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
    """== torch ConvTranspose2d(k=4, s=2, p=1) == nn.ConvTranspose((4, 4), (2, 2), "SAME").

    x (N, H, W, Cin); kernel (2, 2, Cin, 4 * Cout); output (N, 2H, 2W, Cout).
    """
    n, h, w, _ = x.shape
    cout = kernel.shape[-1] // 4
    y = conv_valid(_pad_hw(x, ((1, 1), (1, 1))), kernel, impl)  # (N, H+1, W+1, 4*Cout)
    y = y.reshape(n, h + 1, w + 1, 2, 2, cout)
    # Sub-pixel (a, b) of output pixel (2i+a, 2j+b) is y[i+a, j+b, a, b].
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


# Which of the 3 taps of a 3x3 conv on a nearest-x2-upsampled map land on each of the 2 taps of
# the equivalent 2x2 conv on the original map (padded by 1), for sub-pixel a: [a, t, d].
_NEAREST_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def subpixel_kernel_from_resize_conv(w3: jax.Array) -> jax.Array:
    """3x3 kernel of conv(resize_nearest_x2(x)) -> (2, 2, Cin, 4*Cout) kernel for `up_conv`.

    Built from sums of whole (Cin, Cout) slices and concatenated along Cout, so no transpose
    of the big axes (an einsum to the same layout was ~2x slower on XLA:CPU).
    """
    rows = []
    for t in (0, 1):
        row = []
        for u in (0, 1):
            parts = []
            for a in (0, 1):
                for b in (0, 1):
                    taps = [w3[d, e] for d in range(3) for e in range(3)
                            if _NEAREST_TAPS[a, t, d] and _NEAREST_TAPS[b, u, e]]
                    parts.append(functools.reduce(jnp.add, taps))
            row.append(jnp.concatenate(parts, axis=-1))
        rows.append(jnp.stack(row))
    return jnp.stack(rows)


def s2d_kernel_from_conv(k: jax.Array) -> jax.Array:
    """nn.Conv (4, 4, Cin, Cout) kernel (k4 s2 p1) -> DownConv's (2, 2, 4*Cin, Cout); a bijection."""
    c, co = k.shape[2:]
    return k.reshape(2, 2, 2, 2, c, co).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, co)


def subpixel_kernel_from_conv_transpose(k: jax.Array) -> jax.Array:
    """nn.ConvTranspose (4, 4, Cin, Cout) kernel ("SAME", s2) -> UpConv's (2, 2, Cin, 4*Cout).

    A torch ConvTranspose2d weight w (Cin, Cout, 4, 4) is the nn.ConvTranspose kernel
    w.transpose(2, 3, 0, 1)[::-1, ::-1]; a torch Conv2d weight (Cout, Cin, kh, kw) is the
    nn.Conv kernel w.transpose(2, 3, 1, 0).
    """
    c, co = k.shape[2:]
    return k.reshape(2, 2, 2, 2, c, co).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c, 4 * co)


class _ConvBase(nn.Module):
    """Shared fields: output channels, bias, compute dtype, implementation."""
    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    impl: str = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

    def _params(self, kernel_shape):
        kernel = self.param("kernel", self.kernel_init, kernel_shape, jnp.float32)
        bias = (self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
                if self.use_bias else None)
        return kernel, bias

    def _finish(self, y: jax.Array, bias: jax.Array | None) -> jax.Array:
        return y if bias is None else y + bias


class DownConv(_ConvBase):
    """Conv k4 s2 p1 (pix2pix's downsampling) with the kernel stored as (2, 2, 4*Cin, Cout)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._params((2, 2, 4 * x.shape[-1], self.features))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return self._finish(down_conv(x, kernel, resolve_conv_impl(self.impl)), bias)


class UpConv(_ConvBase):
    """Transposed conv k4 s2 p1 (pix2pix's upsampling), kernel stored as (2, 2, Cin, 4*Cout)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._params((2, 2, x.shape[-1], 4 * self.features))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return self._finish(up_conv(x, kernel, resolve_conv_impl(self.impl)), bias)


# Below this many input pixels per image (H * W) mapping the kernel costs more than it saves, and
# the matmul path convolves the resized map directly (im2col 3x3). Measured on XLA:CPU, 2 cores,
# fwd + bwd at batch 1: 8x8 (1024 -> 512 ch) 55 ms im2col vs 97 ms sub-pixel; 16x16: 137 vs 70.
_SUBPIXEL_MIN_PIXELS = 128


class ResizeConv(_ConvBase):
    """Nearest x2 resize then a 3x3 SAME conv; kernel (3, 3, Cin, Cout) as nn.Conv's.

    The matmul path computes it on large maps exactly as a 2x2 sub-pixel conv (`up_conv`) with
    the kernel mapped linearly from the 3x3 one: 16 instead of 36 MACs per input pixel and
    channel pair, no 4x-sized intermediate; on small maps (where mapping the kernel each step
    costs more) as im2col on the resized map. The xla_conv path resizes and convolves.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self._params((3, 3, x.shape[-1], self.features))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        impl = resolve_conv_impl(self.impl)
        n, h, w, _ = x.shape
        # H * W only: the batch may be a symbolic dimension (exported serving functions).
        if impl == "matmul" and h * w >= _SUBPIXEL_MIN_PIXELS:
            y = up_conv(x, subpixel_kernel_from_resize_conv(kernel), impl)
        else:
            x = jax.image.resize(x, (n, 2 * h, 2 * w, x.shape[-1]), method="nearest")
            y = conv_valid(_pad_hw(x, ((1, 1), (1, 1))), kernel, impl)
        return self._finish(y, bias)


class Conv(_ConvBase):
    """Stride-1 k x k conv, kernel (kh, kw, Cin, Cout) as nn.Conv's.

    Attributes:
      kernel_size: (kh, kw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
    """
    kernel_size: tuple[int, int] = (3, 3)
    padding: _Padding = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel, bias = self._params((kh, kw, x.shape[-1], self.features))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.padding == "SAME":
            pads = same_padding((kh, kw))
        elif self.padding == "VALID":
            pads = ((0, 0), (0, 0))
        elif isinstance(self.padding, str):
            raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs, got {self.padding!r}")
        else:
            pads = tuple(tuple(p) for p in self.padding)
        if any(p for pair in pads for p in pair):
            x = _pad_hw(x, pads)
        return self._finish(conv_valid(x, kernel, resolve_conv_impl(self.impl)), bias)
