"""Batch inference in several processes (`infer --manifest` under launch/local.sh,
launch/gpu_multinode.sh and launch/tpu_pod.sh): 2 processes x 2 simulated CPU devices (gloo on
127.0.0.1) share a 40-row manifest with 5 bad rows. Every good row is written once, by its
process, and equals a one-process run's output byte for byte; the bad rows are merged into
errors.jsonl and the counts into summary.json; a job killed mid-run resumes where each process
left off, redoing nothing. And benchmarks/infer_throughput.py at tiny size."""
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

import conftest
from imagebrush_jax import infer
from imagebrush_jax.inference import manifest as manifest_lib

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_LINES = 40
# The bad lines and what their errors say: a missing file, a corrupt image, a box outside the
# query, two example pairs for a run trained with one, bad JSON.
BAD = {4: "image not found", 9: "corrupt.png", 16: "box", 23: "example pair(s) given",
       30: "bad JSON"}
GOOD = [line for line in range(1, NUM_LINES + 1) if line not in BAD]
FLAGS = ["--batch_size", "4", "--steps", "2", "--seed", "5"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  """The test session's environment (its compilation cache too) for processes of 2 devices."""
  env = dict(os.environ, PYTHONPATH=ROOT, PY=sys.executable, JAX_PLATFORMS="cpu",
             XLA_FLAGS=conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=2))
  env.update(extra)
  return env


@pytest.fixture(scope="module")
def workdir():
  return tiny_workdir()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """rows.jsonl (40 lines, BAD the bad ones; every sixth a region edit) and its images."""
  d = tmp_path_factory.mktemp("inputs")
  rng = np.random.default_rng(0)

  def image(name, h, w):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / name)
    return name

  ex = [{"before": image("a.png", 12, 16), "after": image("b.png", 12, 16)}]
  (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  rows = []
  for line in range(1, NUM_LINES + 1):
    row = {"examples": ex, "query": f"q{line}.png", "output": f"r{line}.png"}
    if line == 4:
      row["query"] = "missing.png"
    elif line == 9:
      row["query"] = "corrupt.png"
    elif line == 16:
      image(row["query"], 10, 10)
      row["box"] = [0, 0, 50, 5]
    elif line == 23:
      image(row["query"], 10, 10)
      row["examples"] = ex + ex
    elif line == 30:
      row = "{not json"
    else:
      image(row["query"], 8 + line % 5, 9 + line % 7)
      if line % 6 == 0:
        row["box"] = [1, 1, 6, 6]
    rows.append(row if isinstance(row, str) else json.dumps(row))
  (d / "rows.jsonl").write_text("\n".join(rows) + "\n")
  return d


@pytest.fixture(scope="module")
def reference(workdir, inputs, tmp_path_factory):
  """The manifest edited by one process (this one, 4 devices, batch 8: 2 grids per device, as
  2 processes x 2 devices at batch 4)."""
  out = tmp_path_factory.mktemp("one_process")
  flags = [f if f != "4" else "8" for f in FLAGS]
  assert infer.main(["--workdir", workdir, "--manifest", str(inputs / "rows.jsonl"),
                     "--output_dir", str(out), *flags]) == 1  # the bad rows
  summary = json.loads((out / "summary.json").read_text())
  assert {k: summary[k] for k in ("done", "failed", "skipped", "processes")} == dict(
      done=len(GOOD), failed=len(BAD), skipped=0, processes=1)
  return out


def _outputs(out) -> set:
  return {p.name for p in out.iterdir() if p.name.startswith("r")} if out.exists() else set()


def _check_errors(out):
  errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
  assert [e["line"] for e in errors] == sorted(BAD)
  for e in errors:
    assert BAD[e["line"]] in e["error"] and "\n" not in e["error"], e


def _assert_same_pngs(out, reference, names):
  for name in names:
    assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def _summary(out, name="summary.json") -> dict:
  summary = json.loads((out / name).read_text())
  assert summary.pop("seconds") >= 0
  return summary


def test_lines_go_round_robin_to_processes(inputs, tmp_path):
  """Every line goes to exactly one process, (line - 1) % count, bad rows too."""
  path, out = str(inputs / "rows.jsonl"), str(tmp_path)
  everything = list(manifest_lib.read_manifest(path, out))
  for count in (1, 2, 3):
    parts = [list(manifest_lib.read_manifest(path, out, process_index=i, process_count=count))
             for i in range(count)]
    lines = [[r.line if isinstance(r, manifest_lib.Row) else r[0] for r in p] for p in parts]
    assert sorted(sum(lines, [])) == list(range(1, NUM_LINES + 1))
    for i, own in enumerate(lines):
      assert all((line - 1) % count == i for line in own)
    assert sorted(sum(parts, []), key=str) == sorted(everything, key=str)


def test_two_processes_write_every_row_once_and_match_one_process(workdir, inputs, reference,
                                                                  tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      ["bash", "launch/local.sh", "infer", "--workdir", workdir, "--manifest",
       str(inputs / "rows.jsonl"), "--output_dir", str(out), *FLAGS], cwd=ROOT,
      env=_env(NUM_PROCESSES="2", DEVICES_PER_PROCESS="2", PORT=str(_free_port())),
      capture_output=True, text=True, timeout=400)
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]  # the bad rows
  # Each process its own rows: its part counts them; 35 writes for 35 outputs: each once.
  parts = [_summary(out, f"summary.process-{i}.json") for i in range(2)]
  for i, part in enumerate(parts):
    own = [line for line in range(1, NUM_LINES + 1) if (line - 1) % 2 == i]
    assert part == {"process": i, "processes": 2, "done": len([l for l in own if l in GOOD]),
                    "failed": len([l for l in own if l in BAD]), "skipped": 0,
                    "finished": True}
  assert _summary(out) == {"done": len(GOOD), "failed": len(BAD), "skipped": 0, "processes": 2}
  assert json.loads(proc.stdout.strip().splitlines()[-1])["done"] == len(GOOD)
  assert _outputs(out) == {f"r{line}.png" for line in GOOD}
  assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]
  _check_errors(out)
  _assert_same_pngs(out, reference, _outputs(reference))


# A stand-in for gcloud on a TPU pod of two workers: `... tpu-vm ssh ... --worker=all
# --command=CMD` runs CMD as each worker would, in its own home folder holding the checkout
# (REMOTE_DIR, here with only the .venv in it), with the coordinates jax finds by itself on a
# pod given in the environment, and waits for the programs CMD starts in the background.
FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_GCLOUD_LOG"
cmd=""
for a in "$@"; do case "$a" in --command=*) cmd="${a#--command=}" ;; esac; done
[[ -n "$cmd" && "$cmd" == *imagebrush_jax.infer* ]] || exit 0
for i in 0 1; do
  (cd "$FAKE_WORKERS/$i" && JAX_COORDINATOR_ADDRESS="127.0.0.1:$FAKE_PORT" JAX_NUM_PROCESSES=2 \\
    JAX_PROCESS_ID=$i bash -c "$cmd"$'\\n'"wait") &
done
wait
"""


def _fake_pod(tmp_path) -> dict:
  """The environment that makes launch/tpu_pod.sh run its workers here (FAKE_GCLOUD)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(stat.S_IRWXU)
  venv = sys.prefix if sys.prefix != sys.base_prefix else None
  for i in range(2):
    checkout = tmp_path / "workers" / str(i) / "imagebrush_jax"
    checkout.mkdir(parents=True)
    if venv:
      (checkout / ".venv").symlink_to(venv)
    else:
      (checkout / ".venv" / "bin").mkdir(parents=True)
      (checkout / ".venv" / "bin" / "python").symlink_to(sys.executable)
  return _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
              FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"), FAKE_WORKERS=str(tmp_path / "workers"),
              FAKE_PORT=str(_free_port()), TPU_NAME="ib-test", ZONE="local")


def test_a_killed_job_resumes_where_each_process_left_off(workdir, inputs, reference, tmp_path):
  """Started with launch/gpu_multinode.sh (one per host), killed while process 0 is mid-run
  (blocked reading a query that is a FIFO; process 1 done and waiting for it), then resumed
  with launch/tpu_pod.sh's infer step: the rows written before are skipped (their files
  untouched), the others written, and all equal a one-process run's."""
  work = tmp_path / "inputs"
  shutil.copytree(inputs, work)
  blocked_line = 25  # process 0's: its loader blocks on it, its batches before it are written
  query = work / f"q{blocked_line}.png"
  saved = query.read_bytes()
  query.unlink()
  os.mkfifo(query)
  own = [line for line in GOOD if line % 2 == 1 and line < blocked_line]
  written_by_0 = {f"r{line}.png" for line in own[:len(own) // 4 * 4]}  # whole batches of 4
  written_by_1 = {f"r{line}.png" for line in GOOD if line % 2 == 0}
  out = tmp_path / "out"
  args = ["infer", "--workdir", workdir, "--manifest", str(work / "rows.jsonl"), "--output_dir",
          str(out), *FLAGS]
  port = _free_port()
  logs = [open(tmp_path / f"host{i}.log", "w")  # pylint: disable=consider-using-with
          for i in range(2)]
  procs = [subprocess.Popen(["bash", "launch/gpu_multinode.sh", *args], cwd=ROOT,
                            env=_env(COORDINATOR_ADDRESS=f"127.0.0.1:{port}", NUM_HOSTS="2",
                                     HOST_INDEX=str(i)),
                            stdout=logs[i], stderr=subprocess.STDOUT)
           for i in range(2)]
  try:
    deadline = time.monotonic() + 300
    part_1 = out / "summary.process-1.json"
    while not (part_1.exists() and json.loads(part_1.read_text()).get("finished")
               and _outputs(out) >= written_by_0):
      for i, p in enumerate(procs):
        assert p.poll() is None, (f"host {i} ended before it was killed:\n"
                                  + (tmp_path / f"host{i}.log").read_text()[-5000:])
      assert time.monotonic() < deadline, f"not ready after 300 s: {sorted(_outputs(out))}"
      time.sleep(0.05)
    time.sleep(0.5)  # nothing more is written: process 0 waits on the FIFO
  finally:
    for p, log in zip(procs, logs):
      p.kill()
      p.wait()
      log.close()
  assert _outputs(out) == written_by_0 | written_by_1
  assert not json.loads((out / "summary.process-0.json").read_text())["finished"]
  assert not (out / "summary.json").exists()
  mtimes = {name: os.stat(out / name).st_mtime_ns for name in _outputs(out)}

  query.unlink()
  query.write_bytes(saved)
  env = _fake_pod(tmp_path)
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", *args], cwd=ROOT,
                        env=dict(env, STEPS="infer"), capture_output=True, text=True,
                        timeout=400, start_new_session=True)
  logs = "".join((tmp_path / "workers" / str(i) / "imagebrush_jax" / "infer.log").read_text()
                 for i in range(2) if (tmp_path / "workers" / str(i) / "imagebrush_jax" /
                                       "infer.log").exists())
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + logs[-5000:]
  assert "--worker=all" in (tmp_path / "gcloud.log").read_text()
  assert _summary(out) == {"done": len(GOOD) - len(mtimes), "failed": len(BAD),
                           "skipped": len(mtimes), "processes": 2}, logs[-5000:]
  assert {name: os.stat(out / name).st_mtime_ns for name in mtimes} == mtimes
  assert _outputs(out) == {f"r{line}.png" for line in GOOD}
  _check_errors(out)
  _assert_same_pngs(out, reference, _outputs(reference))


def test_tpu_pod_passes_flags_intact_and_no_empty_argument(tmp_path):
  """The remote command of each step (recorded by the stand-in gcloud, nothing run): flags with
  spaces stay one argument; a training start without overrides gets no empty argument."""
  env = dict(_fake_pod(tmp_path), WORKDIR="gs://b/runs/paper")
  log = tmp_path / "gcloud.log"
  subprocess.run(["bash", "launch/tpu_pod.sh", "configs/paper_256_tpu_pod.py"], cwd=ROOT,
                 env=dict(env, STEPS="train"), check=True, capture_output=True, timeout=60)
  assert "--workdir gs://b/runs/paper > train.log" in " ".join(log.read_text().split())
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", "configs/paper_256_tpu_pod.py"],
                        cwd=ROOT, env=dict(env, STEPS="infer"), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 2 and "does not go with train" in proc.stderr


def test_infer_throughput_benchmark_at_tiny_size():
  """One JSON line last: edits/s per device of one process and of two, side by side. (The
  samplers it compiles, 2 grids per device on 4 devices and on 2 x 2, are those of the tests
  above: after them it reads them from the session's compilation cache.)"""
  proc = subprocess.run(
      [sys.executable, "benchmarks/infer_throughput.py", "--config", "configs/tiny_test.py",
       "--num_edits", "16", "--steps", "2", "--batch_per_device", "2", "--cpu_devices", "4"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["benchmark"] == "infer_throughput" and result["steps"] == 2
  one, two = result["one_process"], result["two_processes"]
  assert (one["processes"], one["devices"], two["processes"], two["devices"]) == (1, 4, 2, 4)
  assert one["edits"] == two["edits"] == 16
  assert [p["done"] for p in two["per_process"]] == [8, 8]
  for leg in (one, two):
    assert leg["edits_per_s_per_device"] == pytest.approx(
        leg["edits"] / leg["seconds"] / leg["devices"], rel=1e-2)
  assert result["ratio_per_device"] == pytest.approx(
      two["edits_per_s_per_device"] / one["edits_per_s_per_device"], rel=1e-2)
