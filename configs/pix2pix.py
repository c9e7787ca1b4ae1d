"""pix2pix reference (Isola et al. 2017; the official PyTorch `--model pix2pix` defaults).

U-Net-256 (depth 8, 64 base filters, batch norm, transposed convs, dropout 0.5
on three decoder levels), 70x70 PatchGAN (n_layers 3) conditioned on the
input, the vanilla (non-saturating BCE) GAN loss, lambda_L1 = 100, Adam lr
2e-4 with beta1 0.5, constant then linearly decayed learning rate. The paper
uses batch size 1; here the batch is larger for throughput (batch norm then
normalises over the batch). Blind mode without mask head or compositing, so
it computes the same function as the reference.
"""

from configs import common


def get_config(arg=None):
    c = common.get_base_config()
    c.resolution = 256
    c.batch_size = 32
    # depth None = log2(resolution): pix2pix's unet_256 at 256 px, unet_128 at 128 px.
    c.model.generator.update(dict(base_width=64, depth=None, max_width=512, norm="batch",
                                  upsample="conv_transpose", dropout=0.5, dropout_levels=3,
                                  mask_head=False))
    c.model.composite = False
    c.model.discriminator.update(dict(base_width=64, n_layers=3, norm="batch", num_scales=1))
    c.loss.adversarial = "nonsaturating"
    c.loss.adv_weight = 1.0
    c.loss.l1_weight = 100.0
    c.optim.g = common.optimizer(2e-4, 0.5, 0.999, "linear_decay")
    c.optim.d = common.optimizer(2e-4, 0.5, 0.999, "linear_decay")
    c = common.apply_arg(c, arg)
    if arg == "runlocal":
        c.model.generator.depth = None  # log2(32) = 5, as pix2pix would build it
        c.model.discriminator.n_layers = None  # auto: receptive field scaled to 32 px
    return c
