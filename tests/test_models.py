"""Generator / discriminator architecture and every config's train step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import deocc, pix2pix, realtime, reference, tiny, unet_l1
from deocc_jax import models
from deocc_jax.training import sharding, steps, train_lib
from deocc_jax.models import layers, patchgan

CONFIGS = {"unet_l1": unet_l1, "pix2pix": pix2pix, "deocc": deocc, "tiny": tiny,
           "reference": reference, "realtime": realtime}


def _conv_from_s2d_kernel(k2: jax.Array) -> jax.Array:
    """Inverse of `layers.s2d_kernel_from_conv`."""
    c, co = k2.shape[2] // 4, k2.shape[3]
    return k2.reshape(2, 2, 2, 2, c, co).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, c, co)


def _conv_transpose_from_subpixel_kernel(k2: jax.Array) -> jax.Array:
    """Inverse of `layers.subpixel_kernel_from_conv_transpose`."""
    c, co = k2.shape[2], k2.shape[3] // 4
    return k2.reshape(2, 2, c, 2, 2, co).transpose(0, 3, 1, 4, 2, 5).reshape(4, 4, c, co)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def test_pix2pix_matches_reference_sizes():
    # The PyTorch reference prints 54.414 M (unet_256) and 2.769 M (basic D, 6 input channels).
    # Ours has 576 more: biases on the outermost and innermost encoder convs, which no norm
    # follows (PyTorch drops every conv bias when the model uses batch norm).
    c = pix2pix.get_config()
    x = jnp.zeros((1, 256, 256, 3))
    g = jax.eval_shape(lambda: models.build_generator(c).init(jax.random.key(0), x))
    d = jax.eval_shape(lambda: models.build_discriminator(c).init(jax.random.key(0), x, x))
    assert _count(g["params"]) == 54_413_955 + 576
    assert round(_count(d["params"]) / 1e6, 3) == 2.769
    logits = jax.eval_shape(lambda v: models.build_discriminator(c).apply(v, x, x), d)[0]["logits"]
    assert logits.shape == (1, 30, 30, 1)  # pix2pix's 30x30 patch map at 256 px


def test_patchgan_receptive_field_is_70_at_256():
    assert patchgan.receptive_field(3) == 70
    assert [patchgan.n_layers_for_resolution(r) for r in (32, 64, 128, 256, 512)] == [1, 1, 2, 3, 4]
    d = patchgan.PatchGAN(base_width=4, n_layers=3, norm="none")
    x = jnp.zeros((1, 128, 128, 3))
    v = jax.jit(d.init)(jax.random.key(0, impl="rbg"), x, x)

    def center_logit(img):
        out = d.apply(v, x, img)["logits"]
        return out[0, out.shape[1] // 2, out.shape[2] // 2, 0]

    g = np.abs(np.asarray(jax.jit(jax.grad(center_logit))(
        jax.random.normal(jax.random.key(1, impl="rbg"), x.shape))))
    rows = np.nonzero(g.sum(axis=(0, 2, 3)))[0]
    cols = np.nonzero(g.sum(axis=(0, 1, 3)))[0]
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_local_critic_sees_only_its_face_part():
    c = CONFIGS["realtime"].get_config("runlocal")
    c.resolution = 64
    c.model.discriminator.local_parts = "mouth,eyes"
    d = models.build_discriminator(c)
    x = jnp.zeros((1, 64, 64, 3))
    v = jax.jit(d.init)(jax.random.key(0, impl="rbg"), x, x)
    assert "local_mouth" in v["params"]
    n_scales = c.model.discriminator.num_scales

    def local_logits(img):
        return d.apply(v, x, img)[n_scales]["logits"].sum()

    g = np.abs(np.asarray(jax.grad(local_logits)(
        jax.random.normal(jax.random.key(1, impl="rbg"), x.shape)))).sum(axis=(0, 3))
    t, b, l, r = patchgan.part_box("mouth", 64, 64)
    assert g[t:b, l:r].sum() > 0
    outside = g.copy()
    outside[t:b, l:r] = 0
    assert outside.sum() == 0
    assert patchgan.part_box("eyes", 128, 128) == (40, 80, 24, 104)  # even through the strides
    with pytest.raises(ValueError, match="unknown part"):
        patchgan.parse_parts("mouth,nose")


@pytest.mark.parametrize("upsample,norm", [("resize_conv", "instance"), ("resize_conv", "group"),
                                          ("resize_conv", "none"), ("conv_transpose", "batch")])
def test_unet_shapes(upsample, norm):
    net = models.UNet(base_width=8, depth=4, max_width=32, norm=norm, up=models.UPSAMPLERS[upsample],
                      self_attention_stride=8, attention_gates=True)
    x = jnp.zeros((2, 32, 32, 3))
    v = jax.eval_shape(net.init, jax.random.key(0), x)
    out = jax.eval_shape(net.apply, v, x)
    assert out["rgb"].shape == (2, 32, 32, 3) and out["mask_logits"].shape == (2, 32, 32, 1)
    assert ("batch_stats" in v) == (norm == "batch")


def test_unet_runs_with_attention():
    net = models.UNet(base_width=8, depth=4, max_width=32, norm="batch",
                      self_attention_stride=8, attention_gates=True)
    x = jax.random.uniform(jax.random.key(0, impl="rbg"), (2, 32, 32, 3), minval=-1, maxval=1)
    v = jax.jit(net.init)(jax.random.key(1, impl="rbg"), x)
    out = jax.jit(net.apply)(v, x)
    assert out["rgb"].shape == (2, 32, 32, 3) and out["mask_logits"].shape == (2, 32, 32, 1)
    assert float(jnp.abs(out["rgb"]).max()) <= 1.0 and float(jnp.std(out["rgb"])) > 0
    assert any("attn" in k for k in v["params"]) and any("gate" in k for k in v["params"])
    with pytest.raises(ValueError, match="divisible"):
        net.apply(v, x[:, :30, :30])


def test_guided_mode_keeps_pixels_outside_the_mask():
    c = tiny.get_config()
    c.model.mode = "guided"
    variables = jax.jit(functools.partial(models.init_generator, c))(jax.random.key(0, impl="rbg"))
    images = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    masks = jnp.zeros((2, 32, 32, 1), jnp.uint8).at[:, 16:, 8:24].set(255)
    out = jax.jit(functools.partial(models.predict, c))(variables, images, masks)
    outside = np.asarray(masks[..., 0]) == 0
    np.testing.assert_array_equal(np.asarray(out["deoccluded"])[outside], np.asarray(images)[outside])
    assert not np.array_equal(np.asarray(out["deoccluded"])[~outside], np.asarray(images)[~outside])
    np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(masks) / 255.0)
    with pytest.raises(ValueError, match="needs masks_uint8"):
        models.predict(c, variables, images)


def test_blind_mode_predicts_mask_and_composites():
    c = tiny.get_config()
    variables = jax.jit(functools.partial(models.init_generator, c))(jax.random.key(0, impl="rbg"))
    images = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    out = jax.jit(functools.partial(models.predict, c))(variables, images)
    assert out["deoccluded"].dtype == jnp.uint8 and out["mask"].dtype == jnp.float32
    m = np.asarray(out["mask"])
    assert m.shape == (2, 32, 32, 1) and 0 <= m.min() and m.max() <= 1 and m.std() > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("variant", [None, "runlocal"])
def test_every_config_traces_a_train_step(name, variant):
    c = CONFIGS[name].get_config(variant)
    c.data_dir = "unused"
    if variant is None and c.resolution > 64:
        c.resolution, c.batch_size = 64, 8  # architecture at full width, smaller images
        if c.model.generator.depth:
            c.model.generator.depth = min(c.model.generator.depth, 6)
    mesh = sharding.make_mesh(jax.devices()[:1])
    setup = train_lib.build_setup(c, mesh)
    assert (setup.modules.discriminator is None) == (name == "unet_l1")
    r, b = c.resolution, c.batch_size
    batch = {"clean": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8),
             "occluded": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8),
             "mask": jax.ShapeDtypeStruct((b, r, r, 1), jnp.uint8)}
    step = functools.partial(steps.train_step, config=c, modules=setup.modules)
    new_state, m = jax.eval_shape(step, setup.abstract_state, batch)
    assert "g_l1" in m and (("d_loss" in m) == (name != "unet_l1"))
    assert jax.tree.structure(new_state) == jax.tree.structure(setup.abstract_state)


def test_bfloat16_compute_keeps_float32_params():
    c = tiny.get_config()
    c.model.compute_dtype = "bfloat16"
    v = jax.eval_shape(lambda: models.init_generator(c, jax.random.key(0)))
    assert {x.dtype for x in jax.tree.leaves(v["params"])} == {jnp.dtype("float32")}
    x = jnp.zeros((1, 32, 32, 3))
    out = jax.eval_shape(lambda: models.build_generator(c).apply(
        models.init_generator(c, jax.random.key(0)), x))
    assert out["rgb"].dtype == jnp.float32


# ---- Convolution layers: matmul == xla_conv == the flax reference (nn.Conv / nn.ConvTranspose) ----

def _values_and_grads(fn, variables, x):
    """Output, d(sum(out * probe))/d(x, params) for a fixed random probe."""
    out = fn(variables, x)
    probe = jax.random.normal(jax.random.key(7), out.shape)
    grads = jax.grad(lambda v, x: jnp.sum(fn(v, x) * probe), argnums=(0, 1))(variables, x)
    return out, grads


def _ref_down(k2, x):
    kernel = _conv_from_s2d_kernel(k2)
    return nn.Conv(k2.shape[-1], (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                   use_bias=False).apply({"params": {"kernel": kernel}}, x)


def _ref_up(k2, x):
    kernel = _conv_transpose_from_subpixel_kernel(k2)
    return nn.ConvTranspose(k2.shape[-1] // 4, (4, 4), strides=(2, 2), padding="SAME",
                            use_bias=False).apply({"params": {"kernel": kernel}}, x)


def _ref_resize(w3, x):
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
    return nn.Conv(w3.shape[-1], (3, 3), padding="SAME", use_bias=False).apply(
        {"params": {"kernel": w3}}, x)


def _ref_conv(kernel_size, padding):
    def ref(kernel, x):
        return nn.Conv(kernel.shape[-1], kernel_size, padding=padding, use_bias=False).apply(
            {"params": {"kernel": kernel}}, x)
    return ref


@pytest.mark.parametrize("name,make,ref", [
    ("down", lambda impl: layers.DownConv(features=5, use_bias=False, impl=impl), _ref_down),
    ("up", lambda impl: layers.UpConv(features=5, use_bias=False, impl=impl), _ref_up),
    ("resize", lambda impl: layers.ResizeConv(features=5, use_bias=False, impl=impl), _ref_resize),
    ("resize_small", lambda impl: layers.ResizeConv(features=5, use_bias=False, impl=impl),
     lambda w3, x: _ref_resize(w3, x)),
    ("conv4_p1", lambda impl: layers.Conv(features=5, use_bias=False, impl=impl, kernel_size=(4, 4),
                                          padding=((1, 1), (1, 1))), _ref_conv((4, 4), ((1, 1), (1, 1)))),
    ("conv4_same", lambda impl: layers.Conv(features=5, use_bias=False, impl=impl, kernel_size=(4, 4)),
     _ref_conv((4, 4), "SAME")),
    ("conv3_same", lambda impl: layers.Conv(features=5, use_bias=False, impl=impl, kernel_size=(3, 3)),
     _ref_conv((3, 3), "SAME")),
    ("conv1", lambda impl: layers.Conv(features=5, use_bias=False, impl=impl, kernel_size=(1, 1)),
     _ref_conv((1, 1), "SAME")),
])
def test_conv_layers_match_flax_reference(name, make, ref):
    # resize_small stays below layers._SUBPIXEL_MIN_PIXELS: ResizeConv's im2col branch.
    shape = (2, 4, 6, 3) if name == "resize_small" else (2, 12, 16, 3)
    assert (name != "resize_small") == (shape[1] * shape[2] >= layers._SUBPIXEL_MIN_PIXELS)
    x = jax.random.normal(jax.random.key(0), shape)
    variables = make("matmul").init(jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(make("xla_conv").init(jax.random.key(1), x))
    results = {impl: _values_and_grads(jax.jit(make(impl).apply), variables, x)
               for impl in ("matmul", "xla_conv")}
    results["flax"] = _values_and_grads(
        jax.jit(lambda v, x: ref(v["params"]["kernel"], x)), variables, x)
    expected = results["flax"]
    assert float(jnp.abs(expected[0]).max()) > 0.01  # a non-trivial output to compare
    for impl in ("matmul", "xla_conv"):
        for got, want in zip(jax.tree.leaves(results[impl]), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5,
                                       err_msg=f"{name} {impl}")


def test_kernel_layout_bijections_round_trip():
    k = jax.random.normal(jax.random.key(0), (4, 4, 3, 5))
    assert layers.s2d_kernel_from_conv(k).shape == (2, 2, 12, 5)
    assert layers.subpixel_kernel_from_conv_transpose(k).shape == (2, 2, 3, 20)
    np.testing.assert_array_equal(_conv_from_s2d_kernel(layers.s2d_kernel_from_conv(k)), k)
    np.testing.assert_array_equal(
        _conv_transpose_from_subpixel_kernel(layers.subpixel_kernel_from_conv_transpose(k)), k)


def test_conv_bias_dtype_and_bad_impl():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    conv = layers.DownConv(features=3, dtype=jnp.bfloat16, impl="matmul")
    v = conv.init(jax.random.key(1), x)
    assert v["params"]["bias"].shape == (3,) and v["params"]["kernel"].dtype == jnp.float32
    assert conv.apply(v, x).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        layers.DownConv(features=3, impl="cudnn").init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="even height and width"):
        layers.DownConv(features=3, impl="matmul").init(jax.random.key(1), x[:, :3])
    assert layers.resolve_conv_impl("auto") == ("matmul" if jax.default_backend() == "cpu"
                                                else "xla_conv")


@pytest.mark.parametrize("name", ["pix2pix", "deocc"])
def test_models_same_params_and_outputs_under_both_conv_impls(name):
    # Checkpoints are portable between CPU (matmul) and GPU (xla_conv): same tree, same function,
    # including spectral norm's power iteration (deocc's discriminator).
    c = CONFIGS[name].get_config("runlocal")
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    outs = {}
    for impl in ("matmul", "xla_conv"):
        c.model.conv_impl = impl
        g, d = models.build_generator(c), models.build_discriminator(c)
        gv = g.init(jax.random.key(1), x)
        dv = d.init(jax.random.key(2), x, x)
        rgb = g.apply(gv, x)["rgb"]
        d_out, d_state = d.apply(dv, x, rgb, train=True, mutable=["batch_stats"])
        outs[impl] = (gv, dv, rgb, [o["logits"] for o in d_out], d_state)
    for got, want in zip(jax.tree.leaves(outs["matmul"]), jax.tree.leaves(outs["xla_conv"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)
    assert jax.tree.structure(outs["matmul"]) == jax.tree.structure(outs["xla_conv"])
    with pytest.raises(ValueError, match="conv_impl"):
        c.model.conv_impl = "fast"
        models.build_generator(c)


def test_pix2pix_128_param_counts_match_reference():
    c = pix2pix.get_config()
    c.resolution = 128
    x = jnp.zeros((1, 128, 128, 3))
    g = jax.eval_shape(lambda: models.build_generator(c).init(jax.random.key(0), x))
    d = jax.eval_shape(lambda: models.build_discriminator(c).init(jax.random.key(0), x, x))
    # PyTorch's unet_128: 41_828_995; + 576 biases on the convs no norm follows (see above).
    assert _count(g["params"]) == 41_828_995 + 576 and _count(d["params"]) == 2_768_705


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_bias_in_a_conv_that_a_norm_follows(name):
    # The norm subtracts the per-channel mean, so such a bias only collects rounding noise
    # that Adam turns into +-lr steps (and makes multi-device runs disagree).
    c = CONFIGS[name].get_config("runlocal")
    x = jnp.zeros((1, 32, 32, 3))
    g = jax.eval_shape(lambda: models.build_generator(c).init(jax.random.key(0), x))["params"]
    norm = c.model.generator.norm
    depth = models.generator_depth(c)
    normed = [f"down{i}" for i in range(1, depth - 1)] + [f"up{i}" for i in range(depth - 1)]
    for layer in normed:
        assert ("bias" in g[layer]) == (norm == "none"), (name, layer)
    assert "bias" in g["down0"] and "bias" in g[f"down{depth - 1}"] and "bias" in g["out"]


def test_instance_norm_equals_flax_group_norm():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6)) * 3 + 1
    ref = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, use_bias=False, use_scale=False)
    want = ref.apply({}, x)
    got = layers.Norm(kind="instance").apply({}, x, train=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    gw = jax.grad(lambda x: jnp.sum(ref.apply({}, x) * x))(x)
    gg = jax.grad(lambda x: jnp.sum(layers.Norm(kind="instance").apply({}, x, train=True) * x))(x)
    np.testing.assert_allclose(np.asarray(gg), np.asarray(gw), atol=1e-4, rtol=1e-4)
