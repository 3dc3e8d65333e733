"""Rows as points on the unit sphere: the zero-safe normalisation that retrieval and the
transforms share (its own module so that neither imports the other for it)."""
from __future__ import annotations

import numpy as np

EPS = 1e-12  # smallest norm divided by: an all-zero row stays zero instead of turning NaN


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (no NaN)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)
