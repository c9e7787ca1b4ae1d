"""Generator / discriminator architecture and every config's train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import deocc, pix2pix, tiny, unet_l1
from deocc_jax import inference, models, train_lib
from deocc_jax.models import patchgan

CONFIGS = {"unet_l1": unet_l1, "pix2pix": pix2pix, "deocc": deocc, "tiny": tiny}


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def test_pix2pix_matches_reference_sizes():
    # The PyTorch reference prints 54.414 M (unet_256) and 2.769 M (basic D, 6 input channels).
    c = pix2pix.get_config()
    x = jnp.zeros((1, 256, 256, 3))
    g = jax.eval_shape(lambda: models.build_generator(c).init(jax.random.key(0), x))
    d = jax.eval_shape(lambda: models.build_discriminator(c).init(jax.random.key(0), x, x))
    assert round(_count(g["params"]) / 1e6, 3) == 54.414
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


@pytest.mark.parametrize("upsample,norm", [("resize_conv", "instance"), ("resize_conv", "group"),
                                          ("resize_conv", "none"), ("conv_transpose", "batch")])
def test_unet_shapes(upsample, norm):
    net = models.UNet(base_width=8, depth=4, max_width=32, norm=norm, upsample=upsample,
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
    variables = jax.jit(functools.partial(inference.init_variables, c))(jax.random.key(0, impl="rbg"))
    images = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    masks = jnp.zeros((2, 32, 32, 1), jnp.uint8).at[:, 16:, 8:24].set(255)
    out = jax.jit(functools.partial(inference.predict, c))(variables, images, masks)
    outside = np.asarray(masks[..., 0]) == 0
    np.testing.assert_array_equal(np.asarray(out["deoccluded"])[outside], np.asarray(images)[outside])
    assert not np.array_equal(np.asarray(out["deoccluded"])[~outside], np.asarray(images)[~outside])
    np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(masks) / 255.0)
    with pytest.raises(ValueError, match="needs masks_uint8"):
        inference.predict(c, variables, images)


def test_blind_mode_predicts_mask_and_composites():
    c = tiny.get_config()
    variables = jax.jit(functools.partial(inference.init_variables, c))(jax.random.key(0, impl="rbg"))
    images = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    out = jax.jit(functools.partial(inference.predict, c))(variables, images)
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
    mesh = train_lib.make_mesh(jax.devices()[:1])
    setup = train_lib.build_setup(c, mesh)
    assert (setup.discriminator is None) == (name == "unet_l1")
    r, b = c.resolution, c.batch_size
    batch = {"clean": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8),
             "occluded": jax.ShapeDtypeStruct((b, r, r, 3), jnp.uint8),
             "mask": jax.ShapeDtypeStruct((b, r, r, 1), jnp.uint8)}
    step = functools.partial(train_lib.train_step, config=c, generator=setup.generator,
                             discriminator=setup.discriminator, g_tx=setup.g_tx, d_tx=setup.d_tx)
    new_state, m = jax.eval_shape(step, setup.abstract_state, batch)
    assert "g_l1" in m and (("d_loss" in m) == (name != "unet_l1"))
    assert jax.tree.structure(new_state) == jax.tree.structure(setup.abstract_state)


def test_bfloat16_compute_keeps_float32_params():
    c = tiny.get_config()
    c.model.compute_dtype = "bfloat16"
    v = jax.eval_shape(lambda: inference.init_variables(c, jax.random.key(0)))
    assert {x.dtype for x in jax.tree.leaves(v["params"])} == {jnp.dtype("float32")}
    x = jnp.zeros((1, 32, 32, 3))
    out = jax.eval_shape(lambda: models.build_generator(c).apply(
        inference.init_variables(c, jax.random.key(0)), x))
    assert out["rgb"].dtype == jnp.float32
