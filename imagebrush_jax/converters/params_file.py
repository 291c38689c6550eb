"""Parameter files: reading any safetensors file, and this project's converted-params format.

A converted-params file is a plain safetensors file (no pickle, memory-mappable, readable by any
safetensors library):

  tensors   one per Flax parameter, named by its '/'-joined path in the 'params' tree, e.g.
            `encoder/down_blocks_0/resnets_0/conv1/kernel` (layout HWIO / [in, out], float32);
  metadata  the safetensors header's string map:
              imagebrush_jax.kind          'autoencoder_kl' | 'vit' | 'unet' | 'imagebrush'
              imagebrush_jax.architecture  JSON of the sizes the module is built from
              imagebrush_jax.version       format version, '1'
              imagebrush_jax.source        where the weights came from (free text)

`save` writes atomically (temporary name, then rename); `load` checks the kind and version and
names the file in every error.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.infra import shape_diff

FORMAT_VERSION = "1"
KIND_KEY = "imagebrush_jax.kind"
ARCH_KEY = "imagebrush_jax.architecture"
VERSION_KEY = "imagebrush_jax.version"
SOURCE_KEY = "imagebrush_jax.source"

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class ParamsFileError(ValueError):
  """A parameter file cannot be read, or is not what the caller expects; names the file."""


# ---------------------------------------------------------------------------- any safetensors


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of a safetensors file as numpy arrays (memory-mapped when local), and its
  metadata.

  Reads the format directly (8-byte header length, JSON header, raw little-endian data), so
  bfloat16 files load too (as ml_dtypes.bfloat16) and nothing needs torch.
  """
  path = os.fspath(path)
  try:
    if files.is_remote(path):  # object storage: the whole object, read once
      raw = np.frombuffer(files.read_bytes(path), np.uint8)
    else:  # mapped, read as touched (an empty file cannot be mapped)
      raw = np.memmap(path, np.uint8, mode="r") if os.path.getsize(path) else np.zeros(0, np.uint8)
  except OSError as e:
    raise ParamsFileError(f"cannot read {path}: {e}") from e
  size = raw.size
  if size < 8:
    raise ParamsFileError(f"{path}: too short to be a safetensors file ({size} bytes)")
  (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
  if header_len > size - 8:
    raise ParamsFileError(f"{path}: not a safetensors file (header length {header_len} "
                          f"exceeds the file size {size})")
  try:
    header = json.loads(raw[8:8 + header_len].tobytes())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ParamsFileError(f"{path}: not a safetensors file (bad JSON header: {e})") from e
  if not isinstance(header, dict):
    raise ParamsFileError(f"{path}: not a safetensors file (header is not a JSON object)")
  metadata = header.pop("__metadata__", None) or {}
  data = raw[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    try:
      dtype = _DTYPES[info["dtype"]]
      shape = tuple(int(s) for s in info["shape"])
      start, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise ParamsFileError(f"{path}: tensor {name!r} has an unreadable header entry {info!r} "
                            f"(unsupported dtype or missing field)") from e
    count = int(np.prod(shape, dtype=np.int64))
    if end - start != count * np.dtype(dtype).itemsize or end > data.size:
      raise ParamsFileError(f"{path}: tensor {name!r} of shape {shape} {info['dtype']} does not "
                            f"fit its byte range [{start}, {end}) (truncated file?)")
    tensors[name] = data[start:end].view(dtype).reshape(shape)
  return tensors, dict(metadata)


# ---------------------------------------------------------------------------- converted params


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def float32_safetensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
  """The safetensors encoding of float32 `tensors`, tensors and metadata in key order: the same
  input always gives the same bytes (the safetensors library orders its header by hashing)."""
  header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
  chunks, offset = [], 0
  for name in sorted(tensors):
    data = np.ascontiguousarray(np.asarray(tensors[name], "<f4")).tobytes()
    header[name] = {"dtype": "F32", "shape": list(np.shape(tensors[name])),
                    "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the library writes it
  return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def save(path: str | os.PathLike, params: Mapping[str, Any], *, kind: str,
         architecture: Mapping[str, Any], source: str = "") -> None:
  """Writes a 'params' tree as a converted-params file (float32), atomically; the same
  parameters give the same bytes however the tree was built."""
  metadata = {KIND_KEY: kind, ARCH_KEY: json.dumps(dict(architecture), sort_keys=True),
              VERSION_KEY: FORMAT_VERSION, SOURCE_KEY: source}
  files.write_bytes_atomic(path, float32_safetensors(flatten(params), metadata))


def load(path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, Any],
                                                       dict[str, str]]:
  """(params tree of float32 numpy arrays, architecture dict, metadata) of a converted file."""
  path = os.fspath(path)
  if not files.isfile(path):
    raise ParamsFileError(f"parameter file {path} does not exist")
  tensors, metadata = read_safetensors(path)
  found = metadata.get(KIND_KEY)
  if found is None:
    raise ParamsFileError(
        f"{path}: no '{KIND_KEY}' in its metadata, so it is not a converted-params file; make "
        f"one with `python -m imagebrush_jax.convert` (raw diffusers / timm files go in as "
        f"--input there)")
  if found != kind:
    raise ParamsFileError(f"{path}: holds a {found!r} model, not a {kind!r} one")
  if metadata.get(VERSION_KEY) != FORMAT_VERSION:
    raise ParamsFileError(f"{path}: format version {metadata.get(VERSION_KEY)!r}; this code "
                          f"reads version {FORMAT_VERSION!r}")
  try:
    arch = json.loads(metadata[ARCH_KEY])
  except (KeyError, json.JSONDecodeError) as e:
    raise ParamsFileError(f"{path}: unreadable '{ARCH_KEY}' metadata: {e}") from e
  params = unflatten({k: np.asarray(v, np.float32) for k, v in tensors.items()})
  return params, arch, metadata


def check_tree(params: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
  """Raises ParamsFileError listing missing / unexpected / reshaped arrays of `params`.

  `expected` is a tree of arrays or ShapeDtypeStructs (e.g. from jax.eval_shape).
  """
  have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
  want = {k: tuple(v.shape) for k, v in flatten(expected).items()}
  message = describe_differences(have, want, "file", "model")
  if message:
    raise ParamsFileError(f"{what} does not fit the model:\n{message}")


def describe_differences(have: Mapping[str, tuple], want: Mapping[str, tuple], have_name: str,
                         want_name: str, limit: int = 20) -> str:
  """Lines listing names missing from `have`, extra in it, and of another shape ('' if none)."""
  return shape_diff.describe(
      {k: list(v) for k, v in have.items()}, {k: list(v) for k, v in want.items()},
      (f"missing (the {want_name} needs them)",
       f"unexpected (the {want_name} has no place for them)",
       f"wrong shape ({have_name} vs {want_name})"), limit)
