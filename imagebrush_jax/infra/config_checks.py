"""Checks of single config values, each error naming the key and the value it got, e.g.
"config.data.num_examples must be in [1, 8], got 9". The typed options of every config section
(data/options.py, core/options.py, training/options.py, infra/parallel.py) are built with them.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence


class ConfigError(ValueError):
  """A config value is missing or out of range; the message names the key."""


class MissingKeyError(ConfigError, KeyError):
  """A config key is missing (a KeyError too, printed without KeyError's quotes)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def get(section: Any, key: str, where: str) -> Any:
  """section[key]; a dotted key reads a sub-section (e.g. 'folder.root'). `where` names the
  section in the error (e.g. 'config.data')."""
  value = section
  try:
    for part in key.split("."):
      value = value[part]
  except (KeyError, TypeError):
    raise MissingKeyError(f"{where}.{key} is missing") from None
  return value


def integer(value: Any, key: str, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ConfigError(f"{key} must be an integer, got {value!r}")
  if value < lo or (hi is not None and value > hi):
    bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise ConfigError(f"{key} must be {bound}, got {value}")
  return int(value)


def number(value: Any, key: str, lo: float, hi: float) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ConfigError(f"{key} must be a number, got {value!r}")
  if not lo <= value <= hi:
    raise ConfigError(f"{key} must be in [{lo}, {hi}], got {value}")
  return float(value)


def boolean(value: Any, key: str) -> bool:
  if not isinstance(value, bool):
    raise ConfigError(f"{key} must be True or False, got {value!r}")
  return value


def string(value: Any, key: str) -> str:
  if not isinstance(value, str):
    raise ConfigError(f"{key} must be a string, got {value!r}")
  return value


def choice(value: Any, key: str, choices: Sequence[str]) -> str:
  if value not in choices:
    raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
  return value


def strings(value: Any, key: str, *, choices: Sequence[str] | None = None,
            allow_empty: bool = True) -> tuple[str, ...]:
  """A tuple of distinct non-empty strings (from `choices`, if given)."""
  if isinstance(value, str) or not isinstance(value, (tuple, list)):
    raise ConfigError(f"{key} must be a tuple of strings, got {value!r}")
  if not value and not allow_empty:
    raise ConfigError(f"{key} must not be empty")
  for i, item in enumerate(value):
    if not isinstance(item, str) or not item:
      raise ConfigError(f"{key}[{i}] must be a non-empty string, got {item!r}")
    if choices is not None and item not in choices:
      raise ConfigError(f"{key}[{i}] = {item!r} is not one of {', '.join(choices)}")
  if len(set(value)) != len(value):
    dup = next(v for v in value if list(value).count(v) > 1)
    raise ConfigError(f"{key} lists {dup!r} twice")
  return tuple(value)


def pair(value: Any, key: str) -> tuple[Any, Any]:
  if isinstance(value, str) or not isinstance(value, (tuple, list)) or len(value) != 2:
    raise ConfigError(f"{key} must be a pair (low, high), got {value!r}")
  return tuple(value)


def plain(value: Any) -> Any:
  """A config value as plain Python: sub-sections as dicts, lists (JSON's tuples) as tuples."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def keyword_arguments(value: Any, key: str, accepted: Sequence[str]) -> dict[str, Any]:
  """A section passed to a module as keyword arguments: a mapping whose keys it accepts."""
  if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
    raise ConfigError(f"{key} must be a section of keyword arguments, got {value!r}")
  kwargs = plain(value)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ConfigError(f"{key}.{unknown[0]} is not an option here (options: "
                      f"{', '.join(sorted(accepted))})")
  return kwargs
