"""ImageBrush fine-tuned from Stable Diffusion 1.5: `paper_256` started from converted weights.

Every pretrained part comes from a converted file (docs/model.md: "Starting from Stable Diffusion"):
  UNet       SD 1.5's UNet (convert --from sd_unet); its input convolution widened with zeros
             for the known grid and the mask, so at step 0 it computes SD's function of the
             noisy latent
  VAE        SD's AutoencoderKL (convert --from sd_vae), frozen
  prompt     CLIP ViT-B/16's vision tower (convert --from vit --lossy) as the ViT backbone; the
             mixer, role / index embeddings, box token and null token start at random
The UNet keeps SD's layout, cross-attention to the prompt on the three outer levels and in the
middle (the paper trains from scratch with self-attention only on the outermost level), so that
every SD weight has its place. SD 1.5 attends to 768-wide tokens: the prompt mixer's width.
"""
import ml_collections

from configs import paper_256


def get_config() -> ml_collections.ConfigDict:
  c = paper_256.get_config()  # its data, autoencoder latent space, ViT-B/16 and training
  # ---------------------------------------------------------------- model
  c.model.unet_init = "sd15_unet.safetensors"
  c.model.autoencoder.params = "sd_vae.safetensors"
  c.model.prompt.vit_init = "clip_vit_b16.safetensors"
  c.model.unet.attention = ("self+cross", "self+cross", "self+cross", "none")  # SD 1.5's
  c.model.unet.num_heads = 8
  c.model.prompt.mixer.width = 768  # SD 1.5's cross_attention_dim
  # Cross-attention on the outermost level costs memory: on an 8x A100-80GB / H100-80GB node,
  # 36 grids per device per step in 9 micro-batches of 4 (53.3 GiB per device, estimated; 6 would
  # need 75.2; docs/training.md: "Memory plan").
  c.train.grad_accum_steps = 9
  return c
