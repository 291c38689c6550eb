"""Weight converters: public PyTorch checkpoints -> this project's parameter files.

  params_file.py         the converted-params format (safetensors + architecture metadata) and a
                         torch-free safetensors reader
  diffusers_folder.py    finding and reading diffusers model folders, key-mismatch errors
  sd_vae.py              diffusers AutoencoderKL folders (Stable Diffusion's VAE)
  sd_unet.py             diffusers UNet2DConditionModel folders (Stable Diffusion 1.x / 2.x's
                         UNet) -> the UNet in SD's layout, and a parity check against diffusers
  vit.py                 timm / Hugging Face ViT, SigLIP and CLIP vision backbones -> the prompt
                         encoder's ViT
  autoencoder_params.py  save / load autoencoder parameter files (converted or trained)

The command line is `python -m imagebrush_jax.convert`.
"""
