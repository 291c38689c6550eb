"""A finished (or running) training run as what inference and evaluation need: its config,
its model, its latent space and its EMA parameters, all from the run's own checkpoint.

    run = load_run(workdir)            # latest checkpoint
    run.config, run.model, run.space, run.params, run.step
    save_params_file(run, "model.safetensors")   # the same, as one file
    run = load_params_file("model.safetensors")

Only the arrays a tool uses are read (the EMA parameters, and in latent space the frozen
autoencoder's), never the optimizer state; the autoencoder's architecture comes from the saved
config, so its parameter file is not needed after training.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import files
from imagebrush_jax.core import latent
from imagebrush_jax.converters import params_file
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import options as core_options
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.training import config_migration


@dataclasses.dataclass(frozen=True)
class Run:
  config: ml_collections.ConfigDict  # as saved (migrated to the current layout)
  spec: core_options.ImageBrushSpec  # the config's model, diffusion and sampling, checked
  model: model_lib.ImageBrush
  params: Any  # the 'params' collection (EMA weights unless asked otherwise), host numpy
  step: int
  workdir: str
  space: latent.LatentSpace | None = None  # the frozen autoencoder's space; None in pixels


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config files use (ml_collections keeps lists as lists)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  """A saved config (JSON) in the current layout: tuples back, then config_migration."""
  return ml_collections.ConfigDict(config_migration.migrate_dict(_tuples(data)))


def _config_of(reader: ckpt_lib.CheckpointReader | None, workdir: str,
               step: int | None) -> ml_collections.ConfigDict:
  """The run's config: the one saved with `step` (the latest when None), else
  WORKDIR/config.json (a run without checkpoints, or whose saved config cannot be read)."""
  path = files.join(workdir, "config.json")
  if reader is not None:
    try:
      return config_from_json(reader.config(reader.resolve_step(step)))
    except (ckpt_lib.CheckpointCorruptError, FileNotFoundError):
      if not files.exists(path):
        raise
  if not files.exists(path):
    raise FileNotFoundError(f"{workdir} holds neither checkpoints with a config nor config.json")
  try:
    return config_from_json(json.loads(files.read_text(path)))
  except (ValueError, TypeError) as e:
    raise ValueError(f"cannot read the run config {path}: {e}") from e


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The run's config: the one saved in the checkpoint, else WORKDIR/config.json."""
  if not files.exists(files.join(workdir, "checkpoints")):
    return _config_of(None, workdir, step)
  with ckpt_lib.CheckpointReader(workdir) as reader:
    return _config_of(reader, workdir, step)


def _check_shapes(saved: Any, wanted: Any, what: str) -> None:
  saved_shapes, wanted_shapes = ckpt_lib.flat_shapes(saved), ckpt_lib.flat_shapes(wanted)
  if saved_shapes != wanted_shapes:
    raise ckpt_lib.CheckpointMismatchError(
        f"{what} does not fit its own config:\n"
        + ckpt_lib.describe_mismatch(saved_shapes, wanted_shapes))


MODEL_KIND = "imagebrush"  # params_file kind of an exported run


def _assemble(config: ml_collections.ConfigDict, params: Any, step: int, where: str,
              workdir: str) -> Run:
  """A Run from its config and parameters, after checking every array's shape against the
  model the config builds (`where` names the checkpoint or file in errors)."""
  spec = core_options.ImageBrushSpec.from_config(config)
  model = build_lib.build_model(spec)
  space = latent.from_config(spec)
  if space is not None:
    _check_shapes(params.get(latent.PARAMS_KEY, {}), ae.param_shapes(space.model),
                  f"the autoencoder in {where}")
  own = {k: v for k, v in params.items() if k != latent.PARAMS_KEY}
  _check_shapes(own, build_lib.param_shapes(model, spec), where)
  return Run(config=config, spec=spec, model=model, params=params, step=int(step),
             workdir=str(workdir), space=space)


def save_params_file(run: Run, path: str) -> None:
  """The run's parameters (the frozen autoencoder's included) and its config as one safetensors
  file: no pickle, readable by any safetensors library, loaded by load_params_file."""
  params_file.save(path, run.params, kind=MODEL_KIND,
                   architecture={"config": run.config.to_dict(), "step": run.step,
                                 "run": run.workdir},
                   source=f"{run.workdir} step {run.step}")


def load_params_file(path: str) -> Run:
  """A run exported by save_params_file (`python -m imagebrush_jax.export`)."""
  params, arch, _ = params_file.load(path, MODEL_KIND)
  try:
    config, step, workdir = config_from_json(arch["config"]), arch["step"], arch["run"]
  except (KeyError, TypeError, AttributeError) as e:
    raise params_file.ParamsFileError(f"{path}: its architecture metadata lacks the run's "
                                      f"config, step or folder ({e})") from e
  return _assemble(config, params, step, f"parameter file {path}", workdir)


def load(workdir: str | None = None, params: str | None = None, step: int | None = None, *,
         use_ema: bool = True) -> Run:
  """A run from its folder (`workdir`, at `step`) or from its exported file (`params`)."""
  if (workdir is None) == (params is None):
    raise ValueError("give a run folder (--workdir) or an exported file (--params), not both")
  if params is not None:
    if step is not None or not use_ema:
      raise ValueError("--step and --raw_params choose a checkpoint of a run folder; an "
                       "exported file holds one set of parameters")
    return load_params_file(params)
  return load_run(workdir, step, use_ema=use_ema)


def load_run(workdir: str, step: int | None = None, *, use_ema: bool = True) -> Run:
  """Config, model, latent space and parameters of the run in `workdir` (latest checkpoint)."""
  files.check_access(workdir)
  if not files.exists(workdir):
    raise FileNotFoundError(f"run folder {workdir} does not exist")
  key = "ema_params" if use_ema else "params"
  with ckpt_lib.CheckpointReader(workdir) as reader:
    step = reader.resolve_step(step)
    config = _config_of(reader, workdir, step)
    if not latent.is_latent(config):
      params = reader.arrays(step, [key])[key]
    else:
      # The EMA of frozen weights drifts by float rounding: take the autoencoder's exact ones.
      state = reader.arrays(step, [key, f"params/{latent.PARAMS_KEY}"])
      params = {**{k: v for k, v in state[key].items() if k != latent.PARAMS_KEY},
                latent.PARAMS_KEY: state["params"][latent.PARAMS_KEY]}
  return _assemble(config, params, step, f"checkpoint step {step} in {workdir}", workdir)
