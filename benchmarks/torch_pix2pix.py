"""PyTorch pix2pix reference used as the speed yardstick.

Re-states, layer for layer, the architecture and training step of
junyanz/pytorch-CycleGAN-and-pix2pix (`models/networks.py`, `models/pix2pix_model.py`)
with its pix2pix defaults: `unet_256` generator (`unet_128` at 128 px), ngf=64,
BatchNorm, dropout 0.5, `basic` 70x70 PatchGAN (ndf=64, n_layers=3) on
concat(condition, image), `vanilla` GAN loss (BCEWithLogits; `lsgan` = MSE also
available), lambda_L1=100, Adam(lr 2e-4, betas (0.5, 0.999)), normal(0, 0.02) init.

One training step is `Pix2PixTorch.train_step`, the reference's `optimize_parameters`:
G forward; D forward on fake.detach() and on real (two separate forwards, so two
sets of batch statistics), D backward/update; then D forward on the fake with the
*updated* D (D params frozen), G backward of GAN + 100 * L1, G update.

Importing this module needs torch (`requirements-bench.txt`); nothing in the project
imports it. `python -m benchmarks.train_step` times it against the JAX step and prints its
parameter counts.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn


def _unet_block(
    outer_nc: int,
    inner_nc: int,
    input_nc: Optional[int] = None,
    submodule: Optional[nn.Module] = None,
    outermost: bool = False,
    innermost: bool = False,
    use_dropout: bool = False,
) -> nn.Module:
    """One U-Net level: down conv, the inner levels, up conv, and a skip concat."""
    return _UnetSkipBlock(outer_nc, inner_nc, input_nc, submodule, outermost, innermost, use_dropout)


class _UnetSkipBlock(nn.Module):
    """X -> [X, up(sub(down(X)))], as the reference's UnetSkipConnectionBlock."""

    def __init__(self, outer_nc, inner_nc, input_nc, submodule, outermost, innermost, use_dropout):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        # BatchNorm follows these convs, so the reference drops their bias.
        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        if outermost:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up_conv, nn.BatchNorm2d(outer_nc)]
        else:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            layers = [
                nn.LeakyReLU(0.2, True), down_conv, nn.BatchNorm2d(inner_nc),
                submodule,
                nn.ReLU(True), up_conv, nn.BatchNorm2d(outer_nc),
            ]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


def unet_generator(num_downs: int, input_nc: int = 3, output_nc: int = 3, ngf: int = 64,
                   use_dropout: bool = True) -> nn.Module:
    """The reference UnetGenerator (num_downs=8 for 256 px, 7 for 128 px)."""
    block = _unet_block(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = _unet_block(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout)
    block = _unet_block(ngf * 4, ngf * 8, submodule=block)
    block = _unet_block(ngf * 2, ngf * 4, submodule=block)
    block = _unet_block(ngf, ngf * 2, submodule=block)
    return _unet_block(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True)


def patchgan_discriminator(input_nc: int = 6, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """The reference NLayerDiscriminator ('basic' = 70x70 PatchGAN)."""
    layers = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** n, 8)
        stride = 2 if n < n_layers else 1
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
        ]
    layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
    return nn.Sequential(*layers)


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """The reference 'normal' init: conv weights N(0, gain), BN scale N(1, gain), biases 0."""
    for m in net.modules():
        name = m.__class__.__name__
        if hasattr(m, "weight") and "Conv" in name:
            nn.init.normal_(m.weight.data, 0.0, gain)
            if m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight.data, 1.0, gain)
            nn.init.constant_(m.bias.data, 0.0)


def gan_loss(pred: torch.Tensor, target_is_real: bool, gan_mode: str) -> torch.Tensor:
    """The reference GANLoss: BCEWithLogits ('vanilla') or MSE ('lsgan') against 1 or 0."""
    target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
    if gan_mode == "vanilla":
        return nn.functional.binary_cross_entropy_with_logits(pred, target)
    if gan_mode == "lsgan":
        return nn.functional.mse_loss(pred, target)
    raise ValueError(f"gan_mode must be 'vanilla' or 'lsgan', got {gan_mode!r}")


def num_downs_for(resolution: int) -> int:
    """unet_128 has 7 downsamplings, unet_256 has 8: the bottleneck is 1x1."""
    n = resolution.bit_length() - 1
    if resolution != 2 ** n or n < 6:
        raise ValueError(f"resolution must be a power of two >= 64, got {resolution}")
    return n


@dataclasses.dataclass
class Pix2PixTorch:
    """Generator, discriminator, their Adam optimisers and the reference training step."""

    resolution: int = 256
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    lr: float = 2e-4
    beta1: float = 0.5
    ngf: int = 64
    ndf: int = 64
    use_dropout: bool = True
    seed: int = 0

    def __post_init__(self):
        torch.manual_seed(self.seed)
        self.net_g = unet_generator(num_downs_for(self.resolution), ngf=self.ngf,
                                    use_dropout=self.use_dropout)
        self.net_d = patchgan_discriminator(ndf=self.ndf)
        init_weights(self.net_g)
        init_weights(self.net_d)
        self.net_g.train()
        self.net_d.train()
        self.opt_g = torch.optim.Adam(self.net_g.parameters(), lr=self.lr, betas=(self.beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.net_d.parameters(), lr=self.lr, betas=(self.beta1, 0.999))

    def _set_d_requires_grad(self, flag: bool) -> None:
        for p in self.net_d.parameters():
            p.requires_grad = flag

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict:
        """One `optimize_parameters` call. Inputs are NCHW float32 in [-1, 1]."""
        fake_b = self.net_g(real_a)
        # D update.
        self._set_d_requires_grad(True)
        self.opt_d.zero_grad()
        pred_fake = self.net_d(torch.cat((real_a, fake_b), 1).detach())
        loss_d_fake = gan_loss(pred_fake, False, self.gan_mode)
        pred_real = self.net_d(torch.cat((real_a, real_b), 1))
        loss_d_real = gan_loss(pred_real, True, self.gan_mode)
        loss_d = (loss_d_fake + loss_d_real) * 0.5
        loss_d.backward()
        self.opt_d.step()
        # G update through the updated, frozen D.
        self._set_d_requires_grad(False)
        self.opt_g.zero_grad()
        pred_fake = self.net_d(torch.cat((real_a, fake_b), 1))
        loss_g_gan = gan_loss(pred_fake, True, self.gan_mode)
        loss_g_l1 = nn.functional.l1_loss(fake_b, real_b) * self.lambda_l1
        loss_g = loss_g_gan + loss_g_l1
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.detach(), "loss_g_gan": loss_g_gan.detach(),
                "loss_g_l1": loss_g_l1.detach()}
