"""GPU check: the project's models give the same values and gradients with conv_impl matmul and
xla_conv on a GPU, and time a G+D forward/backward for each at 256 px batch 32."""
import json, time, sys
import jax, jax.numpy as jnp, numpy as np
from deocc_jax import models
from configs import pix2pix, deocc

res = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
for name, mod in (("pix2pix", pix2pix), ("deocc", deocc)):
    outs = {}
    for impl in ("xla_conv", "matmul"):
        c = mod.get_config(); c.model.conv_impl = impl; c.resolution = 256
        G = models.build_generator(c); D = models.build_discriminator(c)
        x = jax.random.uniform(jax.random.key(1), (32, 256, 256, 3), minval=-1, maxval=1)
        gv = G.init(jax.random.key(0), x[:1], train=False)
        dv = D.init(jax.random.key(2), x[:1], x[:1], train=False)
        def loss(gp, dp):
            out = G.apply({**gv, "params": gp}, x, train=False)
            d = D.apply({**dv, "params": dp}, x, out["rgb"], train=False)
            leaves = jax.tree_util.tree_leaves(d)
            return sum(jnp.mean(l.astype(jnp.float32) ** 2) for l in leaves) + jnp.mean(jnp.abs(out["rgb"] - x))
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        v, g = f(gv["params"], dv["params"]); jax.block_until_ready(g)
        ts = []
        for _ in range(10):
            t = time.perf_counter(); v, g = f(gv["params"], dv["params"]); jax.block_until_ready(g); ts.append(time.perf_counter() - t)
        outs[impl] = (float(v), g, float(np.median(ts)))
    a, b = outs["xla_conv"], outs["matmul"]
    gmax = max(float(jnp.max(jnp.abs(p - q)) / (jnp.max(jnp.abs(p)) + 1e-12)) for p, q in zip(jax.tree_util.tree_leaves(a[1]), jax.tree_util.tree_leaves(b[1])))
    res[name] = {"loss_xla_conv": a[0], "loss_matmul": b[0], "max_rel_grad_diff": gmax,
                 "fwd_bwd_s_xla_conv": a[2], "fwd_bwd_s_matmul": b[2], "images_per_s_xla_conv": 32 / a[2], "images_per_s_matmul": 32 / b[2]}
    print(name, res[name], flush=True)
import os
json.dump(res, open(sys.argv[1] if len(sys.argv) > 1 else "gpu_conv_impl.json", "w"), indent=1)
