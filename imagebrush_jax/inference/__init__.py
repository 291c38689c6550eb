"""Inference helpers: image loading (any mode, size, orientation) and manifest parsing."""
