"""The ladder: does the general model learn the edits its examples show, rung by rung, each run
trained for a fixed wall-clock budget?

    python benchmarks/ladder.py [--rungs 0,1,2,3,4 | --tasks recolor,delete]
        [--mode diffusion|regression] [--oracle] [--ceiling] [--minutes 10] [--eval_grids 240]
        [--workdir_root runs/ladder] [--config configs/objects.py] [--override KEY=VALUE ...]
        [--seed 0] [--num_steps 0] [--steps_per_minute 50] [--curve_steps 100,200,400]
        [--jsonl OUT] [--dry_run]

Rungs (task names of `python -m imagebrush_jax.tasks --list`):
  0  invert alone: the pipeline end to end
  1  segment, recolor, delete, move, each alone (4 runs)
  2  recolor + delete together, evaluated as drawn and with every grid's example pairs taken
     from another grid (evaluate --example_pairs from_other_grid): a model that reads its
     examples does much better as drawn
  3  the 11 object tasks (configs/objects.py OBJECT_TASKS)
  4  all 17 (configs/default.py GLOBAL_TASKS too)
--tasks a,b,... is one run of that list instead (ablations); --probe_other_grid adds the
from_other_grid evaluation to every run of two tasks or more.

Each run trains `python -m imagebrush_jax.train --config CONFIG` on its tasks (none held out)
for --minutes of wall clock, compilation included, then sends SIGTERM: the loop saves a
checkpoint at the next step boundary and exits. The LR schedule is config.train.num_steps long:
--num_steps, or --steps_per_minute x --minutes. Each line reports the share of the schedule it
trained (schedule_fraction), the seconds to the first step (ready_s) and the steady rate after
it (steps_per_s); the summary's suggested_num_steps is the schedule those fill in the budget,
to pass as --num_steps on this machine.
In-training evaluation is off (the budget goes to training). The last checkpoint is then
evaluated by `python -m imagebrush_jax.evaluate --no_cycle` on --eval_grids fresh grids.
Modes: diffusion (the config as is) or regression (the same network in one step: a single
timestep of the cosine schedule, alpha_bar = 0.001, so the target cell holds essentially pure
noise, x0 prediction, one trailing sampler step: the network predicts I' directly; each line's
target_signal is the target's share of the noisiest training input, sqrt(alpha_bar)).
--oracle gives the model the task's id (config.model.task_oracle, a diagnostic). --ceiling
puts each task's no-training best edit success (imagebrush_jax/metrics/ceiling.py, at the
run's tile size and crop) beside its result.

--curve_steps S1,S2,... also evaluates each run at those steps of its training (checkpoints
kept every gcd(S1, S2, ...) steps; the LR schedule stays --num_steps long, so a point is the run
part-way, not a shorter run): edit success against the grids seen (steps x batch size), one
line per point ("curve_point": true) before the run's final line, gathered in the summary's
"curves".

Output: one JSON line per (run, example pairs) measurement: edit_success (strict, per grid) with
its 95% Wilson interval overall, per group (object / global) and per task, PSNR and the copy
baseline's PSNR, steps and seconds; then a summary JSON line, last. Runs live in
WORKDIR_ROOT/<mode>[-oracle]-<minutes>min-<hash of the settings>/<run>; a run whose training
marker (train.json) and evaluation file exist is not run again, its line printed again
("resumed": true). A run folder without train.json (interrupted) is trained again from scratch.
The settings hash has the config file's path, not its contents: after editing a config, give a
new --workdir_root (or remove the old runs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from configs import default as default_config
from configs import objects as objects_config
from imagebrush_jax.infra import cli
from imagebrush_jax.metrics import intervals
# pylint: enable=g-import-not-at-top,wrong-import-position

OBJECT_TASKS = tuple(objects_config.OBJECT_TASKS)
GLOBAL_TASKS = tuple(default_config.GLOBAL_TASKS)
AS_DRAWN, OTHER_GRID = "as_drawn", "from_other_grid"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the ladder and the example-pair modes it is evaluated with."""
  rung: int | None  # None: a --tasks run
  name: str
  tasks: tuple[str, ...]
  example_pairs: tuple[str, ...] = (AS_DRAWN,)


RUNGS: dict[int, tuple[Run, ...]] = {
    0: (Run(0, "r0_invert", ("invert",)),),
    1: tuple(Run(1, f"r1_{t}", (t,)) for t in ("segment", "recolor", "delete", "move")),
    2: (Run(2, "r2_recolor+delete", ("recolor", "delete"), (AS_DRAWN, OTHER_GRID)),),
    3: (Run(3, "r3_objects", OBJECT_TASKS),),
    4: (Run(4, "r4_all", GLOBAL_TASKS + OBJECT_TASKS),),
}

# --mode: overrides of the config (diffusion: none). regression: one timestep of the cosine
# schedule (alpha_bar = 0.001: the target is ~3% of the input), x0 predicted, one sampler step
# from that timestep, so the network maps (examples, query, noise) to I' in one call.
MODES = {
    "diffusion": (),
    "regression": ("diffusion.num_timesteps=1", "diffusion.schedule=cosine",
                   "diffusion.prediction_type=sample", "sampling.num_steps=1",
                   "sampling.spacing=trailing"),
}
ORACLE_OVERRIDE = "model.task_oracle=True"
# The loop's own evaluation is off: the budget goes to training, the ladder evaluates after.
LOOP_OVERRIDES = ("train.eval_every=1000000000", "train.eval_at_end=False",
                  "train.eval_num_grids=0", "train.sample_num_grids=0",
                  "train.accuracy_num_grids=0")
# The loop logs this once its SIGTERM handler is installed (the compiled step's summary,
# imagebrush_jax/training/loop.py): an earlier SIGTERM would end the process without a
# checkpoint, so the budget's signal waits for it.
STEPPING_MARK = "train step "
STOP_GRACE_S = 300.0  # after SIGTERM: the current step, the checkpoint and the exit
DIGITS = 4


# ---------------------------------------------------------------------------- flags


def define_flags(flag_values: flags.FlagValues) -> None:
  """The benchmark's flags (defined when it runs)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list("rungs", ["0", "1", "2", "3", "4"], "Rungs to run, in order.", **fv)
  flags.DEFINE_list("tasks", [], "One run of these tasks instead of the rungs.", **fv)
  flags.DEFINE_enum("mode", "diffusion", list(MODES), "diffusion: the config as is; "
                    "regression: the same network trained and sampled in one step.", **fv)
  flags.DEFINE_bool("oracle", False, "Give the model the task's id "
                    f"(--config.{ORACLE_OVERRIDE}).", **fv)
  flags.DEFINE_bool("ceiling", False, "Report each task's no-training ceiling beside it.", **fv)
  flags.DEFINE_integer("ceiling_scenes", 200, "Scenes per task of the ceiling.", **fv)
  flags.DEFINE_float("minutes", 10.0, "Wall-clock training budget per run, compilation "
                     "included.", **fv)
  flags.DEFINE_integer("eval_grids", 240, "Fresh evaluation grids per run.", **fv)
  flags.DEFINE_string("workdir_root", "runs/ladder", "Folder of the runs.", **fv)
  flags.DEFINE_string("config", os.path.join(ROOT, "configs", "objects.py"), "Config file.",
                      **fv)
  flags.DEFINE_multi_string("override", [], "KEY=VALUE, passed to training as "
                            "--config.KEY=VALUE (repeatable).", **fv)
  flags.DEFINE_integer("seed", 0, "Training seed (config.seed).", **fv)
  flags.DEFINE_integer("num_steps", 0, "config.train.num_steps, the LR schedule's length; 0: "
                       "--steps_per_minute x --minutes.", **fv)
  flags.DEFINE_float("steps_per_minute", 50.0, "Training steps a minute of budget gives, "
                     "compilation included (configs/objects.py on 2 CPU cores: ~50).", **fv)
  flags.DEFINE_bool("probe_other_grid", False, "Also evaluate every run of two tasks or more "
                    "with example pairs from another grid.", **fv)
  flags.DEFINE_list("curve_steps", [], "Also evaluate each run at these training steps "
                    "(edit success against grids seen); checkpoints are kept at their gcd.",
                    **fv)
  flags.DEFINE_string("jsonl", None, "Append every JSON line to this file too.", **fv)
  flags.DEFINE_bool("dry_run", False, "Print each run's commands as JSON lines; run nothing.",
                    **fv)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a run's result depends on, besides its tasks (hashed into its folder's name)."""
  config: str
  mode: str
  oracle: bool
  minutes: float
  num_steps: int
  seed: int
  overrides: tuple[str, ...]

  def group(self) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode())
    oracle = "-oracle" if self.oracle else ""
    return f"{self.mode}{oracle}-{self.minutes:g}min-{digest.hexdigest()[:8]}"


def plan_runs(rungs: Sequence[str], tasks: Sequence[str], probe_other_grid: bool) -> list[Run]:
  """The runs of the chosen rungs, or the one run of `tasks`."""
  if tasks:
    unknown = [t for t in tasks if t not in GLOBAL_TASKS + OBJECT_TASKS]
    if unknown:
      raise ValueError(f"--tasks: unknown {unknown}; the tasks are {GLOBAL_TASKS + OBJECT_TASKS}")
    runs = [Run(None, "tasks_" + "+".join(tasks), tuple(tasks))]
  else:
    runs = []
    for r in rungs:
      if not r.isdigit() or int(r) not in RUNGS:
        raise ValueError(f"--rungs: {r!r} is not one of {sorted(RUNGS)}")
      runs += RUNGS[int(r)]
  if probe_other_grid:
    runs = [dataclasses.replace(r, example_pairs=(AS_DRAWN, OTHER_GRID))
            if len(r.tasks) > 1 else r for r in runs]
  return runs


def config_overrides(overrides: Sequence[str]) -> tuple[str, ...]:
  """--override KEY=VALUE values, checked, without any leading 'config.'."""
  out = []
  for item in overrides:
    key, eq, _ = item.partition("=")
    if not eq or not key.strip():
      raise ValueError(f"--override {item!r}: expected KEY=VALUE, e.g. train.batch_size=16")
    out.append(item.removeprefix("config."))
  return tuple(out)


def _tuple_literal(names: Sequence[str]) -> str:
  return "(" + "".join(f"'{n}'," for n in names) + ")"


def parse_curve_steps(values: Sequence[str]) -> tuple[int, ...]:
  """--curve_steps as ascending positive steps."""
  steps = []
  for v in values:
    if not v.strip().isdigit() or int(v) < 1:
      raise ValueError(f"--curve_steps: {v!r} is not a positive step count")
    steps.append(int(v))
  return tuple(sorted(set(steps)))


def curve_overrides(curve_steps: Sequence[int]) -> tuple[str, ...]:
  """Checkpoint settings that keep a checkpoint at every curve step (their gcd), none when
  there is no curve; they change what is saved, never what is trained."""
  if not curve_steps:
    return ()
  every = math.gcd(*curve_steps)
  return (f"checkpoint.every={every}", f"checkpoint.keep_every={every}")


def train_command(run: Run, settings: Settings, workdir: str,
                  curve_steps: Sequence[int] = ()) -> list[str]:
  """The training program's command line of `run`."""
  keys = (f"data.train_tasks={_tuple_literal(run.tasks)}", "data.heldout_tasks=()",
          f"train.num_steps={settings.num_steps}", f"seed={settings.seed}", *LOOP_OVERRIDES,
          *curve_overrides(curve_steps),
          *MODES[settings.mode], *((ORACLE_OVERRIDE,) if settings.oracle else ()),
          *settings.overrides)
  return [sys.executable, "-m", "imagebrush_jax.train", "--config", settings.config,
          "--workdir", workdir, *(f"--config.{k}" for k in keys)]


def eval_command(workdir: str, grids: int, example_pairs: str, output: str,
                 step: int | None = None) -> list[str]:
  """The evaluation program's command line of a run folder (its latest checkpoint, or `step`)."""
  return [sys.executable, "-m", "imagebrush_jax.evaluate", "--workdir", workdir,
          "--num_examples", str(grids), "--output", output, "--no_cycle",
          *(["--example_pairs", example_pairs] if example_pairs != AS_DRAWN else []),
          *(["--step", str(step)] if step is not None else [])]


# ---------------------------------------------------------------------------- running


class RunError(RuntimeError):
  """A training or evaluation program failed; the message has its log's tail."""


def _write_json(path: str, value: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the checkpoints in a run folder, ascending."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _log_has(path: str, mark: str) -> bool:
  with open(path, errors="replace") as f:
    return any(line.startswith(mark) for line in f)


def steady_steps_per_s(workdir: str) -> float | None:
  """Training steps per second between the first and the last record of the run's history
  (train_metrics.jsonl, every config.train.log_every steps): the rate once compiled; None
  with fewer than two records."""
  path = os.path.join(workdir, "train_metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if len(records) < 2 or records[-1]["wall_s"] <= records[0]["wall_s"]:
    return None
  return round((records[-1]["step"] - records[0]["step"])
               / (records[-1]["wall_s"] - records[0]["wall_s"]), 4)


def train_for_budget(command: Sequence[str], workdir: str, budget_s: float) -> dict:
  """Runs the training command until it ends or `budget_s` seconds have passed, then SIGTERM
  (once its loop can checkpoint); returns the train.json record (steps, seconds, ended_by)."""
  log_path = os.path.join(workdir, "train.log")
  start = time.monotonic()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(list(command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
  signalled_at, ready_at = None, None
  try:
    while proc.poll() is None:
      elapsed = time.monotonic() - start
      if ready_at is None and _log_has(log_path, STEPPING_MARK):
        ready_at = elapsed
      if signalled_at is None and elapsed >= budget_s:
        # A missed mark (its text changed) only delays the signal by the grace period.
        if ready_at is not None or elapsed >= budget_s + STOP_GRACE_S:
          proc.send_signal(signal.SIGTERM)
          signalled_at = elapsed
      elif signalled_at is not None and elapsed - signalled_at > STOP_GRACE_S:
        raise RunError(f"training did not stop within {STOP_GRACE_S:.0f} s of SIGTERM; "
                       f"log {log_path}:\n{_tail(log_path)}")
      time.sleep(0.2)
  finally:
    if proc.poll() is None:  # an error above or an interrupt: stop the whole process group
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  seconds = time.monotonic() - start
  steps = checkpoint_steps(workdir)
  if proc.returncode != 0 or not steps:
    raise RunError(f"training exited with status {proc.returncode}"
                   f"{'' if steps else ' and no checkpoint'}; log {log_path}:\n"
                   f"{_tail(log_path)}")
  return {"steps": steps[-1], "seconds": round(seconds, 2),
          "ready_s": None if ready_at is None else round(ready_at, 2),
          "steps_per_s": steady_steps_per_s(workdir),
          "signalled_at_s": None if signalled_at is None else round(signalled_at, 2),
          "ended_by": "num_steps" if signalled_at is None else "budget",
          "budget_s": round(budget_s, 2), "command": list(command)}


def eval_path(workdir: str, grids: int, example_pairs: str, step: int | None = None) -> str:
  """The evaluation file of a run folder, per example-pair mode and grid count (and curve
  step)."""
  at = "" if step is None else f"_step{step}"
  return os.path.join(workdir, f"eval_{example_pairs}_{grids}{at}.json")


def evaluate(workdir: str, grids: int, example_pairs: str, step: int | None = None) -> dict:
  """evaluate's metrics of the run folder at its latest checkpoint or `step` (its file reused
  when it exists), with the program's wall time as ladder_wall_s."""
  output = eval_path(workdir, grids, example_pairs, step)
  if os.path.exists(output):
    return _read_json(output)
  log_path = output[:-len(".json")] + ".log"
  start = time.monotonic()
  with open(log_path, "w") as log:
    rc = subprocess.run(eval_command(workdir, grids, example_pairs, output, step), cwd=ROOT,
                        stdout=log, stderr=subprocess.STDOUT, check=False).returncode
  if rc != 0 or not os.path.exists(output):
    raise RunError(f"evaluation exited with status {rc}; log {log_path}:\n{_tail(log_path)}")
  metrics = _read_json(output)
  metrics["ladder_wall_s"] = round(time.monotonic() - start, 2)
  _write_json(output, metrics)
  return metrics


# ---------------------------------------------------------------------------- reporting


def _round(x: float | None, digits: int = DIGITS) -> float | None:
  return None if x is None else round(float(x), digits)


def rate(mean: float | None, n: int) -> dict:
  """A per-grid binary rate measured on n grids: mean, 95% Wilson interval, and n (grids with
  nothing to edit have no edit success and are not among them)."""
  if mean is None:
    return {"mean": None, "low": None, "high": None, "n": 0}
  low, high = intervals.wilson(mean, n)
  return {"mean": _round(mean), "low": _round(low), "high": _round(high), "n": n}


def _part(summary: dict | None) -> dict | None:
  """edit success with its interval, PSNR and copy PSNR of one evaluate summary."""
  if summary is None:
    return None
  return {"edit_success": rate(summary["edit_success"], summary["edit_success_count"]),
          "psnr": _round(summary["psnr"], 2), "copy_psnr": _round(summary["copy_psnr"], 2),
          "accuracy": _round(summary.get("accuracy")), "count": summary["count"]}


def target_signal(workdir: str) -> float | None:
  """sqrt(alpha_bar) at the noisiest training timestep of the run's schedule: the target
  cell's share of what the network sees there (~0.03 in regression mode: noise)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  import numpy as np  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top
  d = _read_json(path)["diffusion"]
  betas = schedules.make_betas(d["schedule"], int(d["num_timesteps"]), d["beta_start"],
                               d["beta_end"])
  return _round(float(np.prod(1.0 - betas)) ** 0.5)


def task_ceilings(workdir: str, tasks: Sequence[str], num_scenes: int,
                  cache_path: str) -> dict[str, dict]:
  """Each task's ceiling at the run's tile size, crop and scene knobs (cached in cache_path);
  {} when imagebrush_jax/metrics/ceiling.py is absent."""
  if importlib.util.find_spec("imagebrush_jax.metrics.ceiling") is None:
    return {}
  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.data import augment
  from imagebrush_jax.data import options
  from imagebrush_jax.inference import run_loading
  from imagebrush_jax.metrics import ceiling
  # pylint: enable=g-import-not-at-top
  config = run_loading.config_from_json(_read_json(os.path.join(workdir, "config.json")))
  tile, crop_scale = int(config.data.tile_size), float(config.data.crop_scale)
  params = options.scene_params(config.data)
  setting = hashlib.sha256(repr((params, tile, crop_scale, num_scenes)).encode()).hexdigest()
  key = lambda t: f"{t}|tile{tile}|crop{crop_scale:g}|scenes{num_scenes}|{setting[:8]}"
  cache = _read_json(cache_path) if os.path.exists(cache_path) else {}
  missing = [t for t in tasks if key(t) not in cache]
  if missing:
    margin = augment.crop_margin(tile, crop_scale)
    for result in ceiling.task_ceilings(missing, params, tile, num_scenes=num_scenes, seed=0,
                                        margin=margin):
      cache[key(result.task)] = result.as_dict()
    _write_json(cache_path, cache)
  return {t: cache[key(t)] for t in tasks}


def batch_size(workdir: str) -> int | None:
  """The run's grids per training step (train.batch_size of its saved config)."""
  path = os.path.join(workdir, "config.json")
  return int(_read_json(path)["train"]["batch_size"]) if os.path.exists(path) else None


def result_line(run: Run, settings: Settings, example_pairs: str, record: dict, metrics: dict,
                *, workdir: str, resumed: bool, ceilings: dict[str, dict],
                curve_point: bool = False) -> dict:
  """The JSON line of one (run, example pairs) measurement: the run's last checkpoint, or a
  step part-way (`curve_point`)."""
  per_task = {}
  for name in run.tasks:
    summary = metrics["per_task"].get(name)
    part = _part(summary) if summary else {"edit_success": rate(None, 0)}
    if name in ceilings:
      c = ceilings[name]
      part["ceiling"] = {k: c.get(k) for k in ("ceiling", "low", "high", "scenes")}
    per_task[name] = part
  train_minutes = record["seconds"] / 60.0
  batch = batch_size(workdir)
  return {
      "benchmark": "ladder", "rung": run.rung, "run": run.name, "tasks": list(run.tasks),
      "mode": settings.mode, "oracle": settings.oracle, "example_pairs": example_pairs,
      "curve_point": curve_point,
      "edit_success": rate(metrics["edit_success"], metrics["num_examples"]),
      "psnr": _round(metrics["psnr"], 2), "copy_psnr": _round(metrics["copy_psnr"], 2),
      "accuracy": _round(metrics.get("accuracy")),
      "object_tasks": _part(metrics.get("object_tasks")),
      "global_tasks": _part(metrics.get("global_tasks")),
      "per_task": per_task,
      "eval_grids": metrics["num_examples"], "steps": metrics["step"],
      "grids_seen": None if batch is None else metrics["step"] * batch,
      "num_steps": settings.num_steps,
      "schedule_fraction": _round(metrics["step"] / settings.num_steps),
      "ended_by": record["ended_by"], "train_seconds": record["seconds"],
      "ready_s": record.get("ready_s"), "steps_per_s": record.get("steps_per_s"),
      "steps_per_minute": _round(record["steps"] / max(train_minutes, 1e-9), 2),
      "eval_seconds": metrics.get("ladder_wall_s"),
      "target_signal": target_signal(workdir),
      "minutes": settings.minutes, "seed": settings.seed, "config": settings.config,
      "overrides": list(settings.overrides), "workdir": workdir, "resumed": resumed,
  }


def summary_line(lines: list[dict], failures: list[dict], settings: Settings,
                 eval_grids: int, seconds: float) -> dict:
  """The last line: each measurement's edit success, the as-drawn vs other-grid reading of the
  examples, the training rate measured, and each run's curve (edit success by grids seen)."""
  curves: dict[str, list[dict]] = {}
  for l in lines:
    if any(m["curve_point"] for m in lines if m["run"] == l["run"]):
      curves.setdefault(l["run"], []).append(
          {"example_pairs": l["example_pairs"], "steps": l["steps"],
           "grids_seen": l["grids_seen"], "edit_success": l["edit_success"]["mean"],
           "low": l["edit_success"]["low"], "high": l["edit_success"]["high"]})
  lines = [l for l in lines if not l["curve_point"]]
  results = [{"rung": l["rung"], "run": l["run"], "example_pairs": l["example_pairs"],
              "edit_success": l["edit_success"]["mean"], "low": l["edit_success"]["low"],
              "high": l["edit_success"]["high"], "steps": l["steps"]} for l in lines]
  reading = {}
  for l in lines:
    if l["example_pairs"] == OTHER_GRID:
      drawn = next((m for m in lines if m["run"] == l["run"]
                    and m["example_pairs"] == AS_DRAWN), None)
      if drawn and drawn["edit_success"]["mean"] is not None \
          and l["edit_success"]["mean"] is not None:
        a, o = drawn["edit_success"], l["edit_success"]
        reading[l["run"]] = {AS_DRAWN: a["mean"], OTHER_GRID: o["mean"],
                             "difference": _round(a["mean"] - o["mean"]),
                             "separated": a["low"] > o["high"]}
  drawn = [l for l in lines if l["example_pairs"] == AS_DRAWN]
  rates = sorted(l["steps_per_minute"] for l in drawn)
  # The schedule length the budget would have filled: the steady rate after startup.
  fills = sorted(int(l["steps_per_s"] * (settings.minutes * 60.0 - l["ready_s"]))
                 for l in drawn if l["steps_per_s"] and l["ready_s"] is not None)
  return {
      "benchmark": "ladder", "summary": True, "mode": settings.mode, "oracle": settings.oracle,
      "config": settings.config, "overrides": list(settings.overrides),
      "minutes": settings.minutes, "num_steps": settings.num_steps, "seed": settings.seed,
      "eval_grids": eval_grids, "results": results, "reads_examples": reading,
      "curves": curves,
      "steps_per_minute": rates[len(rates) // 2] if rates else None,
      "suggested_num_steps": max(fills[len(fills) // 2], 1) if fills else None,
      "failures": failures, "seconds": round(seconds, 1),
  }


def _emit(line: dict, jsonl: str | None) -> None:
  text = json.dumps(line)
  print(text, flush=True)
  if jsonl:
    with open(jsonl, "a") as f:
      f.write(text + "\n")


# ---------------------------------------------------------------------------- program


def program(args: flags.FlagValues) -> int:
  """Runs (or resumes) the ladder's runs; prints their lines, then the summary line."""
  start = time.monotonic()
  if args.minutes <= 0 or args.eval_grids < 1 or args.num_steps < 0 or args.ceiling_scenes < 1:
    raise ValueError("need --minutes > 0, --eval_grids >= 1, --num_steps >= 0 and "
                     "--ceiling_scenes >= 1")
  runs = plan_runs(args.rungs, args.tasks, args.probe_other_grid)
  curve_steps = parse_curve_steps(args.curve_steps)
  config = os.path.abspath(args.config)
  if not os.path.isfile(config):
    raise FileNotFoundError(f"--config {args.config} not found")
  num_steps = args.num_steps or max(int(round(args.steps_per_minute * args.minutes)), 1)
  settings = Settings(config=config, mode=args.mode, oracle=args.oracle, minutes=args.minutes,
                      num_steps=num_steps, seed=args.seed,
                      overrides=config_overrides(args.override))
  root = os.path.abspath(args.workdir_root)
  group = os.path.join(root, settings.group())
  jsonl = os.path.abspath(args.jsonl) if args.jsonl else None

  if args.dry_run:
    for run in runs:
      workdir = os.path.join(group, run.name)
      _emit({"benchmark": "ladder", "dry_run": True, "rung": run.rung, "run": run.name,
             "tasks": list(run.tasks), "workdir": workdir,
             "train_command": train_command(run, settings, workdir, curve_steps),
             "eval_commands": [eval_command(workdir, args.eval_grids, p,
                                            eval_path(workdir, args.eval_grids, p, step), step)
                               for step in (*curve_steps, None)
                               for p in run.example_pairs]}, jsonl)
    _emit(summary_line([], [], settings, args.eval_grids, time.monotonic() - start)
          | {"dry_run": True}, jsonl)
    return 0

  os.makedirs(group, exist_ok=True)
  _write_json(os.path.join(group, "settings.json"), dataclasses.asdict(settings))
  lines, failures = [], []
  for run in runs:
    workdir = os.path.join(group, run.name)
    marker = os.path.join(workdir, "train.json")
    try:
      resumed = os.path.exists(marker)
      if resumed:
        record = _read_json(marker)
      else:
        if os.path.exists(workdir):  # an interrupted run: its budget is unknown, start over
          shutil.rmtree(workdir)
        os.makedirs(workdir)
        print(f"ladder: training {run.name} for {settings.minutes:g} min in {workdir}",
              file=sys.stderr, flush=True)
        record = train_for_budget(train_command(run, settings, workdir, curve_steps),
                                  workdir, settings.minutes * 60.0)
        _write_json(marker, record)
      ceilings = (task_ceilings(workdir, run.tasks, args.ceiling_scenes,
                                os.path.join(root, "ceilings.json")) if args.ceiling else {})
      saved = checkpoint_steps(workdir)
      for step in (s for s in curve_steps if s < record["steps"]):
        if step not in saved:  # reported; the run's other points and final line still come
          failures.append({"run": run.name, "error": f"no checkpoint at curve step {step} in "
                           f"{workdir} (saved: {saved}); trained without --curve_steps?"})
          continue
        for pairs in run.example_pairs:
          done = os.path.exists(eval_path(workdir, args.eval_grids, pairs, step))
          metrics = evaluate(workdir, args.eval_grids, pairs, step)
          line = result_line(run, settings, pairs, record, metrics, workdir=workdir,
                             resumed=resumed and done, ceilings=ceilings, curve_point=True)
          lines.append(line)
          _emit(line, jsonl)
      for pairs in run.example_pairs:
        done = os.path.exists(eval_path(workdir, args.eval_grids, pairs))
        metrics = evaluate(workdir, args.eval_grids, pairs)
        line = result_line(run, settings, pairs, record, metrics, workdir=workdir,
                           resumed=resumed and done, ceilings=ceilings)
        lines.append(line)
        _emit(line, jsonl)
    except RunError as e:
      failures.append({"run": run.name, "error": str(e).splitlines()[0]})
      print(f"ladder: {run.name} failed: {e}", file=sys.stderr, flush=True)
  _emit(summary_line(lines, failures, settings, args.eval_grids, time.monotonic() - start),
        jsonl)
  return 1 if failures else 0


def main(argv: Sequence[str]) -> int:
  """The benchmark in this process on `argv` (its flags, without the program's name)."""
  return cli.call_program(define_flags, program, argv, name="benchmarks/ladder.py")


if __name__ == "__main__":
  cli.run_program(define_flags, program)
