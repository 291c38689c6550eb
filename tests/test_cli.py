"""What a user sees when a command is given bad flags, a bad config or input: one line naming the
flag, key or file, exit status 2, no traceback."""
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "PYTHONPATH": ROOT})


@pytest.mark.parametrize("module, args, message", [
    ("imagebrush_jax.train", ["--config.data.tile_size=7"],
     "error: config.data.tile_size = 7 (the prompt encoder's image size) is not divisible by "
     "config.model.prompt.vit.patch_size = 4"),
    ("imagebrush_jax.train", ["--config.train.batch_size=0"],
     "error: config.train.batch_size must be >= 1, got 0"),
    ("imagebrush_jax.train", ["--config.data.source=folder", "--config.data.folder.root=/no/such"],
     "error: folder source root '/no/such' is not a directory"),
    ("imagebrush_jax.train", ["--config.model.variant=sepia"],
     "error: config.model.variant must be '' (the paper's model) or one of ['cpu_demo'], got "
     "'sepia'"),
    ("imagebrush_jax.train", ["--config.model.conv_impl=fft"],
     "error: config.model.conv_impl must be one of ('auto', 'xla', 'matmul_grad'), got 'fft'"),
    ("imagebrush_jax.train_autoencoder", ["--config.data.eval_fraction=2.0"],
     "error: config.data.eval_fraction must be in [0.0, 0.9], got 2.0"),
])
def test_config_errors_are_one_line(tmp_path, module, args, message):
  config = "configs/autoencoder_tiny.py" if "autoencoder" in module else "configs/tiny_test.py"
  proc = _run(module, "--config", config, "--workdir", str(tmp_path / "run"), *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines == [message] and "Traceback" not in proc.stdout
  if "model." in message:  # refused before anything is written
    assert not os.path.exists(tmp_path / "run")


def test_data_build_input_errors_are_one_line(tmp_path):
  proc = _run("imagebrush_jax.build_data", "--source", "folder", "--output", str(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --input is required for --source folder"]


# A usage error of each program, as `python -m` runs it (a subprocess: absl's app.run, the path of
# the console scripts too).
@pytest.mark.parametrize("module, args, message", [
    ("imagebrush_jax.infer", ["--bogus", "1"], "error: Unknown command line flag 'bogus'"),
    ("imagebrush_jax.app", ["--workdir", "runs/x", "--params", "x.safetensors"],
     "error: give a run folder (--workdir) or an exported file (--params), not both"),
    ("imagebrush_jax.evaluate", ["--workdir", "runs/x", "--output", "m.json"],
     "error: --num_examples is required"),
    ("imagebrush_jax.export", ["--output", "m.safetensors"], "error: --workdir is required"),
    ("imagebrush_jax.demo_report", ["--workdir", "runs/x", "extra"],
     "error: unexpected arguments: extra"),
    ("imagebrush_jax.hardware", ["--expect", "xpu"],
     "error: flag --expect=xpu: value should be one of <cpu|gpu|tpu>"),
    ("imagebrush_jax.convert", ["--from", "inception", "--input", "w.pth", "--output", "w.pth"],
     "error: --output must differ from --input"),
    ("imagebrush_jax.train", ["--config", "configs/tiny_test.py"],
     "error: --workdir is required"),
])
def test_usage_errors_are_one_line(module, args, message):
  proc = _run(module, *args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert [l for l in proc.stderr.splitlines() if l.strip()] == [message]


# More usage errors, through the program's in-process main(argv): the same flag parsing and
# error reporting as the program's, without starting an interpreter for each.
@pytest.mark.parametrize("module, args, message", [
    ("imagebrush_jax.infer", ["--before", "a.png"],
     "error: give a run folder (--workdir) or an exported file (--params)"),
    ("imagebrush_jax.infer", ["--params", "x.safetensors", "--step", "3"],
     "error: --step chooses a checkpoint of a run folder (--workdir); an exported file "
     "(--params) holds one set of parameters"),
    ("imagebrush_jax.infer", ["--workdir", "runs/x", "--seed", "one"],
     "error: flag --seed=one: invalid literal for int() with base 10: 'one'"),
    ("imagebrush_jax.evaluate", ["--workdir", "runs/x", "--output", "m.json", "--num_examples",
                                 "0"], "error: --num_examples must be positive, got 0"),
    ("imagebrush_jax.export", ["--params", "m.safetensors", "--output", "n.safetensors"],
     "error: Unknown command line flag 'params'"),
])
def test_usage_errors_in_process_are_one_line(capsys, module, args, message):
  with pytest.raises(SystemExit) as exit_info:
    importlib.import_module(module).main(args)
  captured = capsys.readouterr()
  assert exit_info.value.code == 2, captured.err[-3000:]
  assert [l for l in captured.err.splitlines() if l.strip()] == [message]
  assert "Traceback" not in captured.out


def test_in_process_main_parses_a_fresh_flag_set_each_call(capsys):
  """A program's main(argv) runs as `python -m` does, with its own flags each call."""
  from imagebrush_jax import infer  # pylint: disable=g-import-not-at-top
  for _ in range(2):
    with pytest.raises(SystemExit) as exit_info:
      infer.main(["--workdir", "runs/x", "--manifest", "m.jsonl"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --manifest needs --output_dir\n"
  assert infer.main(["--workdir", "/no/such/run", "--before", "a.png", "--after", "b.png",
                     "--query", "q.png", "--output", "o.png"]) == 2
  assert capsys.readouterr().err == "error: run folder /no/such/run does not exist\n"
