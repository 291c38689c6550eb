"""One tiny trained run per test process, shared by the inference and evaluation tests."""
import atexit
import shutil
import tempfile

_CACHE = {}


def tiny_workdir() -> str:
  if "workdir" not in _CACHE:
    from configs import tiny_test  # pylint: disable=g-import-not-at-top
    from imagebrush_jax import train  # pylint: disable=g-import-not-at-top
    config = tiny_test.get_config()
    config.train.num_steps = 2
    config.train.warmup_steps = 1
    config.checkpoint.every = 2
    config.train.eval_at_end = False
    config.sampling.num_steps = 2
    workdir = tempfile.mkdtemp(prefix="imagebrush_tiny_run_")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    train.train_and_evaluate(config, workdir)
    _CACHE["workdir"] = workdir
  return _CACHE["workdir"]
