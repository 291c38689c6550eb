"""SD VAE converter: parity with diffusers' PyTorch AutoencoderKL, and its errors.

diffusers and torch (CPU) are test-only dependencies (requirements-test.txt).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax import convert
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import sd_vae
from imagebrush_jax.models import autoencoder as ae

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


def _perturbed(module, seed):
  """Random weights everywhere, norms and biases included (default init leaves them trivial)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return module.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A small diffusers AutoencoderKL saved as a diffusers folder, and its outputs on one batch."""
  torch.manual_seed(0)
  vae = _perturbed(diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
      layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.5), seed=1)
  folder = tmp_path_factory.mktemp("sd_vae")
  vae.save_pretrained(folder, safe_serialization=True)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    z = posterior.mean
    decoded = vae.decode(z).sample
  to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  return dict(folder=str(folder), x=x, mean=to_nhwc(posterior.mean),
              logvar=to_nhwc(posterior.logvar), decoded=to_nhwc(decoded))


def _state(folder):
  return {k: np.array(v) for k, v in
          params_file.read_safetensors(os.path.join(folder, sd_vae.WEIGHTS))[0].items()}


def _write_folder(folder, state, config_src):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  save_file(state, os.path.join(folder, sd_vae.WEIGHTS))
  with open(os.path.join(config_src, sd_vae.CONFIG)) as src, \
      open(os.path.join(folder, sd_vae.CONFIG), "w") as dst:
    dst.write(src.read())


def _apply(arch, params, x):
  model = ae.build(arch)
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  posterior = model.apply(variables, jnp.asarray(x), method=ae.AutoencoderKL.encode)
  decoded = model.apply(variables, posterior.mean, method=ae.AutoencoderKL.decode)
  return np.asarray(posterior.mean), np.asarray(posterior.logvar), np.asarray(decoded)


def test_converted_vae_matches_diffusers(reference, tmp_path):
  out = str(tmp_path / "vae.safetensors")
  convert.convert_sd_vae(reference["folder"], out)
  params, arch = autoencoder_params.load(out)
  assert arch.block_out_channels == (8, 16) and arch.downsample_factor == 2
  assert arch.scaling_factor == 0.5 and arch.layers_per_block == 1
  mean, logvar, decoded = _apply(arch, params, reference["x"])
  assert mean.shape == (2, 16, 16, 4)
  assert np.abs(mean - reference["mean"]).max() <= TOLERANCE
  assert np.abs(logvar - reference["logvar"]).max() <= TOLERANCE
  assert decoded.shape == (2, 32, 32, 3)
  assert np.abs(decoded - reference["decoded"]).max() <= TOLERANCE


def test_old_attention_names_and_pipeline_folder_convert_alike(reference, tmp_path):
  state = _state(reference["folder"])
  renamed = {}
  for name, value in state.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    if name.endswith("attentions.0.query.weight"):
      value = value[:, :, None, None]  # old files stored some attention weights as 1x1 convs
    renamed[name] = value
  _write_folder(tmp_path / "pipeline" / "vae", renamed, reference["folder"])
  params, _ = sd_vae.convert(str(tmp_path / "pipeline"))  # finds the vae/ sub-folder
  expected, _ = sd_vae.convert(reference["folder"])
  flat, want = params_file.flatten(params), params_file.flatten(expected)
  assert flat.keys() == want.keys()
  assert all(np.array_equal(flat[k], want[k]) for k in flat)


@pytest.mark.parametrize("edit, expected", [
    ("missing", ["1 missing key", "encoder.conv_in.bias"]),
    ("extra", ["1 unexpected key", "encoder.extra_layer.weight"]),
    ("shape", ["1 shape mismatch", "decoder.conv_out.weight [3, 8, 1, 1]",
               "decoder/conv_out/kernel needs [3, 3, 8, 3]"]),
    ("all", ["1 missing key", "1 unexpected key", "1 shape mismatch"]),
])
def test_bad_files_are_clear_errors(reference, tmp_path, edit, expected):
  state = _state(reference["folder"])
  if edit in ("missing", "all"):
    del state["encoder.conv_in.bias"]
  if edit in ("extra", "all"):
    state["encoder.extra_layer.weight"] = np.zeros((2, 2), np.float32)
  if edit in ("shape", "all"):
    state["decoder.conv_out.weight"] = np.zeros((3, 8, 1, 1), np.float32)
  folder = tmp_path / edit
  _write_folder(folder, state, reference["folder"])
  with pytest.raises(sd_vae.ConversionError) as e:
    sd_vae.convert(str(folder))
  message = str(e.value)
  assert str(folder / sd_vae.WEIGHTS) in message
  for part in expected:
    assert part in message


def test_config_errors_name_the_file_and_key(reference, tmp_path):
  folder = tmp_path / "cfg"
  _write_folder(folder, _state(reference["folder"]), reference["folder"])
  cfg_path = folder / sd_vae.CONFIG
  cfg = json.loads(cfg_path.read_text())
  cfg["act_fn"] = "gelu"
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(sd_vae.ConversionError, match=r"config\.json: act_fn 'gelu'"):
    sd_vae.convert(str(folder))
  with pytest.raises(sd_vae.ConversionError, match="has no config.json"):
    sd_vae.convert(str(tmp_path))


def test_cli_converts_and_reports_errors(reference, tmp_path):
  out = tmp_path / "vae.safetensors"
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "imagebrush_jax.convert", *args], cwd=REPO, capture_output=True,
      text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  ok = run("--from", "sd_vae", "--input", reference["folder"], "--output", str(out))
  assert ok.returncode == 0, ok.stderr
  assert "block_out_channels=[8, 16]" in ok.stdout and out.exists()
  _, metadata = params_file.read_safetensors(out)
  assert metadata[params_file.KIND_KEY] == "autoencoder_kl"
  assert json.loads(metadata[params_file.ARCH_KEY])["block_out_channels"] == [8, 16]
  bad = run("--from", "sd_vae", "--input", str(tmp_path / "nowhere"), "--output",
            str(tmp_path / "x.safetensors"))
  assert bad.returncode == 1 and "nowhere" in bad.stderr
  assert not (tmp_path / "x.safetensors").exists()


def test_params_file_rejects_other_kinds_and_raw_files(reference, tmp_path):
  raw = os.path.join(reference["folder"], sd_vae.WEIGHTS)
  with pytest.raises(params_file.ParamsFileError, match="not a converted-params file"):
    autoencoder_params.load(raw)
  other = tmp_path / "vit.safetensors"
  params_file.save(other, {"a": np.zeros(2)}, kind="vit", architecture={})
  with pytest.raises(params_file.ParamsFileError, match="holds a 'vit' model"):
    autoencoder_params.load(other)
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(params_file.ParamsFileError, match="garbage.safetensors"):
    params_file.read_safetensors(garbage)
