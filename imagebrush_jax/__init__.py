"""ImageBrush-JAX: exemplar-based image editing by diffusion inpainting of an example grid."""
