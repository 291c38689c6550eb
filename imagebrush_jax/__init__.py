"""ImageBrush-JAX: exemplar-based image editing by diffusion inpainting of an example grid."""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
