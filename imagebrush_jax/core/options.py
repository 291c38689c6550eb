"""The paper's model as configured: `config.model`, `config.diffusion` and `config.sampling`
(with the grid's size from `config.data`) checked once and frozen into typed options.

    spec = ImageBrushSpec.from_config(config)  # every check of these sections runs here
    model = build.build_model(spec); objective = objective.build(spec, autoencoder)

Each error names the key and the value it got. Sections handed to a module as keyword arguments
(model.unet, model.prompt.vit, model.prompt.mixer) stay sections (FrozenConfigDict), their keys
checked against the module's options; everything else is a typed field.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import ml_collections

from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import plugins as plugins_lib
from imagebrush_jax.diffusion import ddim
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion import schedules
from imagebrush_jax.infra import config_checks as checks
from imagebrush_jax.models import dit as dit_lib
from imagebrush_jax.models import prompt_encoder as prompt_lib
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.models import unet as unet_lib

MAX_EXAMPLES = 8  # example rows that fit in one grid
BACKBONES = ("unet", "dit")  # the denoiser: the paper's UNet, or a diffusion transformer
Section = ml_collections.FrozenConfigDict


def _module_options(module: type[nn.Module], exclude: tuple[str, ...]) -> tuple[str, ...]:
  """The keyword arguments a Flax module takes from the config (its fields, less `exclude`)."""
  return tuple(f.name for f in dataclasses.fields(module)
               if f.init and f.name not in ("parent", "name", "runtime", *exclude))


def _section(value: Any, key: str, module: type[nn.Module], exclude: tuple[str, ...] = ()
             ) -> Section:
  return Section(checks.keyword_arguments(value, key, _module_options(module, exclude)))


@dataclasses.dataclass(frozen=True)
class GridOptions:
  """The grid's geometry: K example rows of two T-pixel tiles, then the query row."""
  tile_size: int
  num_examples: int


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
  """config.diffusion: the noise schedule, what the network predicts, and the loss weights."""
  schedule: str
  num_timesteps: int
  beta_start: float
  beta_end: float
  prediction_type: str
  known_cell_weight: float
  edit_region_weight: float
  edit_region_threshold: float
  residual_target: bool
  timestep_sampling: str  # uniform | logit_normal
  timestep_logit_mean: float
  timestep_logit_std: float
  min_snr_gamma: float  # 0: off

  @classmethod
  def from_config(cls, d: Any) -> DiffusionOptions:
    key = "config.diffusion"
    get = lambda name: checks.get(d, name, key)
    start = checks.number(get("beta_start"), f"{key}.beta_start", 0.0, 1.0)
    end = checks.number(get("beta_end"), f"{key}.beta_end", 0.0, 1.0)
    if not start < end:
      raise checks.ConfigError(f"{key}.beta_start = {start} must be below {key}.beta_end = "
                               f"{end}")
    return cls(
        schedule=checks.choice(get("schedule"), f"{key}.schedule", schedules.SCHEDULES),
        num_timesteps=checks.integer(get("num_timesteps"), f"{key}.num_timesteps", 1, 100_000),
        beta_start=start, beta_end=end,
        prediction_type=checks.choice(get("prediction_type"), f"{key}.prediction_type",
                                      schedules.PREDICTION_TYPES),
        known_cell_weight=checks.number(get("known_cell_weight"), f"{key}.known_cell_weight",
                                        0.0, 1e3),
        edit_region_weight=checks.number(get("edit_region_weight"),
                                         f"{key}.edit_region_weight", 0.0, 1e3),
        edit_region_threshold=checks.number(get("edit_region_threshold"),
                                            f"{key}.edit_region_threshold", 0.0, 2.0),
        residual_target=checks.boolean(get("residual_target"), f"{key}.residual_target"),
        timestep_sampling=checks.choice(get("timestep_sampling"), f"{key}.timestep_sampling",
                                        losses.TIMESTEP_SAMPLINGS),
        timestep_logit_mean=checks.number(get("timestep_logit_mean"),
                                          f"{key}.timestep_logit_mean", -10.0, 10.0),
        timestep_logit_std=checks.number(get("timestep_logit_std"), f"{key}.timestep_logit_std",
                                         0.01, 10.0),
        min_snr_gamma=checks.number(get("min_snr_gamma"), f"{key}.min_snr_gamma", 0.0, 1e3))


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """config.sampling: the DDIM sampler's defaults (each may be overridden per call)."""
  num_steps: int
  guidance_scale: float
  eta: float
  spacing: str
  clip_x0: bool

  @classmethod
  def from_config(cls, s: Any, num_timesteps: int) -> SamplingOptions:
    key = "config.sampling"
    get = lambda name: checks.get(s, name, key)
    return cls(
        num_steps=checks.integer(get("num_steps"), f"{key}.num_steps", 1, num_timesteps),
        guidance_scale=checks.number(get("guidance_scale"), f"{key}.guidance_scale", 0.0, 100.0),
        eta=checks.number(get("eta"), f"{key}.eta", 0.0, 1.0),
        spacing=checks.choice(get("spacing"), f"{key}.spacing", ddim.SPACINGS),
        clip_x0=checks.boolean(get("clip_x0"), f"{key}.clip_x0"))


@dataclasses.dataclass(frozen=True)
class PromptOptions:
  """config.model.prompt: the visual prompt encoder (ViT(**vit) over E, E', I; **mixer)."""
  image_size: int  # 0: the tile size
  max_examples: int
  box_fourier_freqs: int
  dropout: float
  pair_difference: bool  # the ViT also reads each pair's change E' - E
  vit_init: str
  vit: Section
  mixer: Section

  @classmethod
  def from_config(cls, p: Any) -> PromptOptions:
    key = "config.model.prompt"
    get = lambda name: checks.get(p, name, key)
    return cls(
        image_size=checks.integer(get("image_size"), f"{key}.image_size", 0, 4096),
        max_examples=checks.integer(get("max_examples"), f"{key}.max_examples", 1, 64),
        box_fourier_freqs=checks.integer(get("box_fourier_freqs"), f"{key}.box_fourier_freqs",
                                         1, 64),
        dropout=checks.number(get("dropout"), f"{key}.dropout", 0.0, 1.0),
        pair_difference=checks.boolean(get("pair_difference"), f"{key}.pair_difference"),
        vit_init=checks.string(get("vit_init"), f"{key}.vit_init"),
        vit=_section(get("vit"), f"{key}.vit", prompt_lib.ViT, exclude=("dropout",)),
        mixer=_section(get("mixer"), f"{key}.mixer", prompt_lib.PromptEncoder,
                       exclude=("vit", "max_examples", "box_fourier_freqs", "box_drop_rate",
                                "image_size", "dropout", "extra_tokens", "pair_difference")))


@dataclasses.dataclass(frozen=True)
class AutoencoderOptions:
  """config.model.autoencoder: the frozen KL autoencoder of a latent-space model (latent.py)."""
  params: str
  scaling_factor: float  # 0: the file's
  arch: Section | None  # recorded in a run's saved config (latent.record_arch)
  sample_posterior: bool
  dtype: str

  @classmethod
  def from_config(cls, a: Any) -> AutoencoderOptions:
    key = "config.model.autoencoder"
    get = lambda name: checks.get(a, name, key)
    arch = a["arch"] if "arch" in a else None
    return cls(
        params=checks.string(get("params"), f"{key}.params"),
        scaling_factor=checks.number(get("scaling_factor"), f"{key}.scaling_factor", 0.0, 1e3),
        arch=Section(checks.plain(arch)) if arch else None,
        sample_posterior=checks.boolean(get("sample_posterior"), f"{key}.sample_posterior"),
        dtype=checks.choice(get("dtype"), f"{key}.dtype", ("float32", "bfloat16")))


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """config.model: the paper's model (UNet(**unet) and the prompt encoder), its plug-ins
  (variant), its training-time drops and how it runs (runtime)."""
  in_channels: int
  latent_factor: int
  cfg_drop_rate: float
  box_drop_rate: float
  target_cell_fill: str
  variant: str
  variant_options: Section
  dtype: str  # compute dtype (parameters stay float32)
  runtime: runtime_lib.Runtime  # dtype, remat, remat_policy, attention_impl, conv_impl
  backbone: str  # unet | dit
  unet: Section
  dit: Section
  unet_init: str
  prompt: PromptOptions
  autoencoder: AutoencoderOptions | None  # latent space only
  # Diagnostic (config.model.task_oracle, never in a shipped config): the size of the task id
  # vocabulary the prompt gets a token of the true task from; 0 = off.
  task_oracle_vocab: int = 0

  @classmethod
  def from_config(cls, m: Any, num_tasks: int = 0) -> ModelOptions:
    """config.model; `num_tasks` the task_id vocabulary's size (for the task oracle)."""
    key = "config.model"
    get = lambda name: checks.get(m, name, key)
    factor = checks.integer(get("latent_factor"), f"{key}.latent_factor", 1, 64)
    autoencoder = None
    if factor > 1:
      if "autoencoder" not in m:
        raise checks.ConfigError(
            f"{key}.latent_factor = {factor} needs {key}.autoencoder (params file, "
            f"scaling_factor, sample_posterior, dtype); see configs/latent_tiny.py")
      autoencoder = AutoencoderOptions.from_config(m.autoencoder)
    dtype = checks.choice(get("dtype"), f"{key}.dtype", ("float32", "bfloat16"))
    runtime = runtime_lib.Runtime.from_config(m, key)
    backbone = checks.choice(get("backbone"), f"{key}.backbone", BACKBONES)
    unet_init = checks.string(get("unet_init"), f"{key}.unet_init")
    if unet_init and backbone != "unet":
      raise checks.ConfigError(f"{key}.unet_init = {unet_init!r} starts a UNet, but "
                               f"{key}.backbone = {backbone!r}")
    variant = checks.string(get("variant"), f"{key}.variant")
    variant_options = checks.plain(get("variant_options") or {})
    _check_variant(variant, variant_options)
    return cls(
        in_channels=checks.integer(get("in_channels"), f"{key}.in_channels", 1, 64),
        latent_factor=factor,
        cfg_drop_rate=checks.number(get("cfg_drop_rate"), f"{key}.cfg_drop_rate", 0.0, 1.0),
        box_drop_rate=checks.number(get("box_drop_rate"), f"{key}.box_drop_rate", 0.0, 1.0),
        target_cell_fill=checks.choice(get("target_cell_fill"), f"{key}.target_cell_fill",
                                       sorted(model_lib.TARGET_CELL_FILLS)),
        variant=variant, variant_options=Section(variant_options), dtype=dtype,
        runtime=runtime,
        backbone=backbone,
        unet=_section(get("unet"), f"{key}.unet", unet_lib.UNet, exclude=("out_channels",)),
        dit=_section(get("dit"), f"{key}.dit", dit_lib.DiT, exclude=("out_channels",)),
        unet_init=unet_init,
        prompt=PromptOptions.from_config(get("prompt")),
        autoencoder=autoencoder,
        task_oracle_vocab=num_tasks if checks.boolean(get("task_oracle"),
                                                      f"{key}.task_oracle") else 0)


def _check_variant(name: str, options: dict[str, Any]) -> None:
  """config.model.variant names a plug-in set ('' = none) that takes variant_options."""
  if not name:
    if options:
      raise checks.ConfigError(f"config.model.variant_options {sorted(options)} given without "
                               f"config.model.variant")
    return
  if name not in plugins_lib.VARIANTS:
    raise checks.ConfigError(f"config.model.variant must be '' (the paper's model) or one of "
                             f"{sorted(plugins_lib.VARIANTS)}, got {name!r}")
  accepted = [p.name for p in inspect.signature(plugins_lib.VARIANTS[name]).parameters.values()
              if p.kind == inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise checks.ConfigError(f"config.model.variant_options has {unknown}, which variant "
                             f"{name!r} does not take (it takes {accepted})")


@dataclasses.dataclass(frozen=True)
class ImageBrushSpec:
  """What builds, trains and samples the paper's model: grid size, model, diffusion, sampling."""
  grid: GridOptions
  model: ModelOptions
  diffusion: DiffusionOptions
  sampling: SamplingOptions

  @property
  def is_latent(self) -> bool:
    return self.model.latent_factor != 1

  @classmethod
  def from_config(cls, config: Any) -> ImageBrushSpec:
    """Checks config.model / diffusion / sampling and the grid size in config.data."""
    grid = GridOptions(
        tile_size=checks.integer(checks.get(config.data, "tile_size", "config.data"),
                                 "config.data.tile_size", 4, 4096),
        num_examples=checks.integer(checks.get(config.data, "num_examples", "config.data"),
                                    "config.data.num_examples", 1, MAX_EXAMPLES))
    diffusion = DiffusionOptions.from_config(config.diffusion)
    num_tasks = len(config.data.train_tasks) + len(config.data.heldout_tasks)
    spec = cls(grid=grid, model=ModelOptions.from_config(config.model, num_tasks),
               diffusion=diffusion,
               sampling=SamplingOptions.from_config(config.sampling, diffusion.num_timesteps))
    _check_sizes(spec)
    plugins_lib.plugins(spec, spec.model.runtime)  # the variant checks its own options
    return spec


def as_spec(config_or_spec: Any) -> ImageBrushSpec:
  """An ImageBrushSpec as given, or parsed from a config (tools and tests pass the ConfigDict;
  programs parse once at start)."""
  if isinstance(config_or_spec, ImageBrushSpec):
    return config_or_spec
  return ImageBrushSpec.from_config(config_or_spec)


def _check_sizes(spec: ImageBrushSpec) -> None:
  """Refuses tile, latent, patch and UNet-level sizes that do not divide, naming the keys."""
  m, tile = spec.model, spec.grid.tile_size
  factor = m.latent_factor
  if tile % factor:
    raise checks.ConfigError(f"config.data.tile_size = {tile} is not divisible by "
                             f"config.model.latent_factor = {factor}")
  prompt_size = m.prompt.image_size or tile
  patch = m.prompt.vit.get("patch_size", 0)
  if not isinstance(patch, int) or patch < 1 or prompt_size % patch:
    key = "config.model.prompt.image_size" if m.prompt.image_size else "config.data.tile_size"
    raise checks.ConfigError(f"{key} = {prompt_size} (the prompt encoder's image size) is not "
                             f"divisible by config.model.prompt.vit.patch_size = {patch}")
  if m.backbone == "dit":
    patch = m.dit.get("patch_size", 0)
    if not isinstance(patch, int) or patch < 1 or (tile // factor) % patch:
      raise checks.ConfigError(
          f"config.data.tile_size = {tile} gives {tile // factor}-cell tiles in diffusion "
          f"space, not divisible by config.model.dit.patch_size = {patch}")
    return
  levels = len(m.unet.get("channels", ()))
  if not levels:
    raise checks.ConfigError("config.model.unet.channels must list one width per level")
  step = 2 ** (levels - 1)
  if (tile // factor) % step:
    raise checks.ConfigError(
        f"config.data.tile_size = {tile} gives {tile // factor}-cell tiles in diffusion space, "
        f"not divisible by {step}, the downsampling of the {levels} levels of "
        f"config.model.unet.channels")
