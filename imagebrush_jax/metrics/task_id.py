"""Task-identification accuracy: is the generated I' closest to the true task's output?"""
from __future__ import annotations

import numpy as np


def candidate_distances(generated: np.ndarray, candidates: np.ndarray) -> np.ndarray:
  """generated uint8 [N, H, W, C], candidates [N, M, H, W, C] -> mean squared error [N, M]."""
  g = np.asarray(generated, np.float64)[:, None]
  return np.mean((g - np.asarray(candidates, np.float64)) ** 2, axis=(2, 3, 4))


def task_identification(generated: np.ndarray, candidates: np.ndarray,
                        true_index: np.ndarray) -> np.ndarray:
  """Per example: True when the generated image is at least as close (pixel MSE) to the true
  task's output as to every other candidate's. Tasks giving the same image as the true one tie
  with it, so they never count against it."""
  d = candidate_distances(generated, candidates)
  true_index = np.asarray(true_index)
  true_d = d[np.arange(d.shape[0]), true_index]
  return true_d <= d.min(axis=1)


def task_identification_accuracy(generated: np.ndarray, candidates: np.ndarray,
                                 true_index: np.ndarray) -> float:
  return float(np.mean(task_identification(generated, candidates, true_index)))


def chance_accuracy(candidates: np.ndarray, true_index: np.ndarray) -> np.ndarray:
  """Per example, the accuracy of a uniformly random pick among the distinct candidate
  images: (candidates equal to the true one) / (number of candidates)."""
  c = np.asarray(candidates)
  n, m = c.shape[:2]
  true = c[np.arange(n), np.asarray(true_index)][:, None]
  same = np.all(c.reshape(n, m, -1) == true.reshape(n, 1, -1), axis=-1)
  return same.sum(axis=1) / m
