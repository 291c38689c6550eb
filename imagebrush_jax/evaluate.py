"""Evaluate a trained run on held-out grids and write metrics.json.

  python -m imagebrush_jax.evaluate --workdir DIR --num_examples 256 --output metrics.json \
      [--seed 1000003] [--steps N] [--guidance S] [--inception_weights pt_inception.safetensors]
      [--example_pairs as_drawn|repeat_first|reversed|from_other_grid]
(--step N takes an earlier checkpoint; --params model.safetensors, a run exported by
`python -m imagebrush_jax.export`, stands in for --workdir.)

Grids cover config.data.train_tasks and config.data.heldout_tasks in turn: synthetic ones from a
fresh seed (scenes never trained on), stored ones (folder, tfds) from the pairs held out of
training (config.data.eval_fraction). Metrics, for tasks of any name:
  psnr, ssim      generated I' vs the ground truth; copy_psnr / copy_ssim for returning I itself
  edit_success    within the pixels where the true I' differs from I, the output is closer to I'
                  than to I and 10 dB nearer it than the copy (metrics/image_quality.py)
  preservation    PSNR of the output to I outside those pixels (what the edit must keep)
  accuracy        task identification: the generated I' lies within half the distance from the
                  true task's output on I to the nearest different candidate output, where a
                  tie counts only with tasks whose output equals the true one
                  (metrics/task_accuracy.py); per task too, and the chance level of a random
                  pick. Candidates: every task of the vocabulary on the query's scene for
                  synthetic grids (object tasks included), the global tasks for stored pairs
  object_tasks, global_tasks   the means over each group of built-in tasks (metrics/edits.py),
                  overall and in train_tasks_metrics
  prompt_fidelity dist(E', edit(E | I -> I')), image_fidelity dist(I, edit(I' | E' -> E)), with
                  dist = pixel MSE in [0, 1], or FID when --inception_weights is given
  heldout_accuracy, heldout_edit_success   means over config.data.heldout_tasks

--example_pairs probes what the model reads from its K example pairs: repeat_first gives every
row the first pair (one pair's information, the same grid), reversed reverses their order, and
from_other_grid takes the pairs of the previous grid (grids cycle through the tasks, so another
task's), leaving the query and its true I' as they were.
"""
from __future__ import annotations

import collections
import json
import time
from typing import Callable, Mapping, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.inference import run_loading
from imagebrush_jax.data import options as data_options
from imagebrush_jax.data import pipeline as data_pipeline
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.metrics import cycle
from imagebrush_jax.metrics import edits
from imagebrush_jax.metrics import fid as fid_lib
from imagebrush_jax.metrics import image_quality
from imagebrush_jax.metrics import task_accuracy

DEFAULT_SEED = 1_000_003
Generate = Callable[[Mapping[str, np.ndarray]], np.ndarray]
EXAMPLE_PAIRS = ("as_drawn", "repeat_first", "reversed", "from_other_grid")


def check_example_pairs(mode: str, num_examples: int) -> None:
  """Refuses an --example_pairs mode that is unknown or means nothing with K pairs."""
  if mode not in EXAMPLE_PAIRS:
    raise ValueError(f"--example_pairs must be one of {EXAMPLE_PAIRS}, got {mode!r}")
  if mode in ("repeat_first", "reversed") and num_examples < 2:
    raise ValueError(f"--example_pairs {mode} needs config.data.num_examples >= 2, got "
                     f"{num_examples}")


def alter_example_pairs(grid: np.ndarray, num_examples: int, mode: str) -> np.ndarray:
  """uint8 grids [B, (K+1)T, 2T, 3] with their example rows changed by `mode` (EXAMPLE_PAIRS);
  the query row is kept."""
  check_example_pairs(mode, num_examples)
  t = grid_lib.check_grid(grid, num_examples, None, "--example_pairs")
  rows = grid[:, :num_examples * t]
  pairs = rows.reshape(grid.shape[0], num_examples, t, *grid.shape[2:])
  if mode == "repeat_first":
    pairs = np.repeat(pairs[:, :1], num_examples, axis=1)
  elif mode == "reversed":
    pairs = pairs[:, ::-1]
  elif mode == "from_other_grid":
    pairs = np.roll(pairs, 1, axis=0)
  return np.concatenate([pairs.reshape(rows.shape), grid[:, num_examples * t:]], axis=1)


def evaluate_batches(batches: Sequence[Mapping[str, np.ndarray]], *, num_examples: int,
                     task_vocabulary: Sequence[str], generate: Generate,
                     edit: cycle.Editor | None, distance: fid_lib.SetDistance,
                     train_tasks: Sequence[str] = ()) -> dict:
  """Metrics of `generate` (batch -> I' uint8 [B, T, T, 3]) on evaluation batches.

  `edit` (before, after, query -> uint8), used by the cycle metrics; None skips them.
  Batches with `candidates` (synthetic grids) score task identification among every task of
  the vocabulary; others among its global tasks. With `train_tasks`, "train_tasks_metrics"
  repeats the means over the grids of those tasks alone (fresh quadruplets of the trained tasks,
  without held-out compositions), with the object-level and global tasks apart.
  """
  cells = collections.defaultdict(list)
  for batch in batches:
    parts = grid_lib.split_cells(np.asarray(batch["grid"]), num_examples)
    generated = np.asarray(generate(batch))
    if generated.dtype != np.uint8 or generated.shape != parts.target.shape:
      raise ValueError(f"generate returned {generated.dtype} {list(generated.shape)}, expected "
                       f"uint8 {list(parts.target.shape)}")
    for key, value in parts._asdict().items():
      cells[key].append(value)
    cells["generated"].append(generated)
    cells["task_id"].append(np.asarray(batch["task_id"]))
    if "candidates" in batch:
      cells["candidates"].append(np.asarray(batch["candidates"]))
  data = {k: np.concatenate(v) for k, v in cells.items()}
  gen, truth, query = data["generated"], data["target"], data["query"]
  true_names = [task_vocabulary[i] for i in data["task_id"]]
  per_grid = edits.score(gen, query, truth, true_names, task_vocabulary,
                         data.get("candidates"))
  per_task = {}
  for name in dict.fromkeys(true_names):
    summary = edits.summarize(per_grid, np.array([t == name for t in true_names]))
    del summary["chance_accuracy"]
    per_task[name] = {**summary, "group": edits.task_group(name)}
  overall = edits.by_group(per_grid, true_names)
  metrics = {
      "num_examples": int(gen.shape[0]),
      **{k: overall[k] for k in ("accuracy", "chance_accuracy")},
      "accuracy_tasks": (list(task_vocabulary) if "candidates" in data
                         else list(task_accuracy.applicable_tasks(task_vocabulary))),
      "psnr": overall["psnr"],
      "ssim": float(image_quality.ssim(gen, truth).mean()),
      "copy_psnr": overall["copy_psnr"],
      "copy_ssim": float(image_quality.ssim(query, truth).mean()),
      "edit_success": overall["edit_success"],
      "preservation": overall["preservation"],
      **{group: overall[group] for group in (edits.OBJECT, edits.GLOBAL) if group in overall},
      "per_task": per_task,
      "distance": distance.name,
  }
  trained = np.array([t in train_tasks for t in true_names])
  if trained.any():
    metrics["train_tasks_metrics"] = edits.by_group(per_grid, true_names, trained)
  if edit is not None:
    metrics.update(cycle.cycle_metrics(edit, data["before"], data["after"],
                                       query, gen, distance))
  return metrics


def make_distance(inception_weights: str | None, batch_size: int = 32) -> fid_lib.SetDistance:
  if not inception_weights:
    return fid_lib.PixelDistance()
  from imagebrush_jax.models import inception  # pylint: disable=g-import-not-at-top
  return fid_lib.FID(inception.load_activations_fn(inception_weights, batch_size=batch_size))


def evaluate_run(workdir: str | None, *, num_examples: int, seed: int = DEFAULT_SEED,
                 step: int | None = None, batch_size: int | None = None,
                 num_steps: int | None = None, guidance_scale: float | None = None,
                 inception_weights: str | None = None, cycle_metrics: bool = True,
                 params: str | None = None, example_pairs: str = "as_drawn") -> dict:
  """Metrics of the run in `workdir` (at `step`), or of the run exported to `params`, with the
  example pairs as drawn or altered (alter_example_pairs)."""
  run = run_loading.load(workdir, params, step)
  data = data_options.from_config(run.config)
  if seed == data.seed:
    raise ValueError(f"--seed {seed} is the training seed: evaluation needs a fresh one")
  editor = editor_lib.Editor(run, batch_size=batch_size, num_steps=num_steps,
                             guidance_scale=guidance_scale)
  k = data.num_examples
  check_example_pairs(example_pairs, k)
  batches = data_pipeline.make_eval_batches(data, num_grids=num_examples, seed=seed,
                                            batch_size=editor.batch_size, candidates=True)
  if example_pairs != "as_drawn":  # altered over all grids at once: a batch may hold one grid
    grids = alter_example_pairs(np.concatenate([np.asarray(b["grid"]) for b in batches]), k,
                                example_pairs)
    ends = np.cumsum([len(b["grid"]) for b in batches])
    batches = [{**b, "grid": g} for b, g in zip(batches, np.split(grids, ends[:-1]))]
  key = jax.random.key(seed)
  counter = iter(range(1 << 30))

  def generate(batch):
    return editor.edit_grids(batch, jax.random.fold_in(key, next(counter)))

  def edit(before, after, query):
    return editor.edit_cells(before, after, query, None,
                             jax.random.fold_in(key, (1 << 20) + next(counter)))

  start = time.time()
  metrics = evaluate_batches(batches, num_examples=k,
                             task_vocabulary=data.all_tasks,
                             generate=generate, edit=edit if cycle_metrics else None,
                             distance=make_distance(inception_weights),
                             train_tasks=data.train_tasks)
  metrics.update(step=run.step, workdir=str(run.workdir), seed=seed,
                 train_tasks=list(data.train_tasks),
                 heldout_tasks=list(data.heldout_tasks), example_pairs=example_pairs,
                 sampling={"num_steps": num_steps or run.spec.sampling.num_steps,
                           "guidance_scale": (run.spec.sampling.guidance_scale
                                              if guidance_scale is None else guidance_scale)},
                 seconds=round(time.time() - start, 2))
  for name in ("accuracy", "edit_success"):
    heldout = [metrics["per_task"][t][name] for t in data.heldout_tasks
               if t in metrics["per_task"] and metrics["per_task"][t][name] is not None]
    metrics[f"heldout_{name}"] = float(np.mean(heldout)) if heldout else None
  return metrics


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.evaluate` (defined when it runs, never at import)."""
  cli.define_run_selector_flags(flag_values)
  flags.DEFINE_integer("num_examples", None, "Evaluation grids.", flag_values=flag_values)
  flags.DEFINE_string("output", None, "Metrics JSON file (written atomically).",
                      flag_values=flag_values)
  flags.DEFINE_integer("seed", DEFAULT_SEED, "Fresh data seed.", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", None, "Grids per sampler call.", flag_values=flag_values)
  flags.DEFINE_integer("steps", None, "DDIM steps (default: config).", flag_values=flag_values)
  flags.DEFINE_float("guidance", None, "Guidance scale (default: config).",
                     flag_values=flag_values)
  flags.DEFINE_string("inception_weights", None, "pt_inception-2015-12-05 weights "
                      "(.safetensors/.npz, or .pth with torch): cycle metrics as FID instead of "
                      "pixel MSE.", flag_values=flag_values)
  flags.DEFINE_bool("no_cycle", False, "Skip the cycle metrics.", flag_values=flag_values)
  flags.DEFINE_enum("example_pairs", "as_drawn", EXAMPLE_PAIRS, "Alter the example pairs (see "
                    "above) to probe what the model reads.", flag_values=flag_values)
  flags.mark_flags_as_required(["num_examples", "output"], flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  """`python -m imagebrush_jax.evaluate` in this process, `argv` its flags: the exit status (a
  usage error exits, status 2, as the program does)."""
  return cli.call_program(define_flags, program, argv, "imagebrush_jax.evaluate")


def program(args: flags.FlagValues) -> int:
  """Evaluates the run the parsed flags `args` choose; returns the exit status."""
  selection = cli.selected_run(args)
  if args.num_examples < 1:
    raise app.UsageError(f"--num_examples must be positive, got {args.num_examples}")
  try:
    files.check_access(args.output)  # a bucket that cannot be used stops here, before any work
    metrics = evaluate_run(selection.workdir, num_examples=args.num_examples, seed=args.seed,
                           step=selection.step, batch_size=args.batch_size, num_steps=args.steps,
                           guidance_scale=args.guidance,
                           inception_weights=args.inception_weights,
                           cycle_metrics=not args.no_cycle, params=selection.params,
                           example_pairs=args.example_pairs)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e)
  files.write_text_atomic(args.output, json.dumps(metrics, indent=2) + "\n")
  print(json.dumps({k: metrics[k] for k in ("step", "num_examples", "accuracy", "psnr", "ssim",
                                            "copy_psnr", "copy_ssim", "edit_success", "distance",
                                            "train_tasks_metrics", "heldout_accuracy",
                                            "heldout_edit_success")
                    + (("prompt_fidelity", "image_fidelity") if not args.no_cycle else ())
                    if k in metrics}))
  return 0


if __name__ == "__main__":
  cli.run_program(define_flags, program)
