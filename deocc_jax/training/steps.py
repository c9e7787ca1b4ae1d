"""Pure training steps: optimisers, the train state and one GAN update.

Nothing here touches data, disk or logging, and nothing imports TensorFlow,
OpenCV or clu, so the step can be timed or lowered on any machine that has JAX.
The loop around it is `train_lib`.

Step `s` (0-based) uses dropout key fold_in(key(seed), s): a resumed run
computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from deocc_jax import models
from deocc_jax.training import losses


# ----------------------------------------------------------------------------- optimisers


def make_schedule(ocfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Learning-rate schedule of one optimiser config (see configs/common.py)."""
    lr = float(ocfg.learning_rate)
    warmup = int(ocfg.get("warmup_steps", 0))
    if ocfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif ocfg.schedule == "linear_decay":
        start = int(num_train_steps * ocfg.decay_start_fraction)
        main = optax.join_schedules(
            [optax.constant_schedule(lr),
             optax.linear_schedule(lr, 0.0, max(num_train_steps - start, 1))], [start])
    elif ocfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, min(warmup, max(num_train_steps - 1, 0)), max(num_train_steps, 1), 0.0)
    else:
        raise ValueError(f"unknown schedule {ocfg.schedule!r}: constant | linear_decay | cosine")
    if warmup > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return main


def make_optimizer(ocfg: ml_collections.ConfigDict,
                   num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(W) with the configured schedule and optional global-norm clipping."""
    schedule = make_schedule(ocfg, num_train_steps)
    if ocfg.get("weight_decay", 0.0) > 0:
        opt = optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, weight_decay=ocfg.weight_decay)
    else:
        opt = optax.adam(schedule, b1=ocfg.b1, b2=ocfg.b2)
    if ocfg.get("clip_norm", 0.0) > 0:
        opt = optax.chain(optax.clip_by_global_norm(ocfg.clip_norm), opt)
    return opt, schedule


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class NetState:
    """One network's trainable state.

    Attributes:
      params: the "params" collection.
      state: the other collections (batch_stats, spectral-norm vectors), maybe empty.
      opt_state: its optimiser's state.
    """
    params: Any
    state: Any
    opt_state: Any

    def variables(self, params: Any = None) -> dict:
        """{"params": ..., **state} for `apply`; `params` overrides (e.g. EMA params)."""
        return {"params": self.params if params is None else params, **self.state}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; donated to each step).

    `d` is None for configs without a discriminator and `ema_params` is None
    without EMA. `first_bad_step` is -1, or the first 1-based step whose losses
    or gradients were not finite (checked on the host only when logging).
    """
    step: jax.Array
    g: NetState
    d: NetState | None
    ema_params: Any
    first_bad_step: jax.Array


@flax.struct.dataclass
class Modules:
    """The static pieces a step closes over."""
    generator: Any = flax.struct.field(pytree_node=False)
    discriminator: Any = flax.struct.field(pytree_node=False)
    g_tx: Any = flax.struct.field(pytree_node=False)
    d_tx: Any = flax.struct.field(pytree_node=False)


def build_modules(config: ml_collections.ConfigDict) -> tuple[Modules, dict[str, optax.Schedule]]:
    """Networks and optimisers of `config`, and the learning-rate schedules (for logging)."""
    g_tx, g_schedule = make_optimizer(config.optim.g, config.num_train_steps)
    schedules = {"lr_g": g_schedule}
    discriminator = models.build_discriminator(config)
    d_tx = None
    if discriminator is not None:
        d_tx, schedules["lr_d"] = make_optimizer(config.optim.d, config.num_train_steps)
    return Modules(models.build_generator(config), discriminator, g_tx, d_tx), schedules


def _apply(module, net_variables: dict, *args, **kwargs):
    """module.apply returning (out, new non-param collections) whatever collections exist."""
    mutable = [k for k in net_variables if k != "params"]
    if not mutable:
        return module.apply(net_variables, *args, **kwargs), {}
    out, new_state = module.apply(net_variables, *args, mutable=mutable, **kwargs)
    return out, dict(new_state)


def init_state(config: ml_collections.ConfigDict, modules: Modules, rng: jax.Array,
               generator_variables: dict | None = None) -> TrainState:
    """Initial train state (pure: jit it with out_shardings to build it in place).

    Args:
      config: the experiment config.
      modules: from `build_modules(config)`.
      rng: parameter-init key.
      generator_variables: start G from these (fine-tuning, `config.init_from`)
        instead of a random init; D is always fresh.
    """
    g_key, d_key = jax.random.split(rng)
    g_vars = dict(models.init_generator(config, g_key) if generator_variables is None
                  else generator_variables)
    g_params = g_vars.pop("params")
    d = None
    if modules.discriminator is not None:
        r = config.resolution
        img = jnp.zeros((1, r, r, 3), jnp.float32)
        d_vars = dict(modules.discriminator.init({"params": d_key}, img, img, train=False))
        d_params = d_vars.pop("params")
        d = NetState(params=d_params, state=d_vars, opt_state=modules.d_tx.init(d_params))
    ema = jax.tree.map(jnp.copy, g_params) if config.optim.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32),
                      g=NetState(params=g_params, state=g_vars, opt_state=modules.g_tx.init(g_params)),
                      d=d, ema_params=ema, first_bad_step=jnp.full((), -1, jnp.int32))


def eval_variables(state: TrainState) -> dict:
    """Generator variables used for evaluation and export: EMA params when kept."""
    return state.g.variables(state.ema_params)


# ----------------------------------------------------------------------------- the step


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               config: ml_collections.ConfigDict,
               modules: Modules) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update of G and D from a single generator forward pass.

    Args:
      state: current TrainState (donated by the jitted wrapper).
      batch: uint8 "clean", "occluded" [B, H, W, 3] and "mask" [B, H, W, 1] (0..255).
      config: experiment config (loss weights, mode, seed).
      modules: networks and optimisers (discriminator None: G-only training).

    Returns:
      (new_state, scalar metrics). G is updated against the pre-update D and D
      against the generated images of this step (simultaneous updates).
    """
    generator, discriminator = modules.generator, modules.discriminator
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    clean = models.to_model_range(batch["clean"])
    occluded = models.to_model_range(batch["occluded"])
    mask = models.mask_to_unit(batch["mask"])

    def g_loss_fn(g_params):
        out, new_g_state = models.generate(
            config, generator, state.g.variables(g_params), occluded, mask, train=True,
            rngs={"dropout": key}, mutable=list(state.g.state.keys()) or False)
        d_fake = d_real = None
        if discriminator is not None:
            d_vars = state.d.variables()
            d_fake, _ = _apply(discriminator, d_vars, occluded, out["output"], train=True)
            if config.loss.feature_matching_weight > 0:
                d_real, _ = _apply(discriminator, d_vars, occluded, clean, train=True)
        total, terms = losses.generator_loss(config.loss, out, clean, mask, d_fake, d_real)
        return total, (terms, new_g_state, out["output"])

    (g_total, (terms, new_g_state, fake)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g.params)
    g_updates, g_opt_state = modules.g_tx.update(g_grads, state.g.opt_state, state.g.params)
    g_params = optax.apply_updates(state.g.params, g_updates)
    out_metrics = {"g_loss": g_total, "g_grad_norm": optax.global_norm(g_grads)}
    out_metrics.update({f"g_{k}": v for k, v in terms.items()})
    finite = jnp.isfinite(g_total) & jnp.isfinite(out_metrics["g_grad_norm"])
    g = NetState(params=g_params, state=dict(new_g_state) or state.g.state, opt_state=g_opt_state)

    d = state.d
    if discriminator is not None:
        fake = jax.lax.stop_gradient(fake)

        def d_loss_fn(params):
            real_out, st = _apply(discriminator, d.variables(params), occluded, clean, train=True)
            fake_out, st = _apply(discriminator, {"params": params, **(st or d.state)}, occluded,
                                  fake, train=True)
            return losses.discriminator_loss(real_out, fake_out, config.loss.adversarial), st

        (d_loss, new_d_state), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
        d_updates, d_opt_state = modules.d_tx.update(d_grads, d.opt_state, d.params)
        d = NetState(params=optax.apply_updates(d.params, d_updates),
                     state=new_d_state or d.state, opt_state=d_opt_state)
        out_metrics["d_loss"] = d_loss
        out_metrics["d_grad_norm"] = optax.global_norm(d_grads)
        finite &= jnp.isfinite(d_loss) & jnp.isfinite(out_metrics["d_grad_norm"])

    ema = state.ema_params
    if ema is not None:
        decay = config.optim.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, g_params)

    new_step = state.step + 1
    first_bad = jnp.where((state.first_bad_step < 0) & ~finite, new_step, state.first_bad_step)
    return TrainState(step=new_step, g=g, d=d, ema_params=ema,
                      first_bad_step=first_bad), out_metrics
