"""benchmarks/ladder.py: the real tool at tiny size (train for a budget, SIGTERM, evaluate, its
JSON lines), its resume skip, the commands its modes and flags make, and the Wilson interval."""
import ast
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import conftest
from benchmarks import ladder
from configs import objects
from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.diffusion import ddim
from imagebrush_jax.diffusion import schedules
from imagebrush_jax.metrics import intervals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINUTES = 0.3  # an 18 s budget: startup and compilation of the tiny model take about as long


def _ladder(args: list[str], timeout: int = 600) -> tuple[list[dict], float]:
  """The ladder's JSON lines on one CPU device, and its wall time."""
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=1))
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "benchmarks/ladder.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  seconds = time.monotonic() - start
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return [json.loads(line) for line in proc.stdout.strip().splitlines()], seconds


def _assert_rate(rate: dict, n: int) -> None:
  """A rate: its mean inside its Wilson interval, which is the interval of (mean, n)."""
  assert rate["n"] == n and 0.0 <= rate["low"] <= rate["mean"] <= rate["high"] <= 1.0, rate
  low, high = intervals.wilson(rate["mean"], n)
  assert (rate["low"], rate["high"]) == pytest.approx((low, high), abs=1e-4)
  assert rate["high"] - rate["low"] > 0.1  # 8 grids cannot pin a rate down


def test_wilson_interval_known_values():
  for successes, n, want in ((0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)),
                             (5, 10, (0.2366, 0.7634)), (180, 200, (0.8506, 0.9343))):
    np.testing.assert_allclose(intervals.wilson(successes / n, n), want, atol=1e-4)
  # 8 of 10 at 95%: the textbook value.
  assert intervals.wilson(0.8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
  low, high = intervals.wilson(0.0, 20)
  assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)
  assert intervals.wilson(0.5, 0) == (0.0, 1.0)
  assert intervals.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
  # Wider at 99%, narrower with more grids.
  assert intervals.wilson(0.8, 10, 0.99)[0] < 0.4902
  assert intervals.wilson(0.8, 1000)[1] - intervals.wilson(0.8, 1000)[0] < 0.06
  with pytest.raises(ValueError):
    intervals.wilson(1.5, 10)


def test_rungs_are_the_registered_tasks():
  runs = ladder.plan_runs(["0", "1", "2", "3", "4"], [], probe_other_grid=False)
  assert [r.name for r in runs] == ["r0_invert", "r1_segment", "r1_recolor", "r1_delete",
                                    "r1_move", "r2_recolor+delete", "r3_objects", "r4_all"]
  assert runs[5].example_pairs == ("as_drawn", "from_other_grid")
  assert set(runs[6].tasks) == set(objects.OBJECT_TASKS) and len(runs[6].tasks) == 11
  assert len(set(runs[7].tasks)) == 17
  assert set(runs[7].tasks) <= set(tasks_lib.task_names())
  with pytest.raises(ValueError, match="--rungs"):
    ladder.plan_runs(["5"], [], probe_other_grid=False)
  with pytest.raises(ValueError, match="unknown"):
    ladder.plan_runs([], ["recolor", "teleport"], probe_other_grid=False)


def test_regression_mode_sees_noise_and_predicts_the_target():
  """The regression overrides: one training timestep whose input holds ~3% of the target (the
  rest noise), x0 predicted, and one sampler step from it straight to the prediction."""
  config = objects.get_config()
  for item in ladder.MODES["regression"]:
    key, value = item.split("=", 1)
    *path, name = key.split(".")
    node = config
    for part in path:
      node = node[part]
    try:
      node[name] = ast.literal_eval(value)
    except ValueError:
      node[name] = value
  schedule = schedules.make_schedule(config.diffusion)
  assert schedule.num_timesteps == 1 and schedule.prediction_type == "sample"
  signal_share = float(np.sqrt(schedule.alphas_cumprod[0]))
  assert signal_share < 0.05  # essentially pure noise in the target cell
  ts, _, alpha_prev = ddim.ddim_alphas(schedule, config.sampling.num_steps,
                                       config.sampling.spacing)
  assert list(ts) == [0] and float(alpha_prev[0]) == 1.0  # one step, returning x0 itself


def test_dry_run_passes_mode_oracle_and_overrides_through(tmp_path):
  lines, _ = _ladder(["--dry_run", "--tasks", "recolor,delete", "--mode", "regression",
                      "--oracle", "--probe_other_grid", "--override", "train.batch_size=16",
                      "--minutes", "2", "--steps_per_minute", "30",
                      "--workdir_root", str(tmp_path / "runs")])
  run, summary = lines
  train = run["train_command"]
  assert train[1:3] == ["-m", "imagebrush_jax.train"]
  for flag in ("--config.model.task_oracle=True", "--config.train.batch_size=16",
               "--config.data.train_tasks=('recolor','delete',)",
               "--config.data.heldout_tasks=()", "--config.train.num_steps=60",
               *(f"--config.{k}" for k in ladder.MODES["regression"])):
    assert flag in train, flag
  # The user's overrides come last, so they win over the ladder's own.
  assert train.index("--config.train.batch_size=16") == len(train) - 1
  pairs = [c[c.index("--example_pairs") + 1] if "--example_pairs" in c else "as_drawn"
           for c in run["eval_commands"]]
  assert pairs == ["as_drawn", "from_other_grid"]
  assert all("--no_cycle" in c for c in run["eval_commands"])
  assert summary["summary"] and summary["dry_run"] and summary["oracle"]
  assert not (tmp_path / "runs").exists()  # a dry run makes nothing


def test_ladder_trains_for_its_budget_evaluates_and_resumes(tmp_path):
  root, jsonl = tmp_path / "runs", tmp_path / "lines.jsonl"
  args = ["--config", "configs/tiny_test.py", "--rungs", "0", "--minutes", str(MINUTES),
          "--eval_grids", "8", "--num_steps", "100000", "--override", "sampling.num_steps=2",
          "--workdir_root", str(root), "--jsonl", str(jsonl)]
  lines, _ = _ladder(args)
  line, summary = lines
  assert [json.loads(s) for s in jsonl.read_text().splitlines()] == lines

  assert (line["benchmark"], line["rung"], line["run"], line["tasks"]) == (
      "ladder", 0, "r0_invert", ["invert"])
  assert line["mode"] == "diffusion" and line["example_pairs"] == "as_drawn"
  assert not line["resumed"]
  assert line["eval_grids"] == 8
  _assert_rate(line["edit_success"], 8)
  _assert_rate(line["global_tasks"]["edit_success"], 8)
  _assert_rate(line["per_task"]["invert"]["edit_success"], 8)
  assert line["object_tasks"] is None
  assert line["psnr"] > 0 and line["copy_psnr"] > 0
  # The budget, not num_steps, ended training, at a checkpoint the evaluation read.
  workdir = line["workdir"]
  record = json.loads(open(os.path.join(workdir, "train.json")).read())
  assert line["ended_by"] == record["ended_by"] == "budget"
  assert record["signalled_at_s"] >= MINUTES * 60 and line["train_seconds"] >= MINUTES * 60
  assert 0 < line["ready_s"] <= record["signalled_at_s"]  # no SIGTERM before the loop can save
  assert line["steps"] == record["steps"] >= 1 and line["schedule_fraction"] < 0.01
  assert "stopped by SIGTERM" in open(os.path.join(workdir, "train.log")).read()
  assert line["target_signal"] == pytest.approx(0.068, abs=0.001)  # scaled_linear's last step

  assert summary["summary"] and summary["failures"] == []
  assert summary["results"] == [{"rung": 0, "run": "r0_invert", "example_pairs": "as_drawn",
                                 "edit_success": line["edit_success"]["mean"],
                                 "low": line["edit_success"]["low"],
                                 "high": line["edit_success"]["high"], "steps": line["steps"]}]

  # Again: nothing is trained or evaluated, the same measurement is printed.
  stamps = {name: os.stat(os.path.join(workdir, name)).st_mtime_ns
            for name in ("train.log", "train.json", "eval_as_drawn_8.json")}
  again, seconds = _ladder(args)
  assert seconds < MINUTES * 60  # less than the training budget alone
  assert {name: os.stat(os.path.join(workdir, name)).st_mtime_ns for name in stamps} == stamps
  assert again[0]["resumed"] and again[-1]["summary"]
  assert {k: v for k, v in again[0].items() if k != "resumed"} == {
      k: v for k, v in line.items() if k != "resumed"}
  assert len(jsonl.read_text().splitlines()) == 4


def test_steady_rate_leaves_startup_out(tmp_path):
  history = [{"step": 10, "wall_s": 40.0}, {"step": 20, "wall_s": 45.0},
             {"step": 30, "wall_s": 50.0}]
  (tmp_path / "train_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
  assert ladder.steady_steps_per_s(str(tmp_path)) == 2.0
  (tmp_path / "train_metrics.jsonl").write_text(json.dumps(history[0]) + "\n")
  assert ladder.steady_steps_per_s(str(tmp_path)) is None


def test_curve_evaluates_the_run_part_way(tmp_path):
  """--curve_steps: checkpoints kept at the curve's steps, each evaluated at its own step (the
  evaluation file says so), a line per point before the final one, and the summary's curve of
  edit success against grids seen."""
  root = tmp_path / "runs"
  lines, _ = _ladder(["--config", "configs/tiny_test.py", "--rungs", "0", "--minutes", "10",
                      "--eval_grids", "8", "--num_steps", "6", "--curve_steps", "2,4",
                      "--override", "sampling.num_steps=2", "--workdir_root", str(root)])
  *points, final, summary = lines
  assert [(l["curve_point"], l["steps"]) for l in (*points, final)] == [
      (True, 2), (True, 4), (False, 6)]
  workdir = final["workdir"]
  assert ladder.checkpoint_steps(workdir)[:2] == [2, 4]
  batch = json.loads(open(os.path.join(workdir, "config.json")).read())["train"]["batch_size"]
  for line in (*points, final):
    assert line["grids_seen"] == line["steps"] * batch
    _assert_rate(line["edit_success"], 8)
  for step in (2, 4):
    saved = json.loads(open(ladder.eval_path(workdir, 8, "as_drawn", step)).read())
    assert saved["step"] == step
  assert summary["failures"] == []
  assert [r["steps"] for r in summary["results"]] == [6]  # the final line only
  assert [(p["steps"], p["grids_seen"], p["edit_success"])
          for p in summary["curves"]["r0_invert"]] == [
              (l["steps"], l["grids_seen"], l["edit_success"]["mean"])
              for l in (*points, final)]
  with pytest.raises(ValueError, match="--curve_steps"):
    ladder.parse_curve_steps(["100", "0"])
  assert ladder.curve_overrides((100, 250, 400)) == ("checkpoint.every=50",
                                                     "checkpoint.keep_every=50")
