"""tests/command_check.py: the documented commands that do not run here (PLAN's, extra None)
pass its check of program, flags and config keys, and bad command lines fail it with the
program's message. One check_commands call for all (a subprocess per program)."""
from __future__ import annotations

import pytest

import command_check
from readme_plan import PLAN

PY = ".venv/bin/python"
PAPER = ("COORDINATOR_ADDRESS=10.0.0.1:12355 NUM_HOSTS=4 HOST_INDEX=0 launch/gpu_multinode.sh "
         "configs/paper_256.py /shared/runs/paper")
TPU = ("TPU_NAME=ib-pod ZONE=us-central2-b ACCELERATOR=v4-64 WORKDIR=gs://bucket/runs/paper "
       "launch/tpu_pod.sh configs/paper_256_tpu_pod.py")
AUTOENCODER = " --config.model.autoencoder.params=sd_vae.safetensors"
UNRUN = [command for command, extra, _ in PLAN if extra is None and command != "make test"]
# Command lines that must fail, and what their message says.
BAD = {
    f"{PY} -m imagebrush_jax.infer --workdri runs/demo --before a.png --after b.png --query "
    "q.png --output out.png": "Unknown command line flag 'workdri'",
    f"{PY} -m imagebrush_jax.train --config configs/default.py --workdir runs/x "
    "--config.train.bach_size=8": "bach_size",
    f"{PY} -m imagebrush_jax.train --config configs/default.py --workdir runs/x "
    "--config.train.batch_size=eight": "--config.train.batch_size=eight",
    f"{PY} -m imagebrush_jax.no_such_program --workdir runs/x":
        "No module named imagebrush_jax.no_such_program",
    f"{PY} benchmarks/memory_plan.py --config configs/paper_256.py --fsdpp 8":
        "Unknown command line flag 'fsdpp'",
    f"{PY} benchmarks/ladder.py --rungs 2 --override diffusion.timestep_sampling=logit":
        "timestep_sampling",
    PAPER: "config.model.autoencoder.params must name an autoencoder parameter file",
    TPU + " --config.train.bach_size=8": "bach_size",
    "launch/local.sh configs/no_such_config.py runs/x": "no_such_config.py",
    "hf download timbrooks/instructpix2pix-clip-filtered --repo-typ dataset":
        "hf download has no flag --repo-typ",
    "make no_such_target": "no_such_target",
    f"{PY} benchmarks/sampler.py --batchh 4": "unrecognized arguments: --batchh 4",
    "rsync -a runs/ host:runs/": "unknown program 'rsync'",
    "huggingface-cli download timbrooks/instructpix2pix-clip-filtered --repo-type dataset "
    "--local-dir /data/ip2p": "`huggingface-cli` is deprecated",
}
GOOD = [PAPER + AUTOENCODER, TPU + AUTOENCODER, "wget https://example.com/a.zip",
        "hf download timbrooks/instructpix2pix-clip-filtered --repo-type dataset --local-dir d"]


@pytest.fixture(scope="module")
def problems():
  return command_check.check_commands(list(dict.fromkeys(UNRUN + list(BAD) + GOOD)))


def test_every_unrun_readme_command_passes(problems):
  failing = {command: problems[command] for command in UNRUN if command in problems}
  assert not failing, "\n".join(f"{c}\n  {why}" for c, why in failing.items())


@pytest.mark.parametrize("command", list(BAD))
def test_bad_command_fails_with_its_message(problems, command):
  assert command in problems, command
  assert BAD[command] in problems[command], problems[command]


@pytest.mark.parametrize("command", GOOD)
def test_good_command_passes(problems, command):
  assert command not in problems, problems[command]


def test_tpu_pod_checks_the_remote_training_line(tmp_path):
  """launch/tpu_pod.sh's create, copy, install and train steps with the stand-in gcloud: the
  train step's remote python line, as the worker's shell parses it, is the one checked."""
  runs = command_check.python_runs(
      TPU + AUTOENCODER + " '--config.data.mixture=((\"/data/a b\",1.0),)'", str(tmp_path))
  assert runs == [["-m", "imagebrush_jax.train", "--config", "configs/paper_256_tpu_pod.py",
                   "--workdir", "gs://bucket/runs/paper",
                   "--config.model.autoencoder.params=sd_vae.safetensors",
                   '--config.data.mixture=(("/data/a b",1.0),)']]
  log = (tmp_path / "gcloud.log").read_text()
  for step in ("tpu-vm create ib-pod", "tpu-vm scp", "make venv-tpu", "imagebrush_jax.train"):
    assert step in log, step
