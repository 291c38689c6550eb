"""Test session setup, before JAX is imported anywhere: 4 simulated CPU devices, and a
compile-time-friendly XLA CPU backend (tests are dominated by compilation, not by run time),
with a persistent compilation cache shared by the session's subprocesses and removed at exit."""
import atexit
import os
import shutil
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"  # also given to test subprocesses
NUM_TEST_DEVICES = 4


def with_test_flags(flags: str, devices: int = NUM_TEST_DEVICES) -> str:
  """`flags` plus the test flags; a test flag already set to another value is replaced."""
  ours = [f"--xla_force_host_platform_device_count={devices}", *TEST_XLA_FLAGS.split()]
  names = {f.split("=")[0] for f in ours}
  return " ".join([f for f in flags.split() if f.split("=")[0] not in names] + ours)


os.environ["XLA_FLAGS"] = with_test_flags(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="imagebrush_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
