"""The seed's benchmark: a U-Net with skips trained on reconstruction (L1) loss only.

No discriminator is built (loss.adv_weight = 0), there is no mask head and no
compositing: the generator output is the result.
"""

from configs import common


def get_config(arg=None):
    c = common.get_base_config()
    c.model.generator.mask_head = False
    c.model.composite = False
    c.model.generator.dropout = 0.0
    c.loss.adv_weight = 0.0
    c.loss.l1_weight = 1.0
    c.optim.g = common.optimizer(learning_rate=2e-4, b1=0.9, b2=0.999, schedule="cosine")
    c.optim.g.warmup_steps = 500
    c.optim.g.clip_norm = 1.0
    return common.apply_arg(c, arg)
