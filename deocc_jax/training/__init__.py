"""Training: the GAN loop, its pure step and losses, checkpoints, and how arrays are laid out on a mesh."""
