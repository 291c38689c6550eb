"""The CPU convolution gradient against XLA's own, and the checks of the runtime knobs."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagebrush_jax.models import conv as conv_lib
from imagebrush_jax.models import runtime as runtime_lib


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1)])
def test_matmul_grad_conv_equals_xla_conv(kernel, stride):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 5)), jnp.float32)
  pad = kernel // 2

  def loss(impl):
    conv = lambda x, w: conv_lib.conv2d(x, w, stride, pad, impl)
    return jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)

  (v1, (dx1, dw1)), (v2, (dx2, dw2)) = loss("matmul_grad"), loss("xla")
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dw1, dw2, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="conv implementation"):
    conv_lib.conv2d(x, w, stride, pad, "fft")


def test_runtime_checks_its_knobs():
  assert runtime_lib.Runtime(dtype="bfloat16").dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="dtype must be one of"):
    runtime_lib.Runtime(dtype="int8")
  with pytest.raises(ValueError, match="remat_policy"):
    runtime_lib.Runtime(remat_policy="no_such_policy")
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    runtime_lib.Runtime(attention_impl="flash")
  with pytest.raises(ValueError, match="conv_impl must be one of"):
    runtime_lib.Runtime(conv_impl="fft")
  # From a config section, the error names the key.
  section = ml_collections.ConfigDict(dict(dtype="float32", remat=False, remat_policy="",
                                            attention_impl="auto", conv_impl="fft"))
  with pytest.raises(ValueError, match="^config.autoencoder.conv_impl must be one of"):
    runtime_lib.Runtime.from_config(section, "config.autoencoder")
  assert runtime_lib.remat_policy("") is None
