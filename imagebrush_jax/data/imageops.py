"""Pixel-level image operations behind the global tasks (uint8 HxWx3 in, uint8 out).

They are pure numpy functions so that they apply to any RGB image, real photos included, and
to the rendered background of a synthetic scene. The geometric ones also come with the 2x2 matrix
that maps scene coordinates (x right, y down, both in [-1, 1]) the same way, which lets
`scenes.transform_geometry` move objects exactly as the pixels move.
"""
from typing import Callable

import numpy as np

ImageOp = Callable[[np.ndarray], np.ndarray]

# Rec. 601 luma weights in thousandths: integer arithmetic keeps grayscale exact and idempotent.
_LUMA_PER_MILLE = np.array([299, 587, 114], dtype=np.int32)


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
  """Returns `image` if it is uint8 HxWx3, else raises a ValueError naming `what`."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{what} must be a uint8 array of shape [H, W, 3], got {image.dtype} "
                     f"{image.shape}")
  return image


def hflip(image: np.ndarray) -> np.ndarray:
  """Mirrors left-right."""
  return np.ascontiguousarray(image[:, ::-1])


def vflip(image: np.ndarray) -> np.ndarray:
  """Mirrors top-bottom."""
  return np.ascontiguousarray(image[::-1])


def rot90(image: np.ndarray) -> np.ndarray:
  """Rotates 90 degrees counter-clockwise (as np.rot90); an HxW image becomes WxH."""
  return np.ascontiguousarray(np.rot90(image))


def invert(image: np.ndarray) -> np.ndarray:
  """Photographic negative: 255 - value."""
  return 255 - image


def grayscale(image: np.ndarray) -> np.ndarray:
  """Rec. 601 luma, rounded, copied to the three channels (so the shape is kept)."""
  luma = (image.astype(np.int32) @ _LUMA_PER_MILLE + 500) // 1000
  return np.repeat(luma.astype(np.uint8)[..., None], 3, axis=-1)


def swap_red_blue(image: np.ndarray) -> np.ndarray:
  """Exchanges the red and blue channels (RGB -> BGR)."""
  return np.ascontiguousarray(image[..., ::-1])


# Ops that move pixels, with the matrix M such that a point p of the input lands on M @ p.
GEOMETRIC_OPS: dict[str, tuple[ImageOp, tuple[int, int, int, int]]] = {
    "hflip": (hflip, (-1, 0, 0, 1)),
    "vflip": (vflip, (1, 0, 0, -1)),
    "rot90": (rot90, (0, 1, -1, 0)),  # (x, y) -> (y, -x): the right edge goes to the top.
}
# Ops that change colours pixel by pixel, independently of position.
COLOR_OPS: dict[str, ImageOp] = {
    "invert": invert,
    "grayscale": grayscale,
    "swap_red_blue": swap_red_blue,
}


def get_op(name: str) -> ImageOp:
  """The pixel function of a geometric or colour op, by name."""
  if name in GEOMETRIC_OPS:
    return GEOMETRIC_OPS[name][0]
  if name in COLOR_OPS:
    return COLOR_OPS[name]
  raise KeyError(f"unknown image op {name!r}; known: "
                 f"{', '.join(list(GEOMETRIC_OPS) + list(COLOR_OPS))}")
