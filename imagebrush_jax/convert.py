"""Weight conversion CLI: public PyTorch weights -> a converted-params file.

  python -m imagebrush_jax.convert --from sd_vae --input DIR --output vae.safetensors
      DIR: a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors),
      e.g. Stable Diffusion's `vae/`; the architecture follows its config.json.
  python -m imagebrush_jax.convert --from vit --input FILE.safetensors --output vit.safetensors \
      [--num_heads 12] [--lossy]
      timm / Hugging Face ViT, SigLIP or CLIP vision weights -> the prompt encoder's ViT.
  python -m imagebrush_jax.convert --from sd_unet --input DIR --output unet.safetensors [--verify]
      DIR: a diffusers UNet2DConditionModel folder (Stable Diffusion 1.x / 2.x `unet/`) -> the
      UNet in SD's layout, for config.model.unet_init. --verify (needs torch + diffusers) runs
      diffusers' UNet and the converted one on the same random input before writing and prints a
      JSON line with their max_abs_diff; if it exceeds 1e-4, nothing is written and the exit
      status is 1.
  python -m imagebrush_jax.convert --from inception --input pt_inception-2015-12-05-6726825d.pth \
      --output pt_inception.safetensors
      pytorch-fid's InceptionV3 weights (.pth, read with PyTorch; or .npz) -> a safetensors file
      of the same arrays under their PyTorch names, float32, which `evaluate
      --inception_weights` reads without PyTorch (models/inception.py).

Except for inception's, the output is a safetensors file whose tensors are the Flax parameters
under their '/'-joined paths (e.g. `encoder/conv_in/kernel`, HWIO / [in, out] layouts, float32)
and whose header metadata holds `imagebrush_jax.kind` ('autoencoder_kl' | 'vit' | 'unet'),
`imagebrush_jax.architecture` (JSON of the sizes), `imagebrush_jax.version` and
`imagebrush_jax.source`; see converters/params_file.py. No pickle is written, and none read but
a .pth given to --from inception (with PyTorch's weights_only loader). Every file is written
atomically. Missing or unexpected keys and shape mismatches stop the conversion with
one error that lists them. (An autoencoder trained here needs no conversion:
`imagebrush_jax.train_autoencoder` exports this format itself.)
"""
from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
import numpy as np
from safetensors import numpy as safetensors_np

from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import sd_unet
from imagebrush_jax.converters import sd_vae
from imagebrush_jax.converters import vit as vit_conv
from imagebrush_jax.models import inception

SOURCES = ("sd_vae", "sd_unet", "vit", "inception")


def convert_sd_vae(folder: str, output: str) -> list[str]:
  params, arch = sd_vae.convert(folder)
  autoencoder_params.save(output, params, arch, source=f"sd_vae:{files.absolute(folder)}")
  n = params_file.flatten(params)
  return [f"AutoencoderKL: block_out_channels={list(arch.block_out_channels)}, "
          f"layers_per_block={arch.layers_per_block}, latent_channels={arch.latent_channels}, "
          f"f={arch.downsample_factor}, scaling_factor={arch.scaling_factor}, {len(n)} tensors"]


def convert_sd_unet(folder: str, output: str, verify: bool) -> tuple[list[str], dict | None]:
  """Converts in memory, with `verify` compares against diffusers, and writes `output` unless
  the comparison fails; returns (notes, the comparison or None)."""
  params, arch = sd_unet.convert(folder)
  check = sd_unet.verify(folder, params, arch) if verify else None
  if check is None or check["ok"]:
    sd_unet.save(output, params, arch, source=f"sd_unet:{files.absolute(folder)}")
  heads = sd_unet.heads_per_level(arch["channels"], arch["num_heads"], arch["head_dim"])
  notes = [f"UNet: channels={arch['channels']}, attention={arch['attention']}, "
           f"num_res_blocks={arch['num_res_blocks']}, heads per level={heads}, "
           f"cross_attention_dim={arch['cross_attention_dim']}, "
           f"{len(params_file.flatten(params))} tensors (set config.model.unet.* to these, "
           f"config.model.prompt.mixer.width = {arch['cross_attention_dim']})"]
  return notes, check


def convert_vit(path: str, output: str, num_heads: int | None, lossy: bool) -> list[str]:
  result = vit_conv.convert(path, num_heads=num_heads, lossy=lossy)
  vit_conv.save(output, result, source=f"vit:{files.absolute(path)}")
  a = result.architecture
  return result.notes + [
      f"ViT: patch_size={a['patch_size']}, width={a['width']}, depth={a['depth']}, "
      f"num_heads={a['num_heads']}, mlp_ratio={a['mlp_ratio']}, image_size={a['image_size']} "
      f"(set config.model.prompt.vit.* and config.model.prompt.image_size to these)"]


def convert_inception(path: str, output: str) -> list[str]:
  """pytorch-fid's InceptionV3 state dict -> its arrays (checked by name and shape, float32)
  as a safetensors file under their PyTorch names, which inception.load_params reads."""
  state = inception.read_state_dict(path)
  inception.params_from_state_dict(state)  # every array the network reads, of its shape
  keep = {k: np.ascontiguousarray(state[k], np.float32) for k in inception.torch_state_shapes()}
  files.write_bytes_atomic(output, safetensors_np.save(keep))
  return [f"InceptionV3 (pytorch-fid): {len(keep)} arrays under their PyTorch names "
          f"(evaluate --inception_weights)"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  source, path, output = _FROM.value, _INPUT.value, _OUTPUT.value
  if files.absolute(path) == files.absolute(output):
    raise app.UsageError("--output must differ from --input")
  if _VERIFY.value and source != "sd_unet":
    raise app.UsageError("--verify is for --from sd_unet")
  check = None
  try:
    if source == "sd_vae":
      notes = convert_sd_vae(path, output)
    elif source == "sd_unet":
      notes, check = convert_sd_unet(path, output, _VERIFY.value)
    elif source == "inception":
      notes = convert_inception(path, output)
    else:
      notes = convert_vit(path, output, _NUM_HEADS.value, _LOSSY.value)
  except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
    print(f"error: {cli.error_message(e)}", file=sys.stderr)
    sys.exit(1)
  if check is not None and not check["ok"]:
    print(json.dumps(check))
    print(f"error: the converted UNet differs from diffusers' by {check['max_abs_diff']:.3g} "
          f"(tolerance {check['tolerance']}); {output} not written", file=sys.stderr)
    sys.exit(1)
  for line in notes:
    print(line)
  print(f"wrote {output}")
  if check is not None:
    print(json.dumps(check))


if __name__ == "__main__":
  # Flags are defined only when run as a program: importing this module defines none.
  _FROM = flags.DEFINE_enum("from", None, SOURCES, "What --input is.")
  _INPUT = flags.DEFINE_string("input", None, "Input folder or file.")
  _OUTPUT = flags.DEFINE_string("output", None, "Output .safetensors file.")
  _NUM_HEADS = flags.DEFINE_integer("num_heads", None,
                                    "vit: attention heads (default: from config.json next to the "
                                    "input).")
  _LOSSY = flags.DEFINE_bool("lossy", False,
                             "vit: drop what the target ViT cannot represent (class token, "
                             "pre-norm, query biases, non-exact GELU) instead of failing.")
  _VERIFY = flags.DEFINE_bool("verify", False,
                              "sd_unet: compare the converted UNet with diffusers' on a random "
                              "input and print the JSON result (needs torch + diffusers).")
  flags.mark_flags_as_required(["from", "input", "output"])
  cli.run(main)
