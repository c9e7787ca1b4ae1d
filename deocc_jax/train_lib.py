"""Training and evaluation of deocc GANs: pure step functions and the loop around them.

Resume order (documented because bit-exact resumption depends on it): build
the abstract train state, derive shardings, jit the init into that layout,
then, if a checkpoint exists, restore state and the grain iterator position
from the newest loadable checkpoint. Step `s` (0-based) uses dropout key
fold_in(key(seed), s) and the s-th global batch, so a resumed run computes
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
from typing import Any, Callable

import cv2
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deocc_jax import checkpointing, inference, losses, metrics, models
from deocc_jax.data import input_pipeline

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers treat it as "restart me"


# ---------------------------------------------------------------------------
# Multi-host start-up.

def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Calls jax.distributed.initialize; arguments left None are auto-detected.

    On Cloud TPU, SLURM and Open MPI JAX finds everything itself. On CPU it
    uses gloo collectives so multi-process CPU runs (and tests) work.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


# ---------------------------------------------------------------------------
# Optimisers.

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


# ---------------------------------------------------------------------------
# State and pure step functions.

@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; donated to each step).

    d_* fields are None for configs without a discriminator and ema_params is
    None without EMA. first_bad_step is -1, or the first 1-based step whose
    losses or gradients were not finite.
    """
    step: jax.Array
    g_params: Any
    g_state: Any
    g_opt_state: Any
    d_params: Any
    d_state: Any
    d_opt_state: Any
    ema_params: Any
    first_bad_step: jax.Array


def _images(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) / 127.5 - 1.0


def _apply(module, params, state, *args, **kwargs):
    """module.apply that always returns (out, new_state) whatever collections exist."""
    mutable = list(state.keys())
    if not mutable:
        return module.apply({"params": params}, *args, **kwargs), {}
    out, new_state = module.apply({"params": params, **state}, *args, mutable=mutable, **kwargs)
    return out, dict(new_state)


def init_state(config: ml_collections.ConfigDict, generator, discriminator,
               g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation | None,
               rng: jax.Array) -> TrainState:
    """Initial train state (pure: jit it with out_shardings to build it in place)."""
    g_key, d_key = jax.random.split(rng)
    g_vars = inference.init_variables(config, g_key)
    g_params = g_vars.pop("params")
    d_params = d_state = d_opt = None
    if discriminator is not None:
        r = config.resolution
        img = jnp.zeros((1, r, r, 3), jnp.float32)
        d_vars = dict(discriminator.init({"params": d_key}, img, img, train=False))
        d_params = d_vars.pop("params")
        d_state = d_vars
        d_opt = d_tx.init(d_params)
    ema = jax.tree.map(jnp.copy, g_params) if config.optim.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), g_params=g_params, g_state=g_vars,
                      g_opt_state=g_tx.init(g_params), d_params=d_params, d_state=d_state,
                      d_opt_state=d_opt, ema_params=ema,
                      first_bad_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               config: ml_collections.ConfigDict, generator, discriminator,
               g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation | None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update of G and D from a single generator forward pass.

    Args:
      state: current TrainState (donated by the jitted wrapper).
      batch: uint8 "clean", "occluded" [B, H, W, 3] and "mask" [B, H, W, 1] (0..255).
      config: experiment config (loss weights, mode, seed).
      generator, discriminator: flax modules (discriminator None: G-only training).
      g_tx, d_tx: optax optimisers.

    Returns:
      (new_state, scalar metrics). G is updated against the pre-update D and D
      against the generated images of this step (simultaneous updates).
    """
    lw = config.loss
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    clean, occluded = _images(batch["clean"]), _images(batch["occluded"])
    mask = batch["mask"].astype(jnp.float32) / 255.0

    def g_loss_fn(g_params):
        out, new_g_state = models.generate(
            config, generator, {"params": g_params, **state.g_state}, occluded, mask, train=True,
            rngs={"dropout": key}, mutable=list(state.g_state.keys()) or False)
        fake = out["output"]
        terms = {"l1": (lw.l1_weight, losses.weighted_l1(fake, clean, mask, lw.l1_occluded_weight))}
        if lw.ssim_weight > 0:
            terms["ssim"] = (lw.ssim_weight, losses.ssim_loss(fake, clean))
        if out["mask_logits"] is not None:
            if lw.mask_bce_weight > 0:
                terms["mask_bce"] = (lw.mask_bce_weight, losses.mask_bce(out["mask_logits"], mask))
            if lw.mask_dice_weight > 0:
                terms["mask_dice"] = (lw.mask_dice_weight, losses.mask_dice(out["mask_logits"], mask))
        if discriminator is not None:
            d_fake, _ = _apply(discriminator, state.d_params, state.d_state, occluded, fake, train=True)
            terms["adv"] = (lw.adv_weight, losses.generator_adversarial_loss(d_fake, lw.adversarial))
            if lw.feature_matching_weight > 0:
                d_real, _ = _apply(discriminator, state.d_params, state.d_state, occluded, clean,
                                   train=True)
                terms["fm"] = (lw.feature_matching_weight, losses.feature_matching_loss(d_real, d_fake))
        total = sum(w * v for w, v in terms.values())
        return total, ({k: v for k, (_, v) in terms.items()}, new_g_state, fake)

    (g_total, (terms, new_g_state, fake)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g_params)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)
    out_metrics = {"g_loss": g_total, "g_grad_norm": optax.global_norm(g_grads)}
    out_metrics.update({f"g_{k}": v for k, v in terms.items()})
    finite = jnp.isfinite(g_total) & jnp.isfinite(out_metrics["g_grad_norm"])

    d_params, d_state, d_opt_state = state.d_params, state.d_state, state.d_opt_state
    if discriminator is not None:
        fake = jax.lax.stop_gradient(fake)

        def d_loss_fn(params):
            real_out, st = _apply(discriminator, params, state.d_state, occluded, clean, train=True)
            fake_out, st = _apply(discriminator, params, st or state.d_state, occluded, fake,
                                  train=True)
            return losses.discriminator_loss(real_out, fake_out, lw.adversarial), st

        (d_loss, new_d_state), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        d_updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_params)
        d_params = optax.apply_updates(d_params, d_updates)
        d_state = new_d_state or state.d_state
        out_metrics["d_loss"] = d_loss
        out_metrics["d_grad_norm"] = optax.global_norm(d_grads)
        finite &= jnp.isfinite(d_loss) & jnp.isfinite(out_metrics["d_grad_norm"])

    ema = state.ema_params
    if ema is not None:
        decay = config.optim.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, g_params)

    new_step = state.step + 1
    first_bad = jnp.where((state.first_bad_step < 0) & ~finite, new_step, state.first_bad_step)
    new_state = TrainState(step=new_step, g_params=g_params, g_state=dict(new_g_state) or state.g_state,
                           g_opt_state=g_opt_state, d_params=d_params, d_state=d_state,
                           d_opt_state=d_opt_state, ema_params=ema, first_bad_step=first_bad)
    return new_state, out_metrics


def eval_variables(state: TrainState) -> dict:
    """Generator variables used for evaluation: EMA params when kept."""
    params = state.ema_params if state.ema_params is not None else state.g_params
    return {"params": params, **state.g_state}


def eval_step(variables: dict, batch: dict[str, jax.Array], *,
              config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Per-image metrics ([0, 1] data range) and the images of one eval batch.

    Returns:
      (per-image metrics incl. "valid", {"occluded", "clean", "deoccluded", "mask"}).
    """
    masks = batch["mask"] if config.model.mode == "guided" else None
    pred = inference.predict(config, variables, batch["occluded"], masks)
    has_mask_head = config.model.mode == "blind" and config.model.generator.mask_head
    per_image = metrics.image_metrics(
        pred["deoccluded"].astype(jnp.float32) / 255.0, batch["clean"].astype(jnp.float32) / 255.0,
        batch["mask"].astype(jnp.float32) / 255.0, pred["mask"] if has_mask_head else None)
    per_image["valid"] = batch["valid"]
    samples = {"occluded": batch["occluded"], "clean": batch["clean"], **pred}
    return per_image, samples


# ---------------------------------------------------------------------------
# Sharding and set-up.

def make_mesh(devices: list | None = None) -> Mesh:
    """1-D "data" mesh over all devices of all processes (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def _leaf_sharding(mesh: Mesh, min_params: int):
    n = mesh.devices.size

    def rule(x) -> NamedSharding:
        if min_params > 0 and x.size >= min_params:
            # FSDP-style: shard the largest dimension divisible by the device count.
            dims = sorted(range(x.ndim), key=lambda i: -x.shape[i])
            for i in dims:
                if x.shape[i] % n == 0:
                    spec = [None] * x.ndim
                    spec[i] = "data"
                    return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())
    return rule


@dataclasses.dataclass
class Setup:
    """Models, optimisers, shardings and jitted steps for one config on one mesh."""
    config: ml_collections.ConfigDict
    mesh: Mesh
    generator: Any
    discriminator: Any
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation | None
    g_schedule: optax.Schedule
    d_schedule: optax.Schedule | None
    abstract_state: TrainState
    state_sharding: Any
    batch_sharding: NamedSharding
    replicated: NamedSharding
    init: Callable[[], TrainState]
    train_step: Callable
    eval_step: Callable


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Clear errors for settings that cannot work, before anything is built."""
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the device count "
                         f"{mesh.devices.size}; use a multiple of {mesh.devices.size}")
    if not config.data_dir:
        raise ValueError("config.data_dir is not set: pass --config.data_dir=DIR "
                         "(a dataset written by `python -m data_prep.build`)")
    for name in ("num_train_steps", "log_every_steps"):
        if config[name] <= 0:
            raise ValueError(f"config.{name} must be positive, got {config[name]}")


def build_setup(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Setup:
    """Everything needed to train `config` on `mesh`, without touching data or disk."""
    mesh = make_mesh() if mesh is None else mesh
    if config.batch_size % mesh.devices.size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the device count "
                         f"{mesh.devices.size}; use a multiple of {mesh.devices.size}")
    generator = models.build_generator(config)
    discriminator = models.build_discriminator(config)
    g_tx, g_schedule = make_optimizer(config.optim.g, config.num_train_steps)
    d_tx = d_schedule = None
    if discriminator is not None:
        d_tx, d_schedule = make_optimizer(config.optim.d, config.num_train_steps)
    init_fn = functools.partial(init_state, config, generator, discriminator, g_tx, d_tx)
    # "rbg" keys for parameter init: XLA CPU compiles one threefry normal per
    # parameter very slowly (~1 s each); rbg is ~8x faster to compile and just
    # as deterministic. Dropout keys (train_step) stay threefry, whose values
    # do not depend on how the computation is sharded.
    rng = jax.random.key(config.seed, impl="rbg")
    abstract = jax.eval_shape(init_fn, rng)
    state_sharding = jax.tree.map(_leaf_sharding(mesh, config.get("fsdp_min_params", 0)), abstract)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    step = functools.partial(train_step, config=config, generator=generator,
                             discriminator=discriminator, g_tx=g_tx, d_tx=d_tx)
    jit_step = jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
    jit_eval = jax.jit(functools.partial(eval_step, config=config),
                       in_shardings=(_eval_var_sharding(state_sharding),
                                     batch_sharding),
                       out_shardings=replicated)
    jit_init = jax.jit(init_fn, out_shardings=state_sharding)
    return Setup(config=config, mesh=mesh, generator=generator, discriminator=discriminator,
                 g_tx=g_tx, d_tx=d_tx, g_schedule=g_schedule, d_schedule=d_schedule,
                 abstract_state=abstract, state_sharding=state_sharding,
                 batch_sharding=batch_sharding, replicated=replicated,
                 init=lambda: jit_init(rng), train_step=jit_step, eval_step=jit_eval)


def _eval_var_sharding(state_sharding: TrainState) -> dict:
    params = state_sharding.ema_params if state_sharding.ema_params is not None else state_sharding.g_params
    return {"params": params, **state_sharding.g_state}


def put_batch(setup: Setup, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays from this process's rows of a batch."""
    return {k: jax.make_array_from_process_local_data(setup.batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}


# ---------------------------------------------------------------------------
# Checkpoint items.

def state_items(state: TrainState) -> dict[str, Any]:
    """The named checkpoint items of a train state (see checkpointing.py)."""
    return {"g": {"params": state.g_params, **state.g_state}, "g_opt": state.g_opt_state,
            "ema": state.ema_params, "d": None if state.d_params is None else
            {"params": state.d_params, **state.d_state}, "d_opt": state.d_opt_state}


def _abstract_items(setup: Setup) -> dict[str, Any]:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            setup.abstract_state, setup.state_sharding)
    return {k: v for k, v in state_items(abstract).items() if v is not None}


def state_from_items(setup: Setup, step: int, items: dict[str, Any]) -> TrainState:
    g = dict(items["g"])
    g_params = g.pop("params")
    d_params = d_state = None
    if "d" in items:
        d = dict(items["d"])
        d_params = d.pop("params")
        d_state = d
    put = functools.partial(jax.device_put, device=setup.replicated)
    return TrainState(step=put(jnp.asarray(step, jnp.int32)), g_params=g_params, g_state=g,
                      g_opt_state=items["g_opt"], d_params=d_params, d_state=d_state,
                      d_opt_state=items.get("d_opt"), ema_params=items.get("ema"),
                      first_bad_step=put(jnp.asarray(-1, jnp.int32)))


def load_train_state(setup: Setup, workdir: str, checkpoint: str | int = "latest") -> TrainState:
    """The full train state of a checkpoint, laid out for `setup`'s mesh (any saving device count)."""
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        step = ckpt.resolve(checkpoint)
        return state_from_items(setup, step, ckpt.restore(step, _abstract_items(setup)))
    finally:
        ckpt.close()


# ---------------------------------------------------------------------------
# Loop helpers.

class PreemptionFlag:
    """Set by SIGTERM in single-process runs (multi-process runs use JAX's preemption service)."""

    def __init__(self):
        self.is_set = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        logging.warning("received signal %d: will save a checkpoint and stop", signum)
        self.is_set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Prefetcher:
    """Keeps `size` batches on device ahead of the step; remembers iterator states.

    The state paired with each batch is the iterator position right after it
    was drawn: what a checkpoint taken after training on it must store.
    """

    def __init__(self, iterator, put: Callable, size: int = 1):
        self._it, self._put, self._size = iterator, put, size
        self._queue: list = []

    def next(self) -> tuple[dict, dict]:
        while len(self._queue) <= self._size:
            batch = next(self._it)
            self._queue.append((self._put(batch), self._it.get_state()))
        return self._queue.pop(0)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def sample_grid(occluded: np.ndarray, pred_mask: np.ndarray, output: np.ndarray,
                clean: np.ndarray) -> np.ndarray:
    """uint8 grid, one row per sample: occluded | predicted mask | output | clean."""
    mask_rgb = np.repeat(np.clip(np.round(pred_mask * 255.0), 0, 255).astype(np.uint8), 3, axis=-1)
    rows = [np.concatenate([o, m, p, c], axis=1)
            for o, m, p, c in zip(occluded, mask_rgb, output, clean)]
    return np.concatenate(rows, axis=0)


def evaluate(setup: Setup, state: TrainState, *, split: str | None = None,
             num_examples: int | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Validation metrics over a split and a sample grid of its first images.

    Returns:
      ({"val_mse", "val_psnr", "val_ssim", "val_masked_*", "val_mask_iou"?},
       uint8 grid or None when no sample images are wanted).
    """
    config = setup.config
    split = split or config.eval_split
    n = config.num_eval_examples if num_examples is None else num_examples
    it = input_pipeline.make_eval_iterator(config, split, num_examples=None if n < 0 else n)
    variables = eval_variables(state)
    acc = metrics.MetricAccumulator()
    grid = None
    for local in it:
        batch = put_batch(setup, local)
        per_image, samples = setup.eval_step(variables, batch)
        per_image = jax.device_get(per_image)
        valid = per_image.pop("valid")
        acc.add(per_image, valid)
        if grid is None and config.num_sample_images > 0:
            k = min(config.num_sample_images, int(valid.sum()))
            s = jax.device_get(samples)
            grid = sample_grid(s["occluded"][:k], s["mask"][:k], s["deoccluded"][:k], s["clean"][:k])
    return {f"val_{k}": v for k, v in acc.result().items()}, grid


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    # epath: workdirs may be on GCS (gs://...) as well as local disks.
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


# ---------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its newest loadable checkpoint.

    Args:
      config: experiment config (configs/*.py).
      workdir: directory for checkpoints, TensorBoard events, sample PNGs and config.json.

    Returns:
      {"step": last step, "preempted": bool, "metrics": last logged train
      metrics, "eval": last validation metrics}.

    Raises:
      FileNotFoundError / ValueError: missing data, wrong resolution, bad batch size.
      FloatingPointError: a loss or gradient became NaN/Inf (names the step);
        checkpoints before it are kept.
    """
    mesh = make_mesh()
    check_config(config, mesh)
    input_pipeline.check_dataset(config, "train")
    if config.eval_every_steps > 0:
        input_pipeline.check_dataset(config, config.eval_split)
    # SIGTERM during set-up or compilation still ends in a clean save at the first step.
    with PreemptionFlag() as preempt:
        return _train_loop(config, workdir, mesh, preempt)


def _train_loop(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                preempt: "PreemptionFlag") -> dict[str, Any]:
    primary = jax.process_index() == 0
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if primary:
        _write_config(config, workdir)

    setup = build_setup(config, mesh)
    train_iter = input_pipeline.make_train_iterator(config)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                      keep_best=config.keep_best_checkpoints,
                                      async_save=config.async_checkpointing)
    restored = ckpt.restore_latest_valid(_abstract_items(setup), train_iter)
    if restored is None:
        state, start = setup.init(), 0
        logging.info("starting from scratch in %s", workdir)
    else:
        start, items = restored
        state = state_from_items(setup, start, items)
        logging.info("resumed from checkpoint step %d in %s", start, ckpt.directory)

    writer = (metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")) if primary
              else metric_writers.MultiWriter([]))
    if primary and start == 0:
        writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                              if isinstance(v, (int, float, str, bool))})
    prefetch = _Prefetcher(train_iter, functools.partial(put_batch, setup))
    result = {"step": start, "preempted": False, "metrics": {}, "eval": {}}
    pending: list[dict] = []
    last_log_time, last_log_step = time.time(), start
    num_steps = config.num_train_steps
    data_state = train_iter.get_state()

    def check_finite():
        bad = int(jax.device_get(state.first_bad_step))
        if bad >= 0:
            raise FloatingPointError(
                f"loss or gradient became NaN/Inf at step {bad}; stopping. The last good "
                f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")

    try:
        for step in range(start, num_steps):
            batch, data_state = prefetch.next()
            state, step_metrics = setup.train_step(state, batch)
            pending.append(step_metrics)
            done = step + 1
            if done % config.log_every_steps == 0 or done == num_steps:
                check_finite()
                means = {k: float(np.mean(v)) for k, v in
                         jax.device_get(jax.tree.map(lambda *x: jnp.stack(x), *pending)).items()}
                pending = []
                now = time.time()
                sps = (done - last_log_step) / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, done
                means["lr_g"] = float(setup.g_schedule(done - 1))
                if setup.d_schedule is not None:
                    means["lr_d"] = float(setup.d_schedule(done - 1))
                means["steps_per_sec"] = sps
                means["images_per_sec"] = sps * config.batch_size
                writer.write_scalars(done, means)
                result["metrics"] = means
                if primary:
                    logging.info("step %d/%d | %s | %.2f steps/s %.1f img/s | ETA %s", done,
                                 num_steps, " ".join(f"{k} {v:.4g}" for k, v in means.items()
                                                    if k not in ("steps_per_sec", "images_per_sec")),
                                 sps, sps * config.batch_size,
                                 _format_duration((num_steps - done) / max(sps, 1e-9)))
            eval_metrics = None
            if config.eval_every_steps > 0 and (done % config.eval_every_steps == 0
                                                or done == num_steps):
                eval_metrics, grid = evaluate(setup, state)
                result["eval"] = eval_metrics
                writer.write_scalars(done, eval_metrics)
                if primary:
                    logging.info("eval step %d | %s", done,
                                 " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                    if grid is not None:
                        _write_samples(workdir, done, grid, writer)
            preempted = preempt.is_set or ckpt.reached_preemption(done)
            if (done % config.checkpoint_every_steps == 0 or done == num_steps or preempted):
                check_finite()
                ckpt.save(done, state_items(state), data_state=data_state, config=config,
                          metrics=eval_metrics)
            result["step"] = done
            if preempted:
                ckpt.wait()
                logging.warning("preempted: saved checkpoint at step %d in %s; exiting so the "
                                "job can be restarted (it will resume from there)",
                                done, ckpt.directory)
                result["preempted"] = True
                break
    finally:
        ckpt.wait()
        ckpt.close()
        writer.flush()
        writer.close()
    return result


def _write_samples(workdir: str, step: int, grid: np.ndarray, writer) -> None:
    path = epath.Path(workdir) / "samples"
    path.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if ok:
        (path / f"step_{step:08d}.png").write_bytes(png.tobytes())
    writer.write_images(step, {"samples": grid[None]})


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
