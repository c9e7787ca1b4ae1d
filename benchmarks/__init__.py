"""Benchmarks against the PyTorch pix2pix reference (not part of the installed library)."""
