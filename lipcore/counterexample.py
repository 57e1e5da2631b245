"""Pauli et al. (2021), Section II-C: LipSDP with coupled multipliers T_n is unsound.

The 1-2-1 tanh net below fits cos on [-pi/2, pi/2], so its Lipschitz constant is about 1, yet
the LMI (5) holds for every L > 0 at T = (e1 - e2)(e1 - e2)^T in T_n. The reason: Lemma 1 of
Fazlyab et al. (the incremental quadratic constraint (4) for every T in T_n) is false.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from .estimators.lipsdp import lmi_max_eig
from .models import FullyConnected, from_weights

W0 = np.array([[-1.0], [-1.0]])
B0 = np.array([-1.0, 1.0])
W1 = np.array([[-1.0, 1.0]])
B1 = np.array([-0.5])
T_COUPLED = np.array([[1.0, -1.0], [-1.0, 1.0]])        # (e1 - e2)(e1 - e2)^T, a member of T_n


def paper_network() -> FullyConnected:
    """The 1-2-1 tanh net of Section II-C: W0 = [-1; -1], b0 = [-1; 1], W1 = [-1, 1], b1 = -0.5."""
    return from_weights([W0, W1], [B0, B1], "tanh")


def net_value(x: np.ndarray) -> np.ndarray:
    """f(x) = W1 tanh(W0 x + b0) + b1 for scalar inputs x (vectorised)."""
    x = np.asarray(x, dtype=np.float64)
    return (np.tanh(np.multiply.outer(x, W0[:, 0]) + B0) @ W1[0]) + B1[0]


def net_slope(x: np.ndarray) -> np.ndarray:
    """f'(x) = sum_j W1_j W0_j sech^2(W0_j x + b0_j) = sech^2(x + 1) - sech^2(x - 1)."""
    x = np.asarray(x, dtype=np.float64)
    return (1.0 - np.tanh(np.multiply.outer(x, W0[:, 0]) + B0) ** 2) @ (W1[0] * W0[:, 0])


def max_fit_deviation(n_grid: int = 100_001) -> tuple[float, float]:
    """max |f(x) - cos(x)| over x in [-pi/2, pi/2] on a fine grid, then refined locally;
    returns (deviation, argmax)."""
    x = np.linspace(-np.pi / 2, np.pi / 2, n_grid)
    gap = np.abs(net_value(x) - np.cos(x))
    i = int(gap.argmax())
    h = np.pi / (n_grid - 1)
    res = minimize_scalar(lambda t: -abs(net_value(t) - np.cos(t)),
                          bounds=(max(x[i] - h, -np.pi / 2), min(x[i] + h, np.pi / 2)),
                          method="bounded", options={"xatol": 1e-12})
    return max(float(-res.fun), float(gap[i])), float(res.x)


def exact_lipschitz(n_grid: int = 200_001, half_width: float = 10.0) -> tuple[float, float]:
    """The exact Lipschitz constant of the 1-D net, max_x |f'(x)|: a grid over
    [-half_width, half_width] (f' decays like e^{-2|x|} outside) refined by a bounded search.
    Returns (constant, argmax)."""
    x = np.linspace(-half_width, half_width, n_grid)
    i = int(np.abs(net_slope(x)).argmax())
    h = 2 * half_width / (n_grid - 1)
    res = minimize_scalar(lambda t: -abs(net_slope(t)), bounds=(x[i] - h, x[i] + h),
                          method="bounded", options={"xatol": 1e-12})
    return float(-res.fun), float(res.x)


def coupled_lmi_sweep(L_values: np.ndarray, T: np.ndarray = T_COUPLED) -> np.ndarray:
    """Largest eigenvalue of P(L^2, T) (eq. (5)) for each L at the coupled T: <= 0 means the
    LMI 'certifies' L, which for L < 1 is false."""
    weights = [W0, W1]
    return np.array([lmi_max_eig(weights, T, float(L) ** 2, 0.0, 1.0) for L in L_values])


def relu(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0.0)


def quadratic_form(x: np.ndarray, y: np.ndarray, T: np.ndarray = T_COUPLED,
                   alpha: float = 0.0, beta: float = 1.0,
                   phi: Callable[[np.ndarray], np.ndarray] = relu) -> np.ndarray:
    """The incremental quadratic form of eq. (4) for pairs x, y (shape (..., n)):

        [x - y; phi(x) - phi(y)]^T [[-2 alpha beta T, (alpha+beta) T], [(alpha+beta) T, -2T]] [...]

    Lemma 1 of Fazlyab et al. claims it is >= 0 for every T in T_n; with ReLU and
    T = (e1 - e2)(e1 - e2)^T it is -2 at x = (0, 1), y = (-1, 0).
    """
    dx = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    dphi = phi(np.asarray(x, dtype=np.float64)) - phi(np.asarray(y, dtype=np.float64))
    Tdx, Tdphi = dx @ T, dphi @ T                          # T is symmetric
    return (-2 * alpha * beta * np.sum(Tdx * dx, axis=-1)
            + 2 * (alpha + beta) * np.sum(Tdx * dphi, axis=-1)
            - 2 * np.sum(Tdphi * dphi, axis=-1))


def negative_pairs(n_samples: int, scale: float = 2.0, seed: int = 0,
                   T: np.ndarray = T_COUPLED) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Random search for violations of (4): x, y ~ U[-scale, scale]^2. Returns the fraction of
    pairs with a negative form, the most negative value, and that pair (x, y)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-scale, scale, (n_samples, 2))
    y = rng.uniform(-scale, scale, (n_samples, 2))
    q = quadratic_form(x, y, T)
    i = int(q.argmin())
    return float(np.mean(q < 0)), float(q[i]), x[i], y[i]
