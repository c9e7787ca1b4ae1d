"""The full-size design the other recipes derive from: blind de-occlusion with a mask head,
attention and compositing (the shipped recipe is `configs/realtime.py`).

The generator predicts the occlusion mask and RGB; the output keeps the input
outside the predicted mask. Self-attention on the low-resolution decoder
levels and attention gates on skips let it use distant visible context.
L1 is weighted up inside the occluded region, with SSIM, mask BCE + Dice and
discriminator feature matching; hinge loss with spectral norm in a two-scale
PatchGAN; EMA weights for eval and export.
"""

from configs import common


def get_config(arg=None):
    c = common.get_base_config()
    c.resolution = 256
    c.batch_size = 32
    c.model.mode = "blind"
    c.model.composite = True
    c.model.generator.update(dict(base_width=64, depth=7, max_width=512, norm="instance",
                                  upsample="resize_conv", dropout=0.0,
                                  self_attention_stride=16, attention_gates=True, mask_head=True))
    c.model.discriminator.update(dict(base_width=64, norm="none", spectral_norm=True,
                                      num_scales=2))
    c.loss.update(dict(adversarial="hinge", adv_weight=1.0, l1_weight=10.0,
                       l1_occluded_weight=5.0, ssim_weight=1.0, mask_bce_weight=1.0,
                       mask_dice_weight=1.0, feature_matching_weight=10.0))
    c.optim.g = common.optimizer(2e-4, 0.5, 0.999, "cosine")
    c.optim.d = common.optimizer(2e-4, 0.5, 0.999, "cosine")
    c.optim.g.warmup_steps = c.optim.d.warmup_steps = 1000
    c.optim.g.clip_norm = c.optim.d.clip_norm = 1.0
    c.optim.ema_decay = 0.999
    c = common.apply_arg(c, arg)
    if arg == "runlocal":
        c.model.generator.self_attention_stride = 8
        c.optim.g.warmup_steps = c.optim.d.warmup_steps = 2
    return c
