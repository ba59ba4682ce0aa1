"""mmdlm: discrete diffusion for text and images."""

__version__ = "0.1.0"
