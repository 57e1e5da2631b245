"""The trivial bound: product of spectral norms (times the activation's largest slope)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def naive_bound(weights: Sequence[np.ndarray], beta: float = 1.0) -> float:
    """prod_i ||W^i||_2 * beta^(number of hidden layers): sound for activations with slope in
    [0, beta], since each layer x -> phi(W x + b) is then (beta ||W||_2)-Lipschitz."""
    norms = [np.linalg.norm(np.asarray(w, dtype=np.float64), 2) for w in weights]
    return float(np.prod(norms) * beta ** (len(norms) - 1))
