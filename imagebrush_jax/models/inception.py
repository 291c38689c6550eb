"""InceptionV3 for FID in Flax: the pytorch-fid network (FIDInceptionA/C/E_1/E_2 blocks of the
TF 2015-12-05 graph), reading the pt_inception-2015-12-05 weights under their PyTorch names.

    fn = load_activations_fn("pt_inception-2015-12-05.safetensors")
    act = fn(images_uint8)        # [N, 2048] pool3 features, as pytorch-fid's dims=2048

Weights: a .safetensors or .npz file holding the PyTorch state dict (names like
'Mixed_5b.branch1x1.conv.weight', 'Conv2d_1a_3x3.bn.running_mean'), or the original .pth when
PyTorch is installed. Convert once with
    python -m imagebrush_jax.convert --from inception \
        --input pt_inception-2015-12-05-6726825d.pth --output pt_inception.safetensors
Inputs are resized to 299x299 (bilinear, align_corners=False, no antialias: F.interpolate) and
scaled to [-1, 1], as pytorch-fid does.
"""
from __future__ import annotations

import io
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.infra import files

BN_EPS = 1e-3


class BasicConv2d(nn.Module):
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=((ph, ph), (pw, pw)),
                use_bias=False, name="conv")(x)
    bn = BatchNorm(self.features, name="bn")
    return nn.relu(bn(x))


class BatchNorm(nn.Module):
  """Inference batch norm with PyTorch's parameter names (weight, bias, running_*)."""
  features: int

  @nn.compact
  def __call__(self, x):
    f = self.features
    w = self.param("weight", nn.initializers.ones, (f,))
    b = self.param("bias", nn.initializers.zeros, (f,))
    mean = self.param("running_mean", nn.initializers.zeros, (f,))
    var = self.param("running_var", nn.initializers.ones, (f,))
    return (x - mean) * (w / jnp.sqrt(var + BN_EPS)) + b


def _avg3(x):  # avg_pool2d(3, 1, 1, count_include_pad=False)
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max3s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class InceptionC(nn.Module):
  c7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.c7
    b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(nn.Module):
  pool: str  # 'avg' (FIDInceptionE_1) | 'max' (FIDInceptionE_2)

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      pooled = _avg3(x)
    else:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """images float [N, H, W, 3] in [0, 1] -> pool3 activations [N, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = jax.image.resize(x, (x.shape[0], 299, 299, x.shape[-1]), "bilinear", antialias=False)
    x = 2.0 * x - 1.0
    x = BasicConv2d(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3s2(x)
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------- weights


def param_shapes() -> dict[str, Any]:
  """The Flax 'params' tree of FIDInceptionV3 as ShapeDtypeStructs."""
  return jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.key(0), jnp.zeros((1, 75, 75, 3))))["params"]


def _torch_name(path: tuple[str, ...]) -> str:
  *prefix, leaf = path
  if leaf == "kernel":
    leaf = "weight"
  return ".".join(prefix + [leaf])


def torch_state_shapes() -> dict[str, tuple[int, ...]]:
  """Names and PyTorch shapes of every array the network reads (conv weights [O, I, kh, kw])."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes())[0]:
    keys = tuple(p.key for p in path)
    shape = tuple(leaf.shape)
    if keys[-1] == "kernel":
      kh, kw, i, o = shape
      shape = (o, i, kh, kw)
    out[_torch_name(keys)] = shape
  return out


def params_from_state_dict(state: dict[str, np.ndarray]) -> dict[str, Any]:
  """PyTorch-named arrays -> the Flax params tree; extra keys (fc, num_batches_tracked, aux
  logits) are ignored, missing or misshapen ones are an error naming them."""
  shapes = torch_state_shapes()
  missing = sorted(set(shapes) - set(state))
  if missing:
    raise KeyError(f"InceptionV3 weights lack {len(missing)} array(s), e.g. {missing[:5]}; "
                   f"expected the pt_inception-2015-12-05 (pytorch-fid) state dict")
  bad = [f"{k}: {tuple(np.shape(state[k]))} != {s}" for k, s in shapes.items()
         if tuple(np.shape(state[k])) != s]
  if bad:
    raise ValueError(f"InceptionV3 weights of the wrong shape: {bad[:5]}")

  def convert(path, leaf):
    keys = tuple(p.key for p in path)
    value = np.asarray(state[_torch_name(keys)], np.float32)
    return value.transpose(2, 3, 1, 0) if keys[-1] == "kernel" else value

  return jax.tree_util.tree_map_with_path(convert, param_shapes())


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from .safetensors, .npz or (with PyTorch installed) .pth/.pt."""
  if not files.isfile(path):
    raise FileNotFoundError(f"InceptionV3 weights not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".safetensors", ".npz", ".pth", ".pt"):
    raise ValueError(f"unsupported InceptionV3 weights format {ext!r} ({path}): use "
                     f".safetensors, .npz or .pth")
  content = files.read_bytes(path)  # local or gs://
  if ext == ".safetensors":
    from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
    return dict(load(content))
  if ext == ".npz":
    with np.load(io.BytesIO(content)) as data:
      return {k: data[k] for k in data.files}
  try:  # .pth / .pt
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch; convert it once where PyTorch is "
                      f"installed: python -m imagebrush_jax.convert --from inception --input "
                      f"{path} --output pt_inception.safetensors") from e
  state = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
  return {k: v.numpy() for k, v in state.items()}


def load_params(path: str) -> dict[str, Any]:
  return params_from_state_dict(read_state_dict(path))


def make_activations_fn(params: Any, batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images [N, H, W, 3] -> float64 [N, 2048], in fixed-size (padded) jitted batches."""
  model = FIDInceptionV3()
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32) / 255.0))
  params = jax.device_put(params)

  def activations(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    out = []
    for start in range(0, images.shape[0], batch_size):
      chunk = images[start:start + batch_size]
      n = chunk.shape[0]
      if n < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:],
                                                chunk.dtype)])
      out.append(np.asarray(apply(params, chunk), np.float64)[:n])
    return np.concatenate(out)

  return activations


def load_activations_fn(path: str, batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
  return make_activations_fn(load_params(path), batch_size)

