"""The demo's report: one sample per training task and the accuracy-vs-minutes curve.

  python -m imagebrush_jax.demo_report --workdir runs/demo [--step N] [--metrics metrics.json]

Writes WORKDIR/report.png (a row per training task: E, E', I, generated, ground truth, on fresh
grids never trained on) and WORKDIR/accuracy_curve.png (task-identification accuracy and PSNR
against training minutes, from WORKDIR/eval_metrics.jsonl). With --metrics, also writes a small
metrics JSON of its own (accuracy, psnr, copy_psnr on --num_grids fresh grids of the training
tasks); `python -m imagebrush_jax.evaluate` writes the full one.
"""
from __future__ import annotations

import io
import json
import sys
import time
from typing import Sequence

from absl import flags
import jax
import numpy as np

from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.training import periodic_eval
from imagebrush_jax.inference import editor as editor_lib
from imagebrush_jax.inference import run_loading
from imagebrush_jax.data import options as data_options
from imagebrush_jax.data import pipeline
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.metrics import edits

REPORT_SEED = periodic_eval.EVAL_SEED_OFFSET + 7  # fresh scenes, none seen in training


def read_jsonl(path) -> list[dict]:
  if not files.exists(path):
    return []
  return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def plot_curve(records: Sequence[dict], out_path, title: str = "") -> bool:
  """Accuracy, the edit success of the object-level and global task groups where recorded, and
  PSNR (with the copy baseline) against minutes; False if nothing to plot."""
  records = [r for r in records if "accuracy" in r]
  if not records:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  minutes = [r["wall_s"] / 60 for r in records]
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
  ax.plot(minutes, [r["accuracy"] for r in records], "o-", color="C0", label="task accuracy")
  for key, color, label in (("object_edit_success", "C2", "edit success, object-level tasks"),
                             ("global_edit_success", "C3", "edit success, global tasks")):
    if all(r.get(key) is not None for r in records):
      ax.plot(minutes, [r[key] for r in records], "^-", color=color, ms=4, label=label)
  ax.axhline(0.9, color="C0", ls=":", lw=1)
  ax.set_xlabel("training minutes (2-core CPU, evals included)")
  ax.set_ylabel("accuracy / edit success")
  ax.set_ylim(0, 1.02)
  ax2 = ax.twinx()
  ax2.plot(minutes, [r["psnr"] for r in records], "s-", color="C1", ms=3, label="PSNR")
  ax2.plot(minutes, [r["copy_psnr"] for r in records], "--", color="C7", label="copy PSNR")
  ax2.set_ylabel("PSNR (dB)", color="C1")
  lines = [l for l in ax.get_lines() if not l.get_label().startswith("_")] + ax2.get_lines()
  ax.legend(lines, [l.get_label() for l in lines], loc="best", fontsize=8)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  files.write_bytes_atomic(out_path, buf.getvalue())
  return True


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.demo_report` (defined when it runs, never at
  import)."""
  cli.define_run_selector_flags(flag_values, exported=False)
  flags.DEFINE_string("metrics", "", "Also write this metrics JSON (relative: WORKDIR).",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_grids", 240, "Grids for --metrics.", flag_values=flag_values)
  flags.DEFINE_integer("scale", 4, "Nearest-neighbour upscaling of report.png.",
                       flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  """`python -m imagebrush_jax.demo_report` in this process, `argv` its flags: the exit status
  (a usage error exits, status 2, as the program does)."""
  return cli.call_program(define_flags, program, argv, "imagebrush_jax.demo_report")


def program(args: flags.FlagValues) -> int:
  """Writes the report of the run the parsed flags `args` choose; returns the exit status."""
  selection = cli.selected_run(args)
  workdir = files.as_path(selection.workdir)
  try:
    run = run_loading.load_run(str(workdir), selection.step)
  except (ValueError, FileNotFoundError, KeyError, files.StorageAccessError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  data = data_options.from_config(run.config)
  names = data.train_tasks
  # The one sampler facade (as infer, the web editor and evaluate use), sized for both batches.
  editor = editor_lib.Editor(run, batch_size=max(len(names), data.eval_batch_size))
  k, tile = data.num_examples, data.tile_size

  # report.png: one fresh grid per training task.
  batch = pipeline.make_eval_batches(data, num_grids=len(names), seed=REPORT_SEED, tasks=names,
                                     batch_size=len(names))[0]
  generated = editor.edit_grids(batch, jax.random.key(0))
  sheet = periodic_eval.sample_sheet(np.asarray(batch["grid"]), generated, k)
  sheet = np.repeat(np.repeat(sheet, args.scale, 0), args.scale, 1)
  files.save_png_atomic(workdir / "report.png", sheet)
  columns = "E, E', " * k + "I, generated, ground truth"
  print(f"wrote {workdir / 'report.png'}: rows {', '.join(names)}; columns {columns} "
        f"(step {run.step})", flush=True)

  if plot_curve(read_jsonl(workdir / "eval_metrics.jsonl"), workdir / "accuracy_curve.png",
                f"{workdir.name}: {len(names)} training tasks, fresh grids"):
    print(f"wrote {workdir / 'accuracy_curve.png'}", flush=True)

  if args.metrics:
    start = time.perf_counter()
    vocab = data.all_tasks
    gens, grids, task_names, candidates = [], [], [], []
    for i, b in enumerate(pipeline.make_eval_batches(data, num_grids=args.num_grids,
                                                     seed=REPORT_SEED + 1, tasks=names,
                                                     candidates=True)):
      gens.append(editor.edit_grids(b, jax.random.fold_in(jax.random.key(1), i)))
      grids.append(np.asarray(b["grid"]))
      task_names += [vocab[int(t)] for t in b["task_id"]]
      if "candidates" in b:
        candidates.append(b["candidates"])
    _, _, query, truth = grid_lib.split_cells(np.concatenate(grids), k, tile)
    per_grid = edits.score(np.concatenate(gens), query, truth, task_names, vocab,
                           np.concatenate(candidates) if candidates else None)
    res = edits.by_group(per_grid, task_names)
    per_task = {n: edits.summarize(per_grid, np.array([t == n for t in task_names]))
                for n in names}
    metrics = dict(step=run.step, num_grids=args.num_grids, **res, per_task=per_task,
                   num_steps=run.spec.sampling.num_steps,
                   guidance_scale=run.spec.sampling.guidance_scale,
                   seconds=round(time.perf_counter() - start, 1))
    path = args.metrics if "/" in args.metrics else files.join(workdir, args.metrics)
    files.write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("step", "accuracy", "psnr", "copy_psnr")}))
  return 0


if __name__ == "__main__":
  cli.run_program(define_flags, program)
