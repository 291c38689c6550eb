"""The KL autoencoder's training objective and evaluation, for the shared loop (loop.py).

The model and loss (`build_trainable`), and the evaluator: each evaluation (EMA parameters,
held-out tiles) logs the reconstruction PSNR and the latents' standard deviation, writes
WORKDIR/reconstructions/step_N.png (originals over reconstructions), and exports
WORKDIR/<config.autoencoder.export_name>: a parameter file that `imagebrush_jax.autoencode` and
latent ImageBrush configs (config.model.autoencoder.params) read.

Loss per example: mean |x - x'| (or squared) over pixels + kl_weight * KL / (pixels * channels),
i.e. SD's sum-over-pixels objective divided by the pixel count, so kl_weight keeps SD's meaning.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import dm_pix
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np

from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.data import tiles
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.training import metric_writers
from imagebrush_jax.training import train_state
from imagebrush_jax.training.options import LoopOptions

RECONSTRUCTION_LOSSES = ("l1", "l2")
EVAL_SEED_OFFSET = 1_000_003  # held-out tiles come from scenes no training index uses


# ====================================================================== model and loss
def architecture(config: ml_collections.ConfigDict) -> ae.AutoencoderConfig:
  """config.autoencoder.arch as an AutoencoderConfig; errors name the key."""
  return ae.AutoencoderConfig.from_dict(config.autoencoder.arch.to_dict(),
                                        where="config.autoencoder.arch")


def build_model(config: ml_collections.ConfigDict) -> ae.AutoencoderKL:
  a = config.autoencoder
  if a.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.autoencoder.dtype must be float32 or bfloat16, got {a.dtype!r}")
  return ae.build(architecture(config), runtime_lib.Runtime.from_config(a, "config.autoencoder"))


def _image_to_unit(images: jax.Array) -> jax.Array:
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def make_loss_fn(model: ae.AutoencoderKL, config: ml_collections.ConfigDict):
  """(params, batch {"image": uint8 [B, T, T, 3]}, rng, train) -> (loss, metrics)."""
  a = config.autoencoder
  if a.reconstruction_loss not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"config.autoencoder.reconstruction_loss must be one of "
                     f"{RECONSTRUCTION_LOSSES}, got {a.reconstruction_loss!r}")
  if not a.kl_weight >= 0:
    raise ValueError(f"config.autoencoder.kl_weight must be >= 0, got {a.kl_weight!r}")
  kl_weight, l1 = float(a.kl_weight), a.reconstruction_loss == "l1"
  sample = bool(a.sample_posterior)

  def loss_fn(params: Any, batch: Mapping[str, Any], rng: jax.Array, train: bool = True):
    x = _image_to_unit(batch["image"])
    recon, posterior = model.apply({"params": params}, x, sample and train,
                                   rngs={"posterior": rng})
    err = recon - x
    per_pixel = jnp.abs(err) if l1 else jnp.square(err)
    rec = per_pixel.reshape(x.shape[0], -1).mean(axis=-1)
    kl = posterior.kl() / math.prod(x.shape[1:])
    loss = jnp.mean(rec + kl_weight * kl)
    mse = jnp.mean(jnp.square(jnp.clip(recon, -1.0, 1.0) - x).reshape(x.shape[0], -1), axis=-1)
    psnr = jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))  # range 2 in [-1, 1]
    return loss, {"reconstruction": jnp.mean(rec), "kl": jnp.mean(posterior.kl()), "psnr": psnr}

  return loss_fn


def load_initial_params(path: str, arch: ae.AutoencoderConfig) -> dict[str, Any]:
  """Parameters to fine-tune from (config.autoencoder.init_from), checked against `arch`."""
  params, file_arch = autoencoder_params.load(path)
  for key in ("in_channels", "out_channels", "latent_channels", "block_out_channels",
              "layers_per_block", "norm_num_groups", "mid_block_attention", "use_quant_conv",
              "use_post_quant_conv"):
    if getattr(file_arch, key) != getattr(arch, key):
      raise ValueError(f"config.autoencoder.init_from = {path} has {key} = "
                       f"{getattr(file_arch, key)!r}, config.autoencoder.arch.{key} is "
                       f"{getattr(arch, key)!r}")
  return params


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective(train_state.Objective):
  """The autoencoder's loss, with the model the evaluator reconstructs with."""
  model: ae.AutoencoderKL | None = None


def build_trainable(config: ml_collections.ConfigDict, options: LoopOptions
                    ) -> train_state.Trainable:
  """The autoencoder of config.autoencoder (from config.autoencoder.init_from if set) with
  the loop's optimizer (config.train) and seed."""
  model = build_model(config)
  init_from = config.autoencoder.init_from
  start = load_initial_params(init_from, model.arch) if init_from else None

  def init_params(rng: jax.Array):
    if start is not None:
      return jax.tree.map(jnp.asarray, start)
    return ae.init_params(model, rng)

  objective = AutoencoderObjective(init_params=init_params, loss_fn=make_loss_fn(model, config),
                                   compute_dtype=str(config.autoencoder.dtype), model=model)
  return train_state.make_trainable(objective, options.train, options.seed)


# ====================================================================== evaluation
def reconstruction_sheet(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """uint8 sheet: originals in the top row, their reconstructions below, 2-pixel white gaps."""
  n, t = originals.shape[:2]
  sheet = np.full((2 * t + 2, n * (t + 2) - 2, 3), 255, np.uint8)
  for i in range(n):
    x = i * (t + 2)
    sheet[:t, x:x + t] = originals[i]
    sheet[t + 2:, x:x + t] = reconstructions[i]
  return sheet


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class Evaluator:
  """Held-out reconstruction PSNR / SSIM, a PNG of reconstructions, and the exported params file.

  Uses config.train.eval_num_grids held-out tiles (tiles here, not grids) and shows the first
  config.train.sample_num_grids of them in the PNG.
  """

  def __init__(self, config: ml_collections.ConfigDict, task: train_state.Trainable, mesh: Mesh,
               workdir: epath.Path, writer: metric_writers.MetricWriter):
    self.config, self.task, self.mesh, self.workdir, self.writer = config, task, mesh, workdir, writer
    num = int(config.train.eval_num_grids)
    if num < 1 or num % jax.device_count():
      raise ValueError(f"config.train.eval_num_grids ({num}, held-out tiles) must be positive "
                       f"and divide by the {jax.device_count()} devices")
    heldout = tiles.make_eval_tiles(config, num_tiles=num,
                                    seed=int(config.seed) + EVAL_SEED_OFFSET,
                                    tasks=config.data.train_tasks)
    self.images = heldout
    per = num // jax.process_count()
    local = heldout[jax.process_index() * per:(jax.process_index() + 1) * per]
    self.batch = parallel.host_batch_to_global({"image": local}, mesh)["image"]
    model = task.objective.model

    def reconstruct(params, images):
      x = _image_to_unit(images)
      posterior = model.apply({"params": params}, x, method=ae.AutoencoderKL.encode)
      recon = model.apply({"params": params}, posterior.mean, method=ae.AutoencoderKL.decode)
      return jnp.clip(recon, -1.0, 1.0), posterior.mean

    self._reconstruct = jax.jit(reconstruct)

  def run(self, step: int, state: dict) -> dict[str, float]:
    params = state["ema_params"]
    recon, latents = self._reconstruct(params, self.batch)
    recon = np.asarray(multihost_utils.process_allgather(recon, tiled=True))
    latents = np.asarray(multihost_utils.process_allgather(latents, tiled=True))
    truth = _image_to_unit(self.images)
    to01 = lambda x: (np.asarray(x, np.float32) + 1.0) / 2.0
    scalars = {
        "eval/psnr": float(np.mean(dm_pix.psnr(to01(truth), to01(recon)))),
        "eval/ssim": float(np.mean(dm_pix.ssim(to01(truth), to01(recon)))),
        "eval/latent_std": float(np.std(latents)),
        "eval/latent_mean": float(np.mean(latents)),
    }
    self.writer.write_scalars(step, scalars)
    metric_writers.log_line(f"eval at step {step}: " +
                            ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    full_params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
      shown = int(self.config.train.sample_num_grids)
      if shown:
        sheet = reconstruction_sheet(self.images[:shown], _to_uint8(recon[:shown]))
        files.save_png_atomic(self.workdir / "reconstructions" / f"step_{step:07d}.png", sheet)
        self.writer.write_images(step, {"reconstructions": sheet})
      self.export(full_params, latents, step)
    return scalars

  def export(self, params: Any, latents: np.ndarray, step: int) -> None:
    """WORKDIR/<export_name>: the EMA parameters, scaling factor measured if configured."""
    arch = self.task.objective.model.arch
    if self.config.autoencoder.measure_scaling_factor:
      std = float(np.std(latents - arch.shift_factor))
      arch = ae.AutoencoderConfig(**{**arch.to_dict(), "scaling_factor": 1.0 / max(std, 1e-6)})
    path = self.workdir / self.config.autoencoder.export_name
    autoencoder_params.save(path, jax.tree.map(np.asarray, params), arch,
                            source=f"train_autoencoder:{self.workdir}@{step}:ema_params")
    metric_writers.log_line(f"exported {path} (scaling_factor {arch.scaling_factor:.5g})")
