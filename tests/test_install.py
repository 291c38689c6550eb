"""The installed package: `pip install .` into a fresh virtual environment (offline, from a copy
of the repository), then, from a folder outside the repository, the `imagebrush-train` console
script trains configs/tiny_test.py given by its path, a user's own config file imports
`configs`, and `imagebrush_jax` (with its version) comes from the installed copy.

The fresh environment reuses this environment's installed dependencies through a .pth file (a
plain path line: that folder's own .pth files, such as an editable install of this repository,
are not processed), so the install is `--no-deps --no-index --no-build-isolation`: nothing is
downloaded.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sysconfig
import textwrap
import time
import tomllib
import venv

import pytest

import conftest
import imagebrush_jax
from imagebrush_jax.infra import scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = "imagebrush-jax"
# What a build never reads: this repository's environment, runs, caches and earlier builds.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".whl", ".gl", "*.pyi")
# configs/tiny_test.py at 2 steps: a checkpoint at step 2, no evaluation.
TINY_FLAGS = ["--config.train.num_steps=2", "--config.train.warmup_steps=1",
              "--config.checkpoint.every=2", "--config.train.eval_at_end=False",
              "--config.train.eval_num_grids=0", "--config.train.sample_num_grids=0",
              "--config.train.accuracy_num_grids=0", "--config.sampling.num_steps=2"]
USER_CONFIG = textwrap.dedent("""\
    from configs import default
    from configs import tiny_test


    def get_config():
      c = tiny_test.get_config()
      c.train.num_steps = 3
      c.seed = len(default.GLOBAL_TASKS)
      return c
    """)


def _pyproject() -> dict:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _outside_env(devices: int = 1) -> dict:
  """This environment without the repository on the import path; 1 simulated CPU device."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["XLA_FLAGS"] = conftest.with_test_flags("", devices)
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(venv folder, seconds the install took): the package installed non-editable."""
  tmp = tmp_path_factory.mktemp("install")
  start = time.perf_counter()
  source = tmp / "source"
  shutil.copytree(ROOT, source, ignore=NOT_COPIED, symlinks=True)
  env_dir = tmp / "venv"
  venv.create(env_dir, with_pip=False, symlinks=True)
  python = env_dir / "bin" / "python"
  target = subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      capture_output=True, text=True, check=True).stdout.strip()
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  with open(os.path.join(target, "_imagebrush_test_dependencies.pth"), "w") as f:
    f.write("".join(f"{path}\n" for path in sorted(ours)))
  proc = subprocess.run(
      [python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
       "--ignore-installed", "--no-cache-dir", "--no-warn-script-location", "--quiet",
       str(source)], cwd=tmp, env=_outside_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return env_dir, time.perf_counter() - start


def test_console_scripts_run_the_programs():
  """pyproject's console scripts are scripts.PROGRAMS, one per program module (a top-level
  module of imagebrush_jax with a __main__ block), each run through a zero-argument function of
  imagebrush_jax.infra.scripts."""
  declared = _pyproject()["project"]["scripts"]
  assert set(declared) == set(scripts.PROGRAMS)
  package = os.path.join(ROOT, "imagebrush_jax")
  programs = {f"imagebrush_jax.{name[:-3]}" for name in os.listdir(package)
              if name.endswith(".py") and name != "__init__.py"}
  assert set(scripts.PROGRAMS.values()) == programs
  for name, target in declared.items():
    module = scripts.PROGRAMS[name]
    assert target == f"imagebrush_jax.infra.scripts:{module.split('.')[-1]}", name
    assert callable(getattr(scripts, module.split(".")[-1]))
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    assert 'if __name__ == "__main__":' in open(path).read(), module


def test_version_is_the_installed_metadata():
  """The environment's installed metadata (make's editable install) carries __version__."""
  try:
    installed_version = importlib.metadata.version(DIST)
  except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"{DIST} is not installed in this environment (`make` installs it)")
  assert installed_version == imagebrush_jax.__version__


def test_installed_package_trains_from_outside_the_repository(installed, tmp_path):
  env_dir, install_s = installed
  print(f"install: {install_s:.1f} s")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = _outside_env()
  python, bin_dir = str(env_dir / "bin" / "python"), env_dir / "bin"

  # The package and its configs come from the installed copy, with the metadata's version.
  proc = subprocess.run(
      [python, "-c", "import importlib.metadata, configs, imagebrush_jax; "
       f"print(imagebrush_jax.__version__, importlib.metadata.version({DIST!r}), "
       "imagebrush_jax.__file__, configs.__file__)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  version, metadata_version, package_file, configs_file = proc.stdout.split()
  assert version == metadata_version == imagebrush_jax.__version__
  for path in (package_file, configs_file):
    assert path.startswith(str(env_dir)) and not path.startswith(ROOT + os.sep), path

  # A user's own config file imports `configs`, read as --config of the training programs.
  (elsewhere / "my_config.py").write_text(USER_CONFIG)
  proc = subprocess.run(
      [python, "-c", "from absl import flags; from ml_collections import config_flags; "
       "config = config_flags.DEFINE_config_file('config'); "
       "flags.FLAGS(['x', '--config', 'my_config.py']); "
       "print(config.value.train.num_steps, config.value.seed, config.value.data.tile_size)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["3", "6", "8"]

  # The console script trains the repository's config file, given by its path.
  start = time.perf_counter()
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [str(bin_dir / "imagebrush-train"), "--config", os.path.join(ROOT, "configs", "tiny_test.py"),
       "--workdir", str(workdir), *TINY_FLAGS],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
  print(f"imagebrush-train: {time.perf_counter() - start:.1f} s")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "step 2/2 | loss" in proc.stdout, proc.stdout[-3000:]
  assert os.path.isdir(workdir / "checkpoints" / "2")

  # A usage error exits as `python -m` does: status 2, one line.
  proc = subprocess.run([str(bin_dir / "imagebrush-train"), "--config",
                         os.path.join(ROOT, "configs", "tiny_test.py"), "--workdir",
                         str(tmp_path / "bad"), "--config.train.batch_size=0"],
                        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == ["error: config.train.batch_size must be >= 1, got 0"]
