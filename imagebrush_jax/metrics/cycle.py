"""The paper's cycle metrics of an exemplar editor (Sun et al. 2023, section 4):

  prompt fidelity = dist(E', edit(E | I -> I'))   applying the generated edit back to E
  image fidelity  = dist(I,  edit(I' | E' -> E))  undoing the edit with the reversed example

An editor is `edit(before [N, K, T, T, 3], after [N, K, T, T, 3], query [N, T, T, 3]) -> [N, T,
T, 3]` (uint8). With K > 1 example pairs, the prompt cycle uses (I, I') in place of the first
pair and edits E_1; the image cycle reverses every pair.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Editor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def prompt_cycle_inputs(before, after, query, generated):
  """(before, after, query, reference) for prompt fidelity."""
  b, a = np.array(before), np.array(after)
  e1, e1_after = b[:, 0].copy(), a[:, 0].copy()
  b[:, 0], a[:, 0] = query, generated
  return b, a, e1, e1_after


def image_cycle_inputs(before, after, query, generated):
  """(before, after, query, reference) for image fidelity."""
  return np.asarray(after), np.asarray(before), np.asarray(generated), np.asarray(query)


def cycle_metrics(edit: Editor, before: np.ndarray, after: np.ndarray, query: np.ndarray,
                  generated: np.ndarray, distance: Callable[[np.ndarray, np.ndarray], float]
                  ) -> dict[str, float]:
  """{'prompt_fidelity', 'image_fidelity'} of `generated` (= edit(I | E -> E'))."""
  b, a, q, ref = prompt_cycle_inputs(before, after, query, generated)
  prompt = distance(ref, edit(b, a, q))
  b, a, q, ref = image_cycle_inputs(before, after, query, generated)
  image = distance(ref, edit(b, a, q))
  return {"prompt_fidelity": float(prompt), "image_fidelity": float(image)}
