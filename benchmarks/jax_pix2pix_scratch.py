"""Stand-alone Flax Linen pix2pix used to find the fastest equivalent JAX formulation.

The same architecture as `benchmarks/torch_pix2pix.py` (the junyanz reference) in NHWC,
with switchable formulations of the layers that dominate the CPU step:

* `down="strided"`: `nn.Conv(k4, s2, p1)`. `down="s2d"`: the same conv computed as
  space-to-depth + a 2x2 stride-1 VALID conv. Same parameter (4, 4, Cin, Cout), same math;
  its input gradient is an ordinary conv instead of an lhs-dilated one.
* `up="transpose"`: `nn.ConvTranspose(k4, s2, padding=((2, 2), (2, 2)))` (what torch's
  ConvTranspose2d(k4, s2, p1) is, up to a kernel flip). `up="subpixel"`: the same layer as one
  2x2 stride-1 conv producing 4*Cout channels + depth-to-space. Same parameter, same math.
* `d_batched`: the discriminator's fake and real forwards of the D update as one vmapped call
  (batch statistics are still per group, as in two separate torch calls).

Parameters keep flax's own layouts, so `load_torch_weights` maps a `Pix2PixTorch` exactly and
the step can be compared with the torch reference number for number.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class Options:
    """Formulation switches; every combination computes the same function.

    down: "strided" (nn.Conv k4 s2) | "s2d" (space-to-depth + 2x2 lax.conv) | "s2d_convlayout"
      (same, kernel kept in nn.Conv layout) | "s2d_mm" (space-to-depth + im2col matmul: fastest on
      CPU) | "s2d_zs" (shifted matmul) | "s2d_hy" (lax.conv with a matmul weight gradient).
    up: "transpose" (nn.ConvTranspose) | "subpixel" | "subpixel_convlayout" | "subpixel_mm"
      (fastest on CPU) | "subpixel_zs" | "subpixel_hy".
    d_s1: the PatchGAN's two stride-1 4x4 convs: "conv" | "mm" | "zs" | "hy".
    d_batched: D's fake and real forwards of the D update as one call with per-group BatchNorm.
    adam: "optax" | "barrier" (scale_by_adam_barrier).
    """

    down: str = "s2d_mm"
    up: str = "subpixel_mm"
    d_batched: bool = True
    d_s1: str = "mm"
    gan_mode: str = "vanilla"  # "vanilla" | "lsgan"
    dropout: float = 0.5
    bn_fast_variance: bool = True
    adam: str = "optax"


def space_to_depth_conv4x4s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Conv(k=4, stride=2, pad=1) as space-to-depth + 2x2 stride-1 VALID conv.

    y[i] = sum_k xpad[2i + k] w[k]; with k = 2t + a this is sum_{t,a} S[i + t, a] w[2t + a]
    where S = space_to_depth(xpad). Exactly the same sums, no dilated conv in the gradient.

    Args:
      x: (N, H, W, Cin) with even H and W.
      kernel: (4, 4, Cin, Cout), flax nn.Conv layout.

    Returns:
      (N, H/2, W/2, Cout).
    """
    n, h, w, c = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hp, wp = (h + 2) // 2, (w + 2) // 2
    s = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    k = kernel.reshape(2, 2, 2, 2, c, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, cout)
    return lax.conv_general_dilated(s, k, (1, 1), "VALID", dimension_numbers=_DN)


def subpixel_conv_transpose4x4s2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """torch ConvTranspose2d(k=4, stride=2, pad=1) as a 2x2 conv to 4*Cout + depth-to-space.

    With the flax ConvTranspose kernel kf (padding ((2, 2), (2, 2)), transpose_kernel=False),
    out[2i + a] = sum_t x[i + a + t - 1] kf[2t + a] for a, t in {0, 1}: output phase a is a
    2-tap conv, and all four (a, b) phases are one 2x2 conv over x padded by 1 whose output
    (N, H+1, W+1, 2, 2, Cout) is read at offset (a, b).

    Args:
      x: (N, H, W, Cin).
      kernel: (4, 4, Cin, Cout), flax nn.ConvTranspose layout (torch weight (Cin, Cout, kh, kw)
        maps to it as `w.transpose(2, 3, 0, 1)[::-1, ::-1]`).

    Returns:
      (N, 2H, 2W, Cout).
    """
    n, h, w, c = x.shape
    cout = kernel.shape[-1]
    # kf[2t + a, 2u + b, ci, co] -> k2[t, u, ci, (a, b, co)]
    k2 = kernel.reshape(2, 2, 2, 2, c, cout).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c, 4 * cout)
    y = lax.conv_general_dilated(x, k2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
    y = y.reshape(n, h + 1, w + 1, 2, 2, cout)
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


def s2d_kernel_from_conv(kernel: jax.Array) -> jax.Array:
    """(4, 4, Cin, Cout) nn.Conv kernel -> (2, 2, 4*Cin, Cout) kernel of the space-to-depth form."""
    c, cout = kernel.shape[2:]
    return kernel.reshape(2, 2, 2, 2, c, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, cout)


def subpixel_kernel_from_conv_transpose(kernel: jax.Array) -> jax.Array:
    """(4, 4, Cin, Cout) nn.ConvTranspose kernel -> (2, 2, Cin, 4*Cout) kernel of the sub-pixel form."""
    c, cout = kernel.shape[2:]
    return kernel.reshape(2, 2, 2, 2, c, cout).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, c, 4 * cout)


def s2d_conv(x: jax.Array, k2: jax.Array) -> jax.Array:
    """space_to_depth_conv4x4s2 with the kernel already in (2, 2, 4*Cin, Cout) layout."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hp, wp = (h + 2) // 2, (w + 2) // 2
    s = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    return lax.conv_general_dilated(s, k2, (1, 1), "VALID", dimension_numbers=_DN)


def subpixel_conv(x: jax.Array, k2: jax.Array) -> jax.Array:
    """subpixel_conv_transpose4x4s2 with the kernel already in (2, 2, Cin, 4*Cout) layout."""
    n, h, w, _ = x.shape
    cout = k2.shape[-1] // 4
    y = lax.conv_general_dilated(x, k2, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)
    y = y.reshape(n, h + 1, w + 1, 2, 2, cout)
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


def conv_as_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID conv of NHWC x with an HWIO kernel as im2col + one matmul.

    XLA:CPU runs dot_general (and its transposes in the backward pass) through its fast GEMM
    path, whereas the weight gradient of a convolution becomes a convolution whose "kernel" is a
    whole activation map, which its convolution emitter handles poorly.
    """
    kh, kw, c, cout = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = lax.dot_general(patches.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, cout),
                        (((1,), (0,)), ((), ())))
    return y.reshape(n, ho, wo, cout)


def conv_as_shifted_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID conv as one matmul over all taps at once, then a shift-and-add of outputs.

    Z = x @ [W_00 | W_01 | ...] (every input pixel times every tap), y[i, j] = sum_{t,u}
    Z[i + t, j + u, (t, u)]. No im2col copy of the input (forward or backward); the data movement
    is on the tap-expanded output instead, which is smaller when Cout < Cin.
    """
    kh, kw, c, cout = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    wall = kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * cout)
    z = lax.dot_general(x.reshape(n * h * w, c), wall, (((1,), (0,)), ((), ())))
    z = z.reshape(n, h, w, kh * kw, cout)
    y = None
    for i in range(kh):
        for j in range(kw):
            term = z[:, i:i + ho, j:j + wo, i * kw + j]
            y = term if y is None else y + term
    return y


@jax.custom_vjp
def conv_hybrid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 VALID conv: lax.conv forward and input gradient, im2col matmul weight gradient."""
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


def _conv_hybrid_fwd(x, kernel):
    return conv_hybrid(x, kernel), (x, kernel)


def _conv_hybrid_bwd(res, dy):
    x, kernel = res
    kh, kw, c, cout = kernel.shape
    n, ho, wo, _ = dy.shape
    _, vjp_x = jax.vjp(lambda xx: lax.conv_general_dilated(xx, kernel, (1, 1), "VALID",
                                                           dimension_numbers=_DN), x)
    (dx,) = vjp_x(dy)
    patches = jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    dk = lax.dot_general(patches.reshape(n * ho * wo, kh * kw * c), dy.reshape(n * ho * wo, cout),
                         (((0,), (0,)), ((), ()))).reshape(kh, kw, c, cout)
    return dx, dk


conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def s2d_conv_zs(x: jax.Array, k2: jax.Array) -> jax.Array:
    """s2d_conv with the 2x2 conv as conv_as_shifted_matmul."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hp, wp = (h + 2) // 2, (w + 2) // 2
    s = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    return conv_as_shifted_matmul(s, k2)


def s2d_conv_mm(x: jax.Array, k2: jax.Array) -> jax.Array:
    """s2d_conv with the 2x2 conv as im2col + matmul."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hp, wp = (h + 2) // 2, (w + 2) // 2
    s = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
    return conv_as_matmul(s, k2)


def subpixel_conv_mm(x: jax.Array, k2: jax.Array, conv=None) -> jax.Array:
    """subpixel_conv with the 2x2 conv as im2col + matmul (or `conv`)."""
    n, h, w, _ = x.shape
    cout = k2.shape[-1] // 4
    y = (conv or conv_as_matmul)(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k2)
    y = y.reshape(n, h + 1, w + 1, 2, 2, cout)
    rows = [jnp.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


# Nearest x2 upsampling followed by a 3x3 SAME conv (the "resize_conv" upsample) is also a 2x2
# sub-pixel conv: along each axis output phase a reads input taps t of the zero-padded input with
# weights _NEAREST_TAPS[a][t] . w3 (rows of a 2x3 0/1 matrix), so the 3x3 kernel maps linearly to
# the (2, 2, Cin, 4*Cout) sub-pixel kernel. 16 instead of 36 MACs per (input pixel, Cin, Cout) and
# no 4x-sized upsampled intermediate.
_NEAREST_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def subpixel_kernel_from_resize_conv3x3(w3: jax.Array) -> jax.Array:
    """(3, 3, Cin, Cout) kernel of nearest-x2 + 3x3 SAME conv -> (2, 2, Cin, 4*Cout) kernel."""
    m = jnp.asarray(_NEAREST_TAPS, w3.dtype)
    cin, cout = w3.shape[2:]
    k = jnp.einsum("atd,bue,deio->tuiabo", m, m, w3)
    return k.reshape(2, 2, cin, 4 * cout)


def resize_conv3x3_mm(x: jax.Array, w3: jax.Array) -> jax.Array:
    """== nn.Conv(3x3, SAME)(jax.image.resize(x, 2x, "nearest")), as a sub-pixel matmul."""
    return subpixel_conv_mm(x, subpixel_kernel_from_resize_conv3x3(w3))


class Down(nn.Module):
    """Conv(k4, s2, p1). mode "strided": nn.Conv; "s2d": same math, kernel kept in the
    (2, 2, 4*Cin, Cout) layout (`s2d_kernel_from_conv` maps an nn.Conv kernel to it)."""

    features: int
    use_bias: bool
    mode: str

    @nn.compact
    def __call__(self, x):
        if self.mode == "strided":
            return nn.Conv(self.features, (4, 4), (2, 2), ((1, 1), (1, 1)), use_bias=self.use_bias,
                           kernel_init=_INIT, name="conv")(x)
        if self.mode == "s2d_convlayout":  # keeps the nn.Conv layout, rearranges every step
            kernel = self.param("kernel", _INIT, (4, 4, x.shape[-1], self.features))
            y = space_to_depth_conv4x4s2(x, kernel)
        else:
            k2 = self.param("kernel", _INIT, (2, 2, 4 * x.shape[-1], self.features))
            if self.mode == "s2d_hy":
                n, h, w, c = x.shape
                xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
                hp, wp = (h + 2) // 2, (w + 2) // 2
                sd = xp.reshape(n, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, 4 * c)
                y = conv_hybrid(sd, k2)
            else:
                y = {"s2d_mm": s2d_conv_mm, "s2d_zs": s2d_conv_zs}.get(self.mode, s2d_conv)(x, k2)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class Up(nn.Module):
    """torch ConvTranspose2d(k4, s2, p1). mode "transpose": nn.ConvTranspose; "subpixel": same
    math, kernel kept in the (2, 2, Cin, 4*Cout) layout (`subpixel_kernel_from_conv_transpose`)."""

    features: int
    use_bias: bool
    mode: str

    @nn.compact
    def __call__(self, x):
        if self.mode == "transpose":
            return nn.ConvTranspose(self.features, (4, 4), (2, 2), ((2, 2), (2, 2)),
                                    use_bias=self.use_bias, kernel_init=_INIT, name="conv")(x)
        if self.mode == "subpixel_convlayout":
            kernel = self.param("kernel", _INIT, (4, 4, x.shape[-1], self.features))
            y = subpixel_conv_transpose4x4s2(x, kernel)
        else:
            k2 = self.param("kernel", _INIT, (2, 2, x.shape[-1], 4 * self.features))
            if self.mode == "subpixel_zs":
                y = subpixel_conv_mm(x, k2, conv_as_shifted_matmul)
            elif self.mode == "subpixel_hy":
                y = subpixel_conv_mm(x, k2, conv_hybrid)
            else:
                y = subpixel_conv_mm(x, k2) if self.mode == "subpixel_mm" else subpixel_conv(x, k2)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class Conv4x4s1(nn.Module):
    """Conv(k4, s1, p1) with an nn.Conv-compatible parameter; mode "conv" or "mm" (im2col)."""

    features: int
    use_bias: bool
    mode: str

    @nn.compact
    def __call__(self, x):
        if self.mode == "conv":
            return nn.Conv(self.features, (4, 4), (1, 1), ((1, 1), (1, 1)), use_bias=self.use_bias,
                           kernel_init=_INIT, name="conv")(x)
        kernel = self.param("kernel", _INIT, (4, 4, x.shape[-1], self.features))
        fn = {"zs": conv_as_shifted_matmul, "hy": conv_hybrid}.get(self.mode, conv_as_matmul)
        y = fn(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class BatchNorm(nn.Module):
    """Training-mode BatchNorm2d over NHWC, torch semantics (eps 1e-5, momentum 0.1, unbiased
    running variance). `groups` > 1 normalises each contiguous batch chunk with its own
    statistics, i.e. G separate torch forwards in one call; running stats are updated as if
    those forwards ran one after another."""

    groups: int = 1
    fast_variance: bool = True

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        xg = x.reshape(self.groups, -1, c)
        count = xg.shape[1]
        mean = jnp.mean(xg, axis=1, keepdims=True)
        if self.fast_variance:
            var = jnp.maximum(jnp.mean(jnp.square(xg), axis=1, keepdims=True) - jnp.square(mean), 0.0)
        else:
            var = jnp.mean(jnp.square(xg - mean), axis=1, keepdims=True)
        mul = scale * lax.rsqrt(var + 1e-5)
        y = xg * mul + (bias - mean * mul)
        if not self.is_initializing():
            m, v = ra_mean.value, ra_var.value
            unbiased = var[:, 0] * (count / max(count - 1, 1))
            for gi in range(self.groups):
                m = 0.9 * m + 0.1 * mean[gi, 0]
                v = 0.9 * v + 0.1 * unbiased[gi]
            ra_mean.value, ra_var.value = m, v
        return y.reshape(x.shape)


def _bn(opts: Options, name: str, groups: int = 1):
    return BatchNorm(groups=groups, fast_variance=opts.bn_fast_variance, name=name)


class UNet(nn.Module):
    """The reference UnetGenerator with num_downs = log2(resolution)."""

    num_downs: int
    opts: Options
    ngf: int = 64
    out_ch: int = 3

    @nn.compact
    def __call__(self, x, *, train: bool = True):
        o, ngf = self.opts, self.ngf
        widths = [ngf, ngf * 2, ngf * 4] + [ngf * 8] * (self.num_downs - 3)
        skips = []
        h = x
        for i, f in enumerate(widths):
            if i > 0:
                h = nn.leaky_relu(h, 0.2)
            h = Down(f, use_bias=(i == 0), mode=o.down, name=f"down{i}")(h)
            if 0 < i < self.num_downs - 1:
                h = _bn(o, f"down_bn{i}")(h)
            skips.append(h)
        # Decoder: innermost first. Level i's up conv maps to the width of level i-1 (or out_ch).
        n = self.num_downs
        for i in reversed(range(n)):
            if i < n - 1:
                h = jnp.concatenate([skips[i], h], axis=-1)
            h = nn.relu(h)
            f = widths[i - 1] if i > 0 else self.out_ch
            h = Up(f, use_bias=(i == 0), mode=o.up, name=f"up{i}")(h)
            if i == 0:
                return jnp.tanh(h)
            h = _bn(o, f"up_bn{i}")(h)
            # Dropout on the num_downs-5 levels just above the innermost one.
            if o.dropout > 0 and n - 1 - (n - 5) <= i < n - 1:
                h = nn.Dropout(o.dropout, deterministic=not train)(h)
        raise AssertionError("unreachable")


class PatchGAN(nn.Module):
    """The reference NLayerDiscriminator, n_layers=3 (70x70 receptive field)."""

    opts: Options
    ndf: int = 64

    @nn.compact
    def __call__(self, x, groups: int = 1):
        o = self.opts
        h = nn.leaky_relu(Down(self.ndf, True, o.down, name="c0")(x), 0.2)
        h = Down(self.ndf * 2, False, o.down, name="c1")(h)
        h = nn.leaky_relu(_bn(o, "bn1", groups)(h), 0.2)
        h = Down(self.ndf * 4, False, o.down, name="c2")(h)
        h = nn.leaky_relu(_bn(o, "bn2", groups)(h), 0.2)
        h = Conv4x4s1(self.ndf * 8, False, o.d_s1, name="c3")(h)
        h = nn.leaky_relu(_bn(o, "bn3", groups)(h), 0.2)
        return Conv4x4s1(1, True, o.d_s1, name="c4")(h)


def scale_by_adam_barrier(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                          ) -> optax.GradientTransformation:
    """optax.scale_by_adam (same state, same math) with an optimization barrier on the moments.

    Without it XLA:CPU duplicates the cheap moment update into the fusion that computes the
    parameter update, so the old moments stay live while the new ones are written into the
    donated buffers, and it inserts a full copy of mu (and of the params) per leaf first. The
    barrier makes each moment be computed once, in place; the parameter update then fuses with
    optax.apply_updates into one read-mu/nu/p, write-p pass.
    """
    base = optax.scale_by_adam(b1, b2, eps)

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * jnp.square(g), updates, state.nu)
        mu, nu = lax.optimization_barrier((mu, nu))
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        out = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(base.init, update_fn)


def make_adam(opts: "Options", lr: float = 2e-4, b1: float = 0.5, b2: float = 0.999, eps: float = 1e-8):
    if opts.adam == "barrier":
        return optax.chain(scale_by_adam_barrier(b1, b2, eps), optax.scale_by_learning_rate(lr))
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def gan_loss(logits, target_is_real: bool, mode: str):
    if mode == "vanilla":
        t = 1.0 if target_is_real else 0.0
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, t)))
    return jnp.mean(jnp.square(logits - (1.0 if target_is_real else 0.0)))


def create(resolution: int, opts: Options, seed: int = 0):
    """Returns (g_model, d_model, tx, state) with state a dict pytree."""
    n = int(np.log2(resolution))
    g = UNet(n, opts)
    d = PatchGAN(opts)
    kg, kd = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, resolution, resolution, 3))
    gv = g.init({"params": kg, "dropout": kg}, x)
    dv = d.init(kd, jnp.zeros((1, resolution, resolution, 6)))
    tx = make_adam(opts)
    state = dict(g_params=gv["params"], g_bs=gv["batch_stats"], d_params=dv["params"],
                 d_bs=dv["batch_stats"], g_opt=tx.init(gv["params"]), d_opt=tx.init(dv["params"]),
                 step=jnp.zeros((), jnp.int32))
    return g, d, tx, state


def make_train_step(g: UNet, d: PatchGAN, tx, opts: Options, lambda_l1: float = 100.0,
                    donate: bool = True, rng_seed: int = 0):
    """One jitted function: G forward, D update on (fake.detach, real), G update via updated D."""
    base_key = jax.random.PRNGKey(rng_seed)

    def step(state, a, b):
        key = jax.random.fold_in(base_key, state["step"])

        def g_fwd(gp):
            fake, upd = g.apply({"params": gp, "batch_stats": state["g_bs"]}, a, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
            return fake, upd["batch_stats"]

        fake, g_vjp, g_bs = jax.vjp(g_fwd, state["g_params"], has_aux=True)
        fake_ab = jnp.concatenate([a, lax.stop_gradient(fake)], -1)
        real_ab = jnp.concatenate([a, b], -1)

        def d_loss(dp):
            if opts.d_batched:
                # One D call on [fake; real]: per-group BN statistics, so it is the same as two calls.
                out, upd = d.apply({"params": dp, "batch_stats": state["d_bs"]},
                                   jnp.concatenate([fake_ab, real_ab], 0), 2, mutable=["batch_stats"])
                bs = upd["batch_stats"]
                pf, pr = jnp.split(out, 2, axis=0)
            else:
                pf, u1 = d.apply({"params": dp, "batch_stats": state["d_bs"]}, fake_ab, mutable=["batch_stats"])
                pr, u2 = d.apply({"params": dp, "batch_stats": u1["batch_stats"]}, real_ab,
                                 mutable=["batch_stats"])
                bs = u2["batch_stats"]
            loss = 0.5 * (gan_loss(pf, False, opts.gan_mode) + gan_loss(pr, True, opts.gan_mode))
            return loss, bs

        (loss_d, d_bs), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state["d_params"])
        d_upd, d_opt = tx.update(d_grads, state["d_opt"], state["d_params"])
        d_params = optax.apply_updates(state["d_params"], d_upd)

        def g_loss(fk):
            pf, upd = d.apply({"params": d_params, "batch_stats": d_bs},
                              jnp.concatenate([a, fk], -1), mutable=["batch_stats"])
            l_gan = gan_loss(pf, True, opts.gan_mode)
            l_l1 = lambda_l1 * jnp.mean(jnp.abs(fk - b))
            return l_gan + l_l1, (upd["batch_stats"], l_gan, l_l1)

        (_, (d_bs, l_gan, l_l1)), d_fake = jax.value_and_grad(g_loss, has_aux=True)(fake)
        (g_grads,) = g_vjp(d_fake)
        g_upd, g_opt = tx.update(g_grads, state["g_opt"], state["g_params"])
        g_params = optax.apply_updates(state["g_params"], g_upd)
        new = dict(g_params=g_params, g_bs=g_bs, d_params=d_params, d_bs=d_bs, g_opt=g_opt,
                   d_opt=d_opt, step=state["step"] + 1)
        return new, {"loss_d": loss_d, "loss_g_gan": l_gan, "loss_g_l1": l_l1}

    return jax.jit(step, donate_argnums=(0,) if donate else ())


# ----------------------------------------------------------------------------------------------
# Exact weight transfer from the torch reference, for equivalence checks.

def _torch_convs_and_bns(module) -> tuple[list, list]:
    import torch  # noqa: F401  (only for the checks)
    convs, bns = [], []
    for m in module.modules():
        name = m.__class__.__name__
        if name in ("Conv2d", "ConvTranspose2d"):
            convs.append(m)
        elif name == "BatchNorm2d":
            bns.append(m)
    return convs, bns


def load_torch_weights(state: dict, torch_model, resolution: int) -> dict:
    """Copies a Pix2PixTorch's weights into `state` (same architecture, flax layouts)."""
    n = int(np.log2(resolution))

    def conv_w(m):
        w = m.weight.detach().numpy()
        if m.__class__.__name__ == "ConvTranspose2d":  # (Cin, Cout, kh, kw) -> flipped HWIO
            return jnp.asarray(w.transpose(2, 3, 0, 1)[::-1, ::-1].copy())
        return jnp.asarray(w.transpose(2, 3, 1, 0))  # (Cout, Cin, kh, kw) -> HWIO

    def set_conv(tree, m):
        inner = tree["conv"] if "conv" in tree else tree
        k = conv_w(m)
        if inner["kernel"].shape[0] == 2:  # fast layouts
            transposed = m.__class__.__name__ == "ConvTranspose2d"
            k = subpixel_kernel_from_conv_transpose(k) if transposed else s2d_kernel_from_conv(k)
        inner["kernel"] = k
        if m.bias is not None:
            inner["bias"] = jnp.asarray(m.bias.detach().numpy())

    def set_bn(tree, m):
        tree["scale"] = jnp.asarray(m.weight.detach().numpy())
        tree["bias"] = jnp.asarray(m.bias.detach().numpy())

    gp = jax.tree.map(lambda x: x, state["g_params"])  # fresh nested dicts to fill in
    # Torch modules are visited outermost level first: down0, [submodule...], up0.
    convs, bns = _torch_convs_and_bns(torch_model.net_g)
    # Order of convs: level 0 down, level 1 down, ..., level n-1 down, level n-1 up, ..., level 0 up.
    # (nn.Sequential lists down_conv, then submodule, then up_conv.)
    downs, ups = convs[:n], convs[n:][::-1]
    for i in range(n):
        set_conv(gp[f"down{i}"], downs[i])
        set_conv(gp[f"up{i}"], ups[i])
    # BN order: level i down_bn (1..n-2), then inner levels, then level i up_bn on the way out.
    bn_iter = iter(bns)
    down_bns, up_bns = {}, {}
    for i in range(1, n - 1):
        down_bns[i] = next(bn_iter)
    for i in range(n - 1, 0, -1):
        up_bns[i] = next(bn_iter)
    for i, m in down_bns.items():
        set_bn(gp[f"down_bn{i}"], m)
    for i, m in up_bns.items():
        set_bn(gp[f"up_bn{i}"], m)

    dp = jax.tree.map(lambda x: x, state["d_params"])
    convs, bns = _torch_convs_and_bns(torch_model.net_d)
    for i, m in enumerate(convs):
        set_conv(dp[f"c{i}"], m)
    for i, m in enumerate(bns, start=1):
        set_bn(dp[f"bn{i}"], m)
    tx = optax.adam(2e-4, b1=0.5, b2=0.999, eps=1e-8)
    return dict(state, g_params=gp, d_params=dp, g_opt=tx.init(gp), d_opt=tx.init(dp))
