"""deocc: de-occlusion GANs for faces, in JAX/Flax."""

__version__ = "0.1.0"
