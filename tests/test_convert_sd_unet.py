"""SD UNet converter: parity with diffusers' PyTorch UNet2DConditionModel (SD 1.x and 2.x layouts),
fine-tuning from it (the widened input convolution), and its errors.

diffusers and torch (CPU) are test-only dependencies (requirements-test.txt).
"""
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import paper_256_from_sd
from configs import tiny_test
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import sd_unet
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import model as model_lib
from imagebrush_jax.core import objective as objective_lib

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
logging.getLogger("diffusers").setLevel(logging.ERROR)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
FOUR_LEVELS = dict(
    block_out_channels=(16, 32, 32, 32), layers_per_block=2, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
LAYOUTS = {
    # SD 1.x: one head count for all levels, 1x1-conv transformer projections.
    "sd1": dict(FOUR_LEVELS, attention_head_dim=2, cross_attention_dim=24),
    # SD 2.x: heads per level (a fixed head width), linear projections, upcast attention.
    "sd2": dict(FOUR_LEVELS, attention_head_dim=(2, 4, 4, 4), cross_attention_dim=20,
                use_linear_projection=True, upcast_attention=True),
}
# The published config.json files of SD 1.5's and SD 2.1's UNets (the keys that differ from
# diffusers' defaults).
SD15_CONFIG = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD21_CONFIG = dict(SD15_CONFIG, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                   use_linear_projection=True, upcast_attention=True, sample_size=96,
                   dual_cross_attention=False, num_class_embeds=None)


def _perturbed(module, seed):
  """Random weights everywhere, norms and biases included (default init leaves them trivial)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return module.eval()


def _reference_unet(folder, seed=1, **config):
  torch.manual_seed(0)
  unet = _perturbed(diffusers.UNet2DConditionModel(sample_size=16, **config), seed)
  unet.save_pretrained(folder, safe_serialization=True)
  return unet


def _torch_output(unet, x, t, context):
  with torch.no_grad():
    out = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
               encoder_hidden_states=torch.from_numpy(context)).sample
  return out.numpy().transpose(0, 2, 3, 1)


def _inputs(arch, size=16, tokens=7, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, size, size, arch["in_channels"])).astype(np.float32)
  context = rng.standard_normal((2, tokens, arch["cross_attention_dim"])).astype(np.float32)
  return x, np.array([3, 871]), context


@pytest.fixture(scope="module")
def reference_unets(tmp_path_factory):
  """{layout name: its diffusers folder (a pipeline folder's unet/) and PyTorch model}."""
  made = {}
  for name, config in LAYOUTS.items():
    folder = tmp_path_factory.mktemp(name) / "unet"
    made[name] = dict(name=name, folder=str(folder), unet=_reference_unet(folder, **config))
  return made


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, reference_unets):
  return reference_unets[request.param]


@pytest.fixture
def sd2(reference_unets):
  return reference_unets["sd2"]


def test_converted_unet_matches_diffusers(layout):
  params, arch = sd_unet.convert(layout["folder"])
  if layout["name"] == "sd1":
    assert (arch["num_heads"], arch["head_dim"]) == (2, 0)
  else:
    assert arch["head_dim"] == 8 and sd_unet.heads_per_level(
        arch["channels"], arch["num_heads"], arch["head_dim"]) == [2, 4, 4, 4]
  assert arch["attention"] == ["self+cross"] * 3 + ["none"] and arch["num_res_blocks"] == 2
  x, t, context = _inputs(arch)
  want = _torch_output(layout["unet"], x, t, context)
  got = np.asarray(sd_unet.build(arch).apply({"params": params}, jnp.asarray(x), jnp.asarray(t),
                                             jnp.asarray(context)))
  assert np.abs(want).max() > 0.5  # a non-trivial output, not a zero-initialised network's
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_cli_converts_verifies_and_the_file_loads(sd2, tmp_path):
  out = str(tmp_path / "unet.safetensors")
  proc = subprocess.run([sys.executable, "-m", "imagebrush_jax.convert", "--from", "sd_unet",
                         "--input", os.path.dirname(sd2["folder"]), "--output", out,
                         "--verify"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  check = json.loads(proc.stdout.strip().splitlines()[-1])  # the pipeline folder's unet/ is found
  assert check["ok"] and check["max_abs_diff"] <= TOLERANCE
  assert check["reference_max_abs"] > 0.5 and check["context_shape"][1] == 77
  params, arch = sd_unet.load(out)
  direct, direct_arch = sd_unet.convert(sd2["folder"])
  assert arch == direct_arch
  jax.tree.map(np.testing.assert_array_equal, params, direct)


# The CLI with sd_unet.verify replaced by a failing comparison (argv: the CLI's arguments).
_FAILED_VERIFY_CLI = """
import runpy, sys
from imagebrush_jax.converters import sd_unet
sd_unet.verify = lambda folder, params, arch, **kw: dict(
    max_abs_diff=0.5, reference_max_abs=1.0, tolerance=1e-4, ok=False, input_shape=[],
    context_shape=[])
sys.argv = ["convert"] + sys.argv[1:]
runpy.run_module("imagebrush_jax.convert", run_name="__main__", alter_sys=True)
"""


def test_cli_writes_nothing_when_verification_fails(sd2, tmp_path):
  out = tmp_path / "unet.safetensors"
  proc = subprocess.run([sys.executable, "-c", _FAILED_VERIFY_CLI, "--from", "sd_unet",
                         "--input", sd2["folder"], "--output", str(out), "--verify"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert not out.exists() and os.listdir(tmp_path) == []
  message = (f"error: the converted UNet differs from diffusers' by 0.5 (tolerance 0.0001); "
             f"{out} not written")
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [message] and proc.stderr.strip().splitlines()[-1] == message
  assert not json.loads(proc.stdout.strip().splitlines()[-1])["ok"]


def test_verify_reports_a_wrong_conversion(sd2):
  """The comparison sees a difference: one attention projection off by a little."""
  params, arch = sd_unet.convert(sd2["folder"])
  qkv = params["down1_attn0"]["block0"]["attn_self"]["qkv"]
  qkv["kernel"] = np.asarray(qkv["kernel"]) * 1.01
  check = sd_unet.verify(sd2["folder"], params, arch, batch=1, tokens=5)
  assert not check["ok"] and check["max_abs_diff"] > 10 * TOLERANCE


@pytest.mark.parametrize("config, params", [(SD15_CONFIG, 859_520_964),
                                            (SD21_CONFIG, 865_910_724)])
def test_published_sd_configs_give_their_parameter_counts(config, params):
  arch = sd_unet.architecture_from_diffusers(config, "config.json")
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(sd_unet.param_shapes(arch)))
  assert count == params  # SD 1.5's and SD 2.1's UNets, tensor for tensor


def test_paper_256_from_sd_is_sd15s_unet():
  config = paper_256_from_sd.get_config()
  arch = sd_unet.architecture_from_diffusers(SD15_CONFIG, "config.json")
  assert sd_unet._config_mismatches(config, arch) == []  # pylint: disable=protected-access
  assert config.model.prompt.mixer.width == arch["cross_attention_dim"] == 768
  assert config.model.unet_init and config.model.autoencoder.params and \
      config.model.prompt.vit_init


# ---------------------------------------------------------------------------- fine-tuning


def _tiny_sd_config(unet_file, **changes):
  """tiny_test in SD's layout (cross-attention on the outer level), starting from `unet_file`."""
  config = tiny_test.get_config()
  config.model.unet.attention = ("self+cross", "none")
  config.model.unet_init = unet_file
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
  """A 3-channel SD-layout UNet that fits tiny_test's pixel-space model, converted."""
  folder = tmp_path_factory.mktemp("tiny_sd") / "unet"
  unet = _reference_unet(
      folder, seed=2, in_channels=3, out_channels=3, block_out_channels=(16, 32),
      layers_per_block=1, norm_num_groups=8, attention_head_dim=2, cross_attention_dim=32,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
  out = str(folder.parent / "unet.safetensors")
  params, arch = sd_unet.convert(str(folder))
  sd_unet.save(out, params, arch, source="test")
  return dict(unet=unet, file=out, arch=arch)


def test_fine_tuning_starts_as_sd_on_the_noisy_latent(tiny_sd):
  """At step 0 the widened UNet computes SD's function of x_t: the known grid and the mask,
  whatever they hold, enter through zero weights."""
  config = _tiny_sd_config(tiny_sd["file"])
  trainable = objective_lib.build(config)
  params = trainable.init_params(jax.random.key(0))
  kernel = np.asarray(params["unet"]["conv_in"]["kernel"])
  assert kernel.shape[2] == 3 + 3 + 1  # x_t, the known grid, the mask
  assert np.all(kernel[:, :, 3:] == 0) and np.any(kernel[:, :, :3] != 0)
  model = build_lib.build_model(config)
  rng = np.random.default_rng(1)
  x_t, t, context = _inputs(tiny_sd["arch"], size=16, tokens=9, seed=3)
  x_t = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)  # the K = 1 grid of 8-pixel tiles
  cond = rng.standard_normal(x_t.shape).astype(np.float32)
  mask = (rng.random((2, 16, 16, 1)) < 0.5).astype(np.float32)
  got = np.asarray(model.apply({"params": params}, x_t, t, cond, mask, context,
                               method=model_lib.ImageBrush.denoise))
  np.testing.assert_allclose(got, _torch_output(tiny_sd["unet"], x_t, t, context), rtol=0,
                             atol=TOLERANCE)
  # The prompt encoder is untouched: it starts at random as without unet_init.
  plain = objective_lib.build(_tiny_sd_config("")).init_params(jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, params["prompt_encoder"], plain["prompt_encoder"])


def test_config_that_does_not_fit_the_file_is_one_clear_error(tiny_sd):
  config = _tiny_sd_config(tiny_sd["file"], **{"model.prompt.mixer.width": 48,
                                              "model.unet.num_res_blocks": 2})
  with pytest.raises(ValueError) as e:
    objective_lib.build(config)
  message = str(e.value)
  assert f"config.model.unet_init = {tiny_sd['file']}" in message
  assert "config.model.prompt.mixer.width = 48" in message and "32" in message
  assert "config.model.unet.num_res_blocks = 2, the file's UNet has 1" in message
  config = _tiny_sd_config(tiny_sd["file"], **{"model.unet.attention": ("self", "self+cross")})
  with pytest.raises(ValueError, match=r"config\.model\.unet\.attention = \['self', 'self\+cross'"):
    objective_lib.build(config)


def test_unet_init_refuses_other_files(tiny_sd, tmp_path):
  raw = os.path.join(os.path.dirname(tiny_sd["file"]), "unet", sd_unet.WEIGHTS)
  with pytest.raises(params_file.ParamsFileError, match="not a converted-params file"):
    objective_lib.build(_tiny_sd_config(raw))
  params, _, _ = params_file.load(tiny_sd["file"], sd_unet.KIND)
  other = str(tmp_path / "vae.safetensors")
  params_file.save(other, params, kind="autoencoder_kl", architecture={})
  with pytest.raises(params_file.ParamsFileError, match="holds a 'autoencoder_kl' model"):
    objective_lib.build(_tiny_sd_config(other))


# ---------------------------------------------------------------------------- errors


def _state(folder):
  return {k: np.array(v) for k, v in
          params_file.read_safetensors(os.path.join(folder, sd_unet.WEIGHTS))[0].items()}


def _write(folder, state, config):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  save_file(state, os.path.join(folder, sd_unet.WEIGHTS))
  with open(os.path.join(folder, sd_unet.CONFIG), "w") as f:
    json.dump(config, f)


def test_bad_weights_are_one_error_naming_every_key(tiny_sd, tmp_path):
  src = os.path.join(os.path.dirname(tiny_sd["file"]), "unet")
  config = json.load(open(os.path.join(src, sd_unet.CONFIG)))
  state = _state(src)
  attn = "down_blocks.0.attentions.0.transformer_blocks.0"
  del state[f"{attn}.attn2.to_k.weight"]
  state["extra.weight"] = np.zeros(3, np.float32)
  state[f"{attn}.attn1.to_v.weight"] = np.zeros((16, 8), np.float32)
  state["conv_out.weight"] = np.zeros((3, 16, 1, 1), np.float32)
  bad = str(tmp_path / "bad")
  _write(bad, state, config)
  with pytest.raises(sd_unet.ConversionError) as e:
    sd_unet.convert(bad)
  message = str(e.value)
  assert os.path.join(bad, sd_unet.WEIGHTS) in message
  assert "1 missing key(s)" in message and f"{attn}.attn2.to_k.weight" in message
  assert "1 unexpected key(s)" in message and "extra.weight" in message
  assert "2 shape mismatch(es)" in message
  assert f"{attn}.attn1.to_v.weight [16, 8]" in message
  assert "conv_out.weight [3, 16, 1, 1]" in message


@pytest.mark.parametrize("key, value, expected", [
    ("class_embed_type", "timestep", "class_embed_type = 'timestep' is not supported"),
    ("down_block_types", ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
     r"up_block_types\[0\] = 'UpBlock2D' does not mirror down_block_types\[1\]"),
    ("attention_head_dim", [4, 2], "neither the same heads nor the same head width"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type"),
    ("_class_name", "UNet3DConditionModel", "only UNet2DConditionModel converts"),
])
def test_unsupported_config_values_name_the_key(key, value, expected):
  config = {"block_out_channels": [16, 32], "down_block_types": ["CrossAttnDownBlock2D",
                                                                 "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], key: value}
  with pytest.raises(sd_unet.ConversionError, match=expected):
    sd_unet.architecture_from_diffusers(config, "unet/config.json")


def test_cli_errors_are_one_line_and_status_1(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "imagebrush_jax.convert", "--from", "sd_unet",
                         "--input", str(tmp_path), "--output", str(tmp_path / "u.safetensors")],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert f"{tmp_path} has no config.json (nor unet/config.json)" in proc.stderr
  assert not os.path.exists(tmp_path / "u.safetensors")
