"""ViT converter: parity with transformers' SigLIP / ViT (and timm naming), exact rewrites, errors.

torch and transformers (CPU) are test-only dependencies (requirements-test.txt). timm itself is
not installed (its torchvision dependency needs a CUDA torch); its naming is tested on the
SigLIP reference's weights laid out as timm lays them out (fused qkv).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax import convert
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters import vit as vit_conv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             image_size=16, patch_size=4)


def _perturbed(model, seed, zero_query_bias=True):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
      if zero_query_bias and (name.endswith("q_proj.bias") or name.endswith("query.bias")):
        p.zero_()
  return model.eval()


def _save(model, folder):
  model.save_pretrained(folder, safe_serialization=True)
  return os.path.join(folder, "model.safetensors")


def _images(n=2, size=16):
  return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _ours(result_or_file, images):
  if isinstance(result_or_file, vit_conv.Result):
    params, arch = result_or_file.params, result_or_file.architecture
  else:
    params, arch = vit_conv.load(result_or_file)
  module = vit_conv.vit_module(arch)
  return np.asarray(module.apply({"params": jax.tree.map(jnp.asarray, params)},
                                 jnp.asarray(images)))


def _torch_in(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
  """SigLIP vision tower (no class token), exact GELU, zero query biases, random everything else."""
  torch.manual_seed(0)
  config = transformers.SiglipVisionConfig(**SIZES, hidden_act="gelu", layer_norm_eps=1e-6,
                                           attn_implementation="eager")
  model = _perturbed(transformers.SiglipVisionModel(config), seed=1)
  folder = str(tmp_path_factory.mktemp("siglip"))
  path = _save(model, folder)
  with torch.no_grad():
    out = model(pixel_values=_torch_in(_images())).last_hidden_state.numpy()
  return dict(model=model, path=path, folder=folder, out=out)


def test_siglip_matches_transformers_with_biases_folded(siglip, tmp_path):
  out = str(tmp_path / "vit.safetensors")
  notes = convert.convert_vit(siglip["path"], out, num_heads=None, lossy=False)
  assert any("value biases folded" in n for n in notes)
  assert any("key biases dropped" in n for n in notes)
  assert any("skipped" in n and "head" in n for n in notes)  # SigLIP's pooling head
  ours = _ours(out, _images())
  assert ours.shape == siglip["out"].shape == (2, 16, 32)
  assert np.abs(ours - siglip["out"]).max() <= TOLERANCE
  _, arch = vit_conv.load(out)
  assert arch == dict(patch_size=4, width=32, depth=2, num_heads=4, mlp_ratio=2, image_size=16,
                      num_patches=16)


def _as_timm(state, prefix=""):
  """SigLIP tensors renamed and fused as timm's VisionTransformer stores them."""
  timm = {"patch_embed.proj.weight": state["embeddings.patch_embedding.weight"],
          "patch_embed.proj.bias": state["embeddings.patch_embedding.bias"],
          "pos_embed": state["embeddings.position_embedding.weight"][None],
          "norm.weight": state["post_layernorm.weight"],
          "norm.bias": state["post_layernorm.bias"],
          "head.weight": np.zeros((10, 32), np.float32), "head.bias": np.zeros(10, np.float32)}
  for i in range(SIZES["num_hidden_layers"]):
    s, t = f"encoder.layers.{i}.", f"blocks.{i}."
    a = s + "self_attn."
    timm[t + "attn.qkv.weight"] = np.concatenate(
        [state[a + f"{x}_proj.weight"] for x in "qkv"], axis=0)
    timm[t + "attn.qkv.bias"] = np.concatenate([state[a + f"{x}_proj.bias"] for x in "qkv"])
    for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                         ("attn.proj", "self_attn.out_proj"), ("mlp.fc1", "mlp.fc1"),
                         ("mlp.fc2", "mlp.fc2")):
      for leaf in ("weight", "bias"):
        timm[f"{t}{ours}.{leaf}"] = state[f"{s}{theirs}.{leaf}"]
  return {prefix + k: np.ascontiguousarray(v) for k, v in timm.items()}


def _siglip_state(siglip):
  return {k: np.array(v) for k, v in params_file.read_safetensors(siglip["path"])[0].items()}


def test_timm_naming_matches_the_same_network(siglip, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "timm.safetensors")  # no config.json beside it: heads from the caller
  save_file(_as_timm(_siglip_state(siglip), prefix="model."), path)
  with pytest.raises(vit_conv.ConversionError, match="pass --num_heads"):
    vit_conv.convert(path)
  result = vit_conv.convert(path, num_heads=4)
  assert result.notes[0].startswith("naming timm, prefix 'model.'")
  assert np.abs(_ours(result, _images()) - siglip["out"]).max() <= TOLERANCE


def test_hf_vit_class_token_needs_lossy_and_patch_path_matches(tmp_path):
  torch.manual_seed(0)
  config = transformers.ViTConfig(**SIZES, layer_norm_eps=1e-6, attn_implementation="eager")
  model = _perturbed(transformers.ViTModel(config), seed=2)
  path = _save(model, str(tmp_path))
  with pytest.raises(vit_conv.ConversionError, match="class token"):
    vit_conv.convert(path)
  result = vit_conv.convert(path, lossy=True)
  assert any(n.startswith("DROPPED (lossy): class token") for n in result.notes)
  assert any("skipped" in n and "pooler" in n for n in result.notes)
  # Reference: transformers' own modules on the patch tokens alone (what the target computes).
  x = _images()
  with torch.no_grad():
    emb = model.embeddings.patch_embeddings(_torch_in(x))
    emb = emb + model.embeddings.position_embeddings[:, 1:]
    layers = model.layers if hasattr(model, "layers") else model.encoder.layer  # v5 / v4
    for layer in layers:
      emb = layer(emb)
      emb = emb[0] if isinstance(emb, tuple) else emb
    want = model.layernorm(emb).numpy()
  assert np.abs(_ours(result, x) - want).max() <= TOLERANCE


def test_nonzero_query_bias_is_refused_unless_lossy(siglip, tmp_path):
  state = _siglip_state(siglip)
  state["encoder.layers.1.self_attn.q_proj.bias"] += 0.5
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "model.safetensors")
  save_file(state, path)
  (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4,
                                                    "hidden_act": "gelu_pytorch_tanh"}))
  with pytest.raises(vit_conv.ConversionError) as e:
    vit_conv.convert(path)
  assert "non-zero query biases (blocks [1])" in str(e.value)
  assert "'gelu_pytorch_tanh'" in str(e.value) and "--lossy" in str(e.value)
  result = vit_conv.convert(path, lossy=True)
  assert sum(n.startswith("DROPPED (lossy)") for n in result.notes) == 2


@pytest.mark.parametrize("edit, expected", [
    ("missing", ["1 missing key", "encoder.layers.0.mlp.fc2.weight"]),
    ("extra", ["1 unexpected key", "encoder.layers.0.ls1.gamma"]),
    ("shape", ["wrong shape", "encoder/block1/mlp/wi/kernel"]),
])
def test_bad_files_are_clear_errors(siglip, tmp_path, edit, expected):
  state = _siglip_state(siglip)
  if edit == "missing":
    del state["encoder.layers.0.mlp.fc2.weight"]
  elif edit == "extra":
    state["encoder.layers.0.ls1.gamma"] = np.ones(32, np.float32)
  else:
    state["encoder.layers.1.mlp.fc1.weight"] = np.zeros((64, 30), np.float32)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "model.safetensors")
  save_file(state, path)
  with pytest.raises(vit_conv.ConversionError) as e:
    vit_conv.convert(path, num_heads=4)
  assert path in str(e.value)
  for part in expected:
    assert part in str(e.value)


def test_unknown_layout_is_refused(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "x.safetensors")
  save_file({"conv.weight": np.zeros((2, 2), np.float32)}, path)
  with pytest.raises(vit_conv.ConversionError, match="cannot tell which ViT"):
    vit_conv.convert(path, num_heads=2)


def test_converted_vit_initialises_the_prompt_backbone(siglip, tmp_path):
  from configs import tiny_test  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.core import objective as objective_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "vit.safetensors")
  convert.convert_vit(siglip["path"], out, num_heads=None, lossy=False)
  config = tiny_test.get_config()
  config.data.tile_size = 8
  config.model.unet.channels = (8,)
  config.model.unet.attention = ("cross",)
  config.model.unet.mid_attention = "none"
  config.model.unet.norm_groups = 4
  config.model.prompt.vit_init = out
  vit = config.model.prompt.vit
  vit.patch_size, vit.width, vit.depth, vit.num_heads, vit.mlp_ratio = 4, 32, 2, 4, 2
  with pytest.raises(ValueError, match=r"config.model.prompt.image_size = 16"):
    objective_lib.build(config)  # 8-pixel tiles: 4 patches, the file has 16
  config.model.prompt.image_size = 16
  vit.depth = 3
  with pytest.raises(ValueError, match=r"config.model.prompt.vit.depth = 3, but the ViT"):
    objective_lib.build(config)
  vit.depth = 2
  task = objective_lib.build(config)
  params = jax.jit(task.init_params)(jax.random.key(0))
  want, _ = vit_conv.load(out)
  jax.tree.map(np.testing.assert_array_equal,
               jax.tree.map(np.asarray, params["prompt_encoder"]["vit"]), want)
