"""Test session setup, before JAX is imported anywhere: 4 simulated CPU devices, and a
compile-time-friendly XLA CPU backend (tests are dominated by compilation, not by run time),
with a persistent compilation cache shared by the session's subprocesses and removed at exit;
the test files' order (the longest first, for pytest-xdist's workers); and the `gcs_emulator`
fixture (a local Cloud Storage emulator for gs:// tests)."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

# Also given to test subprocesses. XLA's CPU compiler at LLVM optimisation level 0, and its
# older fusion emitters (compile about 17% faster here: at tiny sizes the tests compile far
# longer than they run).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
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

# The test files that take longest, longest first (about, in CPU seconds of one `make test` on the
# 2-core CPU machine). `make test` hands whole files to its two workers in collection order
# (--dist loadfile --no-loadscope-reorder), so these start first and the many short files fill
# in after them: no long file starts late and runs alone at the end. The other files keep
# their order, after these. A new file that takes minutes belongs in this list.
LONGEST_FIRST = (
    "test_train.py",  # 340
    "test_readme_commands.py",  # 180
    "test_readme_paper.py",  # 170
    "test_readme_training.py",  # 155
    "test_perf.py",  # 140
    "test_cloud_storage.py",  # 90
    "test_convert_sd_unet.py",  # 80
    "test_infer_multiprocess.py",  # 120
    "test_memory_plan.py",  # 75
    "test_app.py",  # 70
    "test_region_edits.py",  # 65
    "test_infer.py",  # 70
    "test_learning_options.py",  # 65
    "test_ladder.py",  # 35
    "test_models_dit.py",  # 35
    "test_autoencoder_latent.py",  # 35
    "test_install.py",  # 30
    "test_autoencoder.py",  # 30
    "test_cli.py",  # 30
    "test_periodic_eval.py",  # 25
    "test_train_faults.py",  # 25
    "test_imagebrush_task.py",  # 25
)


def pytest_collection_modifyitems(items):
  """LONGEST_FIRST's files first, in its order; each file's tests in their order."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_emulator():
  """A local Cloud Storage emulator (tests/gcs_emulator.py, bucket `test`) on a free 127.0.0.1
  port: yields its URL, the STORAGE_EMULATOR_HOST of the processes that should use it. This
  process's file layer (gcsfs) points at it while the module runs."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  port = _free_port()
  proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                        "gcs_emulator.py"), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  keys = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
  saved = {k: os.environ.get(k) for k in keys}
  try:
    assert "listening" in proc.stdout.readline(), "the storage emulator did not start"
    host = f"http://127.0.0.1:{port}"
    os.environ.update(STORAGE_EMULATOR_HOST=host, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield host
  finally:
    proc.kill()
    proc.wait()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    gcsfs.GCSFileSystem.clear_instance_cache()


def forward_flops_vs_xla(config, batch_size: int = 2):
  """(XLA's FLOP count of the model's forward pass / the analytic count, the denoiser's
  analytic Count, the prompt encoder's) for a config: what the FLOP tests compare."""
  import jax  # pylint: disable=g-import-not-at-top  (after the flags above are set)
  from imagebrush_jax.core import build as build_lib  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.perf import compiled as compiled_lib  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.perf import flops as flops_lib  # pylint: disable=g-import-not-at-top
  model = build_lib.build_model(config)
  params = build_lib.init_params(model, config, jax.random.key(0))
  inputs = build_lib.dummy_inputs(model, config, batch_size=batch_size)
  xla = compiled_lib.xla_flops(jax.jit(lambda p, i: model.apply({"params": p}, **i)).lower(
      params, inputs).compile())
  net, prompt = flops_lib._networks(config, batch_size, remat=False)  # pylint: disable=W0212
  return xla / (net.total + prompt.total), net, prompt
