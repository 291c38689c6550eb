"""Test session setup, before JAX is imported anywhere: 4 simulated CPU devices, and a
compile-time-friendly XLA CPU backend (tests are dominated by compilation, not by run time),
with a persistent compilation cache shared by the session's subprocesses."""
import os
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="imagebrush_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
