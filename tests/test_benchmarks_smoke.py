"""Smoke tests of benchmarks/: the equivalent-layer formulations and the timing harness.

The benchmarks themselves do not run in CI (they need torch and minutes); these check that the
fast formulations of the pix2pix layers compute exactly what the reference layers compute, so a
benchmark never times a different function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import jax_pix2pix_scratch as S
from benchmarks import train_step

_DN = ("NHWC", "HWIO", "NHWC")


def _rand(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


@pytest.mark.parametrize("fn,to_fast", [(S.subpixel_conv, S.subpixel_kernel_from_conv_transpose),
                                        (S.subpixel_conv_mm, S.subpixel_kernel_from_conv_transpose)])
def test_subpixel_equals_conv_transpose_with_gradients(fn, to_fast):
    x, k = _rand(0, (2, 5, 6, 7)), _rand(1, (4, 4, 7, 3))

    def ref(x, k):  # flax nn.ConvTranspose(k4, s2, padding=((2, 2), (2, 2))) == torch k4 s2 p1
        return lax.conv_transpose(x, k, (2, 2), ((2, 2), (2, 2)), dimension_numbers=_DN,
                                  precision="highest")

    def fast(x, k):
        return fn(x, to_fast(k))

    with jax.default_matmul_precision("highest"):
        y_ref, y = ref(x, k), fast(x, k)
        assert y.shape == (2, 10, 12, 3)
        np.testing.assert_allclose(y, y_ref, atol=1e-4)
        loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
        g_ref, g = jax.grad(loss(ref), (0, 1))(x, k), jax.grad(loss(fast), (0, 1))(x, k)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("fn", [S.s2d_conv, S.s2d_conv_mm])
def test_space_to_depth_equals_strided_conv(fn):
    x, k = _rand(2, (2, 8, 10, 3)), _rand(3, (4, 4, 3, 5))
    with jax.default_matmul_precision("highest"):
        ref = lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DN)
        y = fn(x, S.s2d_kernel_from_conv(k))
    assert y.shape == ref.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(y, ref, atol=1e-4)


def test_grouped_batchnorm_matches_separate_calls():
    x = _rand(4, (4, 3, 3, 6)) * 3 + 1
    bn = S.BatchNorm(groups=2)
    variables = bn.init(jax.random.PRNGKey(0), x)
    y, _ = bn.apply(variables, x, mutable=["batch_stats"])
    one = S.BatchNorm(groups=1)
    y0, _ = one.apply(variables, x[:2], mutable=["batch_stats"])
    y1, _ = one.apply(variables, x[2:], mutable=["batch_stats"])
    np.testing.assert_allclose(y, jnp.concatenate([y0, y1]), atol=1e-5)


def test_time_alternating_and_summary():
    calls = []
    times = train_step.time_alternating({"jax": lambda: calls.append("j"),
                                         "torch": lambda: calls.append("t")}, warmup=1, repeats=3)
    assert calls == ["j", "t"] * 4
    assert len(times["jax"]) == len(times["torch"]) == 3
    rec = {"config": "pix2pix", "impl": "project", "resolution": 128, "batch_size": 1,
           "jax_images_per_s": 4.0, "compile_s": 9.0, "torch_images_per_s": 2.0, "ratio": 2.0,
           "flops_per_image": 2e11, "machine": {"cpu_model": "X", "threads": 2}}
    assert "ratio jax/torch 2.00" in train_step.summary_line(rec)


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError, match="power of two"):
        train_step.run_benchmark("pix2pix", "project", 100, 1, 1, 0, 1, False)


def test_resize_conv_equals_subpixel_form():
    x, w3 = _rand(5, (2, 4, 5, 3)), _rand(6, (3, 3, 3, 4))
    with jax.default_matmul_precision("highest"):
        up = jax.image.resize(x, (2, 8, 10, 3), method="nearest")
        ref = lax.conv_general_dilated(up, w3, (1, 1), "SAME", dimension_numbers=_DN)
        y = S.resize_conv3x3_mm(x, w3)
    assert y.shape == ref.shape == (2, 8, 10, 4)
    np.testing.assert_allclose(y, ref, atol=1e-4)
