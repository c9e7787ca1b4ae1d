"""Defaults shared by every deocc config, and the `runlocal` shrinking rule.

Field names at the top level are a documented interface and stay stable:
data_dir, resolution, batch_size, num_train_steps, checkpoint_every_steps,
eval_every_steps, seed. Everything can be overridden on the command line,
e.g. `--config.batch_size=16 --config.model.generator.norm=instance`.
"""

import os

import ml_collections


def optimizer(learning_rate: float = 2e-4, b1: float = 0.5, b2: float = 0.999,
              schedule: str = "constant") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        learning_rate=learning_rate, b1=b1, b2=b2,
        # constant | linear_decay (pix2pix: constant, then linear to 0 from
        # decay_start_fraction of the run) | cosine (with warmup_steps).
        schedule=schedule, decay_start_fraction=0.5, warmup_steps=0,
        clip_norm=0.0,       # global-norm clipping; 0 disables
        weight_decay=0.0,    # > 0 switches Adam to AdamW
    ))


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Prepared dataset (python -m data_prep.build); DEOCC_DATA_DIR is a convenience default.
    c.data_dir = os.environ.get("DEOCC_DATA_DIR", "")
    c.resolution = 256
    c.batch_size = 32
    c.num_train_steps = 100_000
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3        # most recent
    c.keep_best_checkpoints = 1   # best by validation SSIM, in addition
    c.async_checkpointing = True
    c.seed = 0
    c.eval_split = "validation"
    c.num_eval_examples = -1      # -1: the whole split
    c.num_sample_images = 8       # rows of the sample grid
    # Shard parameters with at least this many elements over the data axis
    # (FSDP-style); 0 keeps every parameter replicated.
    c.fsdp_min_params = 0
    # Start the generator from a trained model (a pretrained folder such as
    # pretrained/deocc-realtime-128, or a workdir) instead of a random init: fine-tuning.
    c.init_from = ""
    # Face-aware validation metrics (expression, landmarks, identity; needs MediaPipe).
    c.eval_face_metrics = False
    c.profile = False  # a profiler trace of a few steps into {workdir} (clu periodic_actions.Profile)

    c.data = ml_collections.ConfigDict(dict(
        flip_prob=0.5, color_jitter=0.05, num_threads=2, prefetch_buffer_size=4,
        clean_prob=0.0))  # share of pairs shown unoccluded (input_pipeline.augment)

    c.model = ml_collections.ConfigDict()
    c.model.mode = "blind"            # blind | guided
    c.model.composite = True          # output = m * generated + (1 - m) * input
    c.model.compute_dtype = "float32"  # or bfloat16 (params stay float32)
    # How convolutions are computed (same parameters either way, checkpoints are portable):
    # auto = im2col matmuls on the CPU backend (much faster gradients on XLA:CPU), XLA
    # convolutions on GPU/TPU; or force "matmul" / "xla_conv".
    c.model.conv_impl = "auto"
    c.model.generator = ml_collections.ConfigDict(dict(
        base_width=64, depth=ml_collections.config_dict.placeholder(int), max_width=512,
        norm="batch", upsample="resize_conv", dropout=0.5, dropout_levels=3,
        self_attention_stride=0, attention_heads=4, attention_gates=False, mask_head=True))
    c.model.discriminator = ml_collections.ConfigDict(dict(
        base_width=64, n_layers=ml_collections.config_dict.placeholder(int), norm="batch",
        spectral_norm=False, num_scales=1,
        local_parts=""))  # e.g. "mouth,eyes": critics on fixed face-part crops (models/patchgan.py)

    c.loss = ml_collections.ConfigDict(dict(
        adversarial="lsgan",       # lsgan | hinge | nonsaturating
        adv_weight=1.0,            # 0: no discriminator at all
        l1_weight=100.0,
        l1_occluded_weight=1.0,    # multiplier of the L1 inside the occluded region
        raw_l1_weight=0.0,         # L1 of the raw fill (before compositing) in the true mask
        ssim_weight=0.0,
        mask_bce_weight=0.0,
        mask_dice_weight=0.0,
        feature_matching_weight=0.0))

    c.optim = ml_collections.ConfigDict()
    c.optim.g = optimizer()
    c.optim.d = optimizer()
    c.optim.ema_decay = 0.0        # > 0 keeps an EMA of G's params for eval and export
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to seconds per step on a laptop CPU, keeping its architecture choices."""
    c.resolution = 32
    c.batch_size = 8
    c.num_train_steps = 20
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.num_eval_examples = 16
    c.model.generator.base_width = 8
    c.model.generator.max_width = 32
    c.model.generator.depth = 3
    c.model.discriminator.base_width = 8
    c.data.num_threads = 1
    return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None,
              variants: dict | None = None) -> ml_collections.ConfigDict:
    """Config variants named after the file, e.g. `--config=configs/pix2pix.py:runlocal`.

    `arg` may list several, comma-separated and applied in order
    (`configs/reference.py:noattn,runlocal`); `variants` maps a config's own
    variant names to functions that change the config in place.
    """
    known = {"runlocal": runlocal, **(variants or {})}
    for name in filter(None, (arg or "").split(",")):
        if name not in known:
            raise ValueError(f"unknown config variant {name!r}; known: {sorted(known)}")
        c = known[name](c) or c
    return c
