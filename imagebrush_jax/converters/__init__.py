"""Weight converters: public PyTorch checkpoints -> this project's parameter files.

  params_file.py         the converted-params format (safetensors + architecture metadata) and a
                         torch-free safetensors reader
  sd_vae.py              diffusers AutoencoderKL folders (Stable Diffusion's VAE)
  vit.py                 timm / Hugging Face ViT, SigLIP and CLIP vision backbones -> the prompt
                         encoder's ViT
  autoencoder_params.py  save / load autoencoder parameter files (converted or trained)

The command line is `python -m imagebrush_jax.convert`.
"""
