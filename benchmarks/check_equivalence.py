"""Checks that the scratch JAX formulations compute the torch reference's training step.

  python -m benchmarks.check_equivalence [RESOLUTION]   (default 64; needs torch)

Loads a `Pix2PixTorch`'s initial weights into each formulation of `jax_pix2pix_scratch`, runs 3
training steps on the same random batch in both (dropout off, since the frameworks draw different
masks), and prints the losses side by side and parameter / BatchNorm-statistic differences. Step-0
losses agree to ~1e-6 relative; later steps drift slightly through Adam's normalisation of tiny
gradients (the same drift for every formulation, the baseline included).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from benchmarks import jax_pix2pix_scratch as S
from benchmarks.torch_pix2pix import Pix2PixTorch

FORMULATIONS = [
    S.Options(dropout=0.0),  # C: the fast CPU formulation
    S.Options(dropout=0.0, down="strided", up="transpose", d_batched=False, d_s1="conv"),  # A
    S.Options(dropout=0.0, down="s2d_convlayout", up="subpixel_convlayout", d_batched=False),
    S.Options(dropout=0.0, gan_mode="lsgan", adam="barrier"),
]


def check_layers(rng):
    x = rng.standard_normal((2, 7, 5, 6)).astype(np.float32)
    wt = rng.standard_normal((7, 3, 4, 4)).astype(np.float32)  # ConvTranspose2d (Cin, Cout, kh, kw)
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(wt), stride=2, padding=1)
    ref = ref.numpy().transpose(0, 2, 3, 1)
    kf = jnp.asarray(wt.transpose(2, 3, 0, 1)[::-1, ::-1].copy())
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    y = S.subpixel_conv_mm(xj, S.subpixel_kernel_from_conv_transpose(kf))
    y_lax = lax.conv_transpose(xj, kf, (2, 2), ((2, 2), (2, 2)), dimension_numbers=S._DN)
    print("sub-pixel vs torch ConvTranspose2d: max |diff|", np.abs(np.asarray(y) - ref).max(),
          "; lax.conv_transpose vs torch:", np.abs(np.asarray(y_lax) - ref).max())
    x = rng.standard_normal((2, 7, 8, 10)).astype(np.float32)
    wc = rng.standard_normal((5, 7, 4, 4)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(wc), stride=2, padding=1)
    ref = ref.numpy().transpose(0, 2, 3, 1)
    y = S.s2d_conv_mm(jnp.asarray(x.transpose(0, 2, 3, 1)),
                      S.s2d_kernel_from_conv(jnp.asarray(wc.transpose(2, 3, 1, 0))))
    print("space-to-depth vs torch Conv2d(4, 2, 1): max |diff|", np.abs(np.asarray(y) - ref).max())


def check_steps(res, rng):
    for opts in FORMULATIONS:
        tm = Pix2PixTorch(resolution=res, use_dropout=False, gan_mode=opts.gan_mode)
        g, d, tx, st = S.create(res, opts)
        st = S.load_torch_weights(st, tm, res)
        step = S.make_train_step(g, d, tx, opts, donate=False)
        a = rng.uniform(-1, 1, (2, 3, res, res)).astype(np.float32)
        b = rng.uniform(-1, 1, (2, 3, res, res)).astype(np.float32)
        print(f"{opts.down}/{opts.up}/d_s1={opts.d_s1}/d_batched={opts.d_batched}/{opts.gan_mode}/{opts.adam}")
        for it in range(3):
            lt = tm.train_step(torch.tensor(a), torch.tensor(b))
            st, lj = step(st, jnp.asarray(a.transpose(0, 2, 3, 1)), jnp.asarray(b.transpose(0, 2, 3, 1)))
            print(f"  step {it} (torch, jax):", {k: (round(float(lt[k]), 6), round(float(lj[k]), 6)) for k in lt})
        bn = tm.net_d[3]
        print("  D bn1 running mean / var max |diff|:",
              np.abs(np.asarray(st["d_bs"]["bn1"]["mean"]) - bn.running_mean.numpy()).max(),
              np.abs(np.asarray(st["d_bs"]["bn1"]["var"]) - bn.running_var.numpy()).max())


def main():
    res = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)
    check_layers(rng)
    check_steps(res, rng)


if __name__ == "__main__":
    main()
