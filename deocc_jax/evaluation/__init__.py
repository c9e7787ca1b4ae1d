"""Evaluation: one evaluation path for the training loop and the eval binary; pixel, face and realism metrics; inpainting baselines."""
