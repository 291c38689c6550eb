"""The JAX InceptionV3 reads pt_inception-2015-12-05 (pytorch-fid) weights by PyTorch name;
`python -m imagebrush_jax.convert --from inception` turns the .pth into safetensors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

import jax
import jax.numpy as jnp
from imagebrush_jax.models import inception


def test_layout_matches_pytorch_fid():
  shapes = inception.torch_state_shapes()
  assert len(shapes) == 94 * 5  # 94 BasicConv2d (conv + 4 batch-norm arrays)
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert sum(int(np.prod(s)) for s in shapes.values()) == 21_820_000


def test_loads_random_weights_and_matches_a_reference_conv(tmp_path):
  rng = np.random.default_rng(0)
  state = {k: rng.normal(size=s).astype(np.float32) for k, s in
           inception.torch_state_shapes().items()}
  for k in state:
    if k.endswith("running_var"):
      state[k] = np.abs(state[k]) + 0.5
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)  # extra keys are ignored
  path = tmp_path / "pt_inception.safetensors"
  save_file(state, str(path))
  params = inception.load_params(str(path))
  w = state["Conv2d_2b_3x3.conv.weight"]
  np.testing.assert_array_equal(params["Conv2d_2b_3x3"]["conv"]["kernel"],
                                w.transpose(2, 3, 1, 0))

  # One BasicConv2d (3x3, padding 1) against a direct numpy conv + batch norm + relu.
  x = rng.normal(size=(1, 5, 5, 32)).astype(np.float32)
  block = inception.BasicConv2d(64, (3, 3), padding=(1, 1))
  got = np.asarray(block.apply({"params": params["Conv2d_2b_3x3"]}, jnp.asarray(x)))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  conv = np.zeros((1, 5, 5, 64))
  for i in range(5):
    for j in range(5):
      conv[0, i, j] = np.einsum("hwc,ochw->o", xp[0, i:i + 3, j:j + 3], w)
  p = "Conv2d_2b_3x3.bn."
  ref = (conv - state[p + "running_mean"]) / np.sqrt(state[p + "running_var"] + 1e-3)
  ref = np.maximum(ref * state[p + "weight"] + state[p + "bias"], 0)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)

  del state["Mixed_6a.branch3x3.conv.weight"]
  save_file(state, str(path))
  with pytest.raises(KeyError, match="Mixed_6a.branch3x3.conv.weight"):
    inception.load_params(str(path))
  with pytest.raises(FileNotFoundError):
    inception.load_params(str(tmp_path / "none.safetensors"))


def test_convert_writes_the_pth_as_safetensors_that_load_the_same(tmp_path):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  state = {k: rng.normal(size=s).astype(np.float32) for k, s in
           inception.torch_state_shapes().items()}
  pth = tmp_path / "pt_inception-2015-12-05.pth"
  extra = {"fc.weight": torch.zeros(3, 2048)}  # not read by the network: not written
  torch.save({**{k: torch.from_numpy(v) for k, v in state.items()}, **extra}, pth)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def convert(source, output):
    return subprocess.run([sys.executable, "-m", "imagebrush_jax.convert", "--from",
                           "inception", "--input", str(source), "--output", str(output)],
                          cwd=root, capture_output=True, text=True, timeout=300)

  out = tmp_path / "pt_inception.safetensors"
  proc = convert(pth, out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[-1] == f"wrote {out}"
  written = load_file(str(out))
  assert set(written) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(written[k], v)
  jax.tree.map(np.testing.assert_array_equal, inception.load_params(str(out)),
               inception.load_params(str(pth)))

  del state["Mixed_6a.branch3x3.conv.weight"]
  save_file(state, str(tmp_path / "incomplete.safetensors"))
  bad = convert(tmp_path / "incomplete.safetensors", tmp_path / "bad.safetensors")
  assert bad.returncode == 1 and not (tmp_path / "bad.safetensors").exists()
  errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Mixed_6a.branch3x3.conv.weight" in errors[0], bad.stderr
