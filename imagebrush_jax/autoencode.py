"""Round-trips one image through an autoencoder parameter file, to check it by eye.

  python -m imagebrush_jax.autoencode --params vae.safetensors --input x.png --output y.png

Encodes the image (posterior mean), decodes it and writes the reconstruction (atomically), with
the same size as the input: sides that do not divide by the autoencoder's factor are padded by
reflection first and cropped after. Prints the latent shape, its statistics after the file's
scaling and shift (about zero mean and unit variance for a well-scaled autoencoder) and the PSNR.
The parameter file is a converted SD VAE (`imagebrush_jax.convert --from sd_vae`) or the export of
`imagebrush_jax.train_autoencoder`.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.data import image_decode
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.models import runtime as runtime_lib


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB of two uint8 images."""
  mse = np.mean(np.square(a.astype(np.float64) - b.astype(np.float64)))
  return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def round_trip(model: ae.AutoencoderKL, params, image: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [H, W, 3] -> (reconstruction uint8 [H, W, 3], latent mean [h, w, C], unscaled)."""
  h, w = image.shape[:2]
  f = model.arch.downsample_factor
  ph, pw = -h % f, -w % f
  mode = "reflect" if ph < h and pw < w else "edge"
  padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
  x = jnp.asarray(padded, jnp.float32)[None] / 127.5 - 1.0

  @jax.jit
  def run(params, x):
    posterior = model.apply({"params": params}, x, method=ae.AutoencoderKL.encode)
    return model.apply({"params": params}, posterior.mean, method=ae.AutoencoderKL.decode), \
        posterior.mean

  recon, latent = run(params, x)
  out = np.clip(np.round((np.asarray(recon[0]) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return out[:h, :w], np.asarray(latent[0])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    params, arch = autoencoder_params.load(_PARAMS.value)
    image = image_decode.load_rgb(_INPUT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if arch.in_channels != 3 or arch.out_channels != 3:
    print(f"error: {_PARAMS.value}: an RGB autoencoder is needed, this one has "
          f"{arch.in_channels} -> {arch.out_channels} channels", file=sys.stderr)
    sys.exit(1)
  model = ae.build(arch, runtime_lib.Runtime(dtype=_DTYPE.value))
  recon, latent = round_trip(model, jax.tree.map(jnp.asarray, params), image)
  files.save_png_atomic(_OUTPUT.value, recon)
  scaled = (latent - arch.shift_factor) * arch.scaling_factor
  print(f"image {image.shape[1]}x{image.shape[0]} -> latent {latent.shape[1]}x{latent.shape[0]}"
        f"x{latent.shape[2]} (f={arch.downsample_factor}); scaled latent mean "
        f"{scaled.mean():.3f}, std {scaled.std():.3f}; PSNR {psnr(image, recon):.2f} dB")
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  # Flags are defined only when run as a program: importing this module defines none.
  _PARAMS = flags.DEFINE_string("params", None, "Autoencoder parameter file (.safetensors).")
  _INPUT = flags.DEFINE_string("input", None, "Input image (png, jpg, webp, ...).")
  _OUTPUT = flags.DEFINE_string("output", None, "Output PNG.")
  _DTYPE = flags.DEFINE_enum("dtype", "float32", ("float32", "bfloat16"), "Compute dtype.")
  flags.mark_flags_as_required(["params", "input", "output"])
  cli.run(main)
