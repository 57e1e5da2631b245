"""The compositional closed-form bound (ECLipsE-Fast, Xu & Sivaranjani, NeurIPS 2024), certified.

Read beside :mod:`lipcore.estimators.chain`. With layer multipliers T_k = L^2 lambda_k I, divide
Q = -P(L^2, T) by L^2 and eliminate forward from the input block (block LDL^T):

    M_0 = I,  M_k = 2 lambda_k I - c^2 lambda_k^2 W^{k-1} M_{k-1}^{-1} W^{k-1}^T,  c = alpha + beta

(the PSD terms 2 alpha beta W^T T W are dropped: that only shrinks Q, so it stays sound). Q >= 0,
hence Theorem 1, holds as soon as every M_k > 0 and M_l >= W^l^T W^l / L^2. The closed form
chooses each lambda_k to maximise the smallest eigenvalue of M_k, 2 lambda - c^2 lambda^2 sigma_k
with sigma_k = lambda_max(W^{k-1} M_{k-1}^{-1} W^{k-1}^T), i.e. lambda_k = 1 / (c^2 sigma_k), and
then

    L^2 = lambda_max(W^l M_l^{-1} W^l^T)                     (ECLipsE-Fast's value)

The recursion is kept in scale-free form (M_k = lambda_k N_k, N_k = 2 I - G_k / sigma_k has its
eigenvalues in [1, 2]) so that deep nets neither overflow nor underflow.

lipcore then searches the common scale s of T = s T_fast (g(s T) is convex in s: its epigraph is
the LMI) and returns the exact least L^2 of the best T, certified on the full LMI in float64
(:func:`lipcore.estimators.chain.lmi_holds`). s = 1 reproduces ECLipsE-Fast's LMI, so the
returned bound is never above ECLipsE-Fast's value (up to the stated float allowance).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from .chain import (ChainLMI, LipSDPError, balance, check_weights, lmi_holds,
                    reduce_input_layer)

# Relative back-offs of L^2 tried until the float64 certificate holds (chain.float_allowance is
# below 1e-8 up to blocks of 3,000 rows).
BACKOFFS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)
# At an optimum the hidden block H is often singular up to rounding (the layer bound of the
# counterexample net; the compositional start of a 100-deep net, where no back-off of L^2 helps).
# Scaling T by c > 1 adds (c - 1) W^l^T W^l to -P's last block (-P(L^2, cT) = c (-P(L^2/c, T))
# + (c - 1) blkdiag(0, ..., W^l^T W^l)), which moves such directions strictly inside.
T_SCALINGS = (1.0, 1 + 1e-9, 1 + 1e-8, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3)
GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass
class CompositionalResult:
    """Outcome of :func:`compositional_bound`. ``bound`` is certified; ``t`` is the diagonal of
    the certified multiplier T (every neuron of a layer shares one value); ``fast_bound`` is the
    closed form's own value before the scale search."""

    bound: float
    L2: float
    t: np.ndarray
    fast_bound: float
    seconds: float


def _top_eig(S: np.ndarray) -> float:
    n = len(S)
    return float(scipy.linalg.eigh((S + S.T) / 2.0, eigvals_only=True,
                                   subset_by_index=[n - 1, n - 1], check_finite=False)[0])


def closed_form(weights: Sequence[np.ndarray], alpha: float = 0.0, beta: float = 1.0
                ) -> tuple[float, np.ndarray]:
    """ECLipsE-Fast's recursion (module doc): returns (L^2, log lambda_k per hidden layer), with
    T_k = L^2 lambda_k I the multipliers. Raises ValueError when a layer maps everything to 0."""
    W = [np.asarray(w, dtype=np.float64) for w in weights]
    c2 = (alpha + beta) ** 2
    N = np.eye(W[0].shape[1])
    log_lam, log_total = [], 0.0
    for k in range(len(W) - 1):
        Nf = scipy.linalg.cho_factor(N, lower=True, check_finite=False)
        G = W[k] @ scipy.linalg.cho_solve(Nf, W[k].T, check_finite=False)     # W N^{-1} W^T
        sigma = _top_eig(G)
        if not sigma > 0.0:
            raise ValueError(f"W^{k} maps every input to 0; the net is constant (bound 0)")
        log_total -= np.log(c2 * sigma)          # lambda_{k+1} = lambda_k / (c^2 sigma')
        log_lam.append(log_total)
        N = 2.0 * np.eye(len(G)) - G / sigma
    Nf = scipy.linalg.cho_factor(N, lower=True, check_finite=False)
    top = _top_eig(W[-1] @ scipy.linalg.cho_solve(Nf, W[-1].T, check_finite=False))
    L2 = top * np.exp(-log_total)       # lambda_max(W^l M_l^{-1} W^l^T), M_l = lambda_l N_l
    return float(L2), np.array(log_lam)


def certify_t(weights: Sequence[np.ndarray], t: np.ndarray, alpha: float, beta: float
              ) -> tuple[float, np.ndarray] | None:
    """(L^2, t') with P(L^2, diag(t')) < 0 proven in float64 on the full LMI, or None.

    For c in T_SCALINGS (T itself first) the exact least L^2 of c T (on the input-reduced
    weights), backed off by b in BACKOFFS until :func:`lmi_holds` proves it."""
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    lmi = ChainLMI([reduce_input_layer(weights[0]), *weights[1:]], alpha, beta)
    for c in T_SCALINGS:
        L2 = lmi.value(c * t)
        if not (np.isfinite(L2) and L2 > 0):
            continue
        for b in BACKOFFS:
            if lmi_holds(weights, c * t, L2 * (1.0 + b), alpha, beta):
                return L2 * (1.0 + b), c * t
    return None


def best_scale(lmi: ChainLMI, t: np.ndarray, iterations: int = 24) -> tuple[float, float]:
    """min over s > 0 of g(s t) (g: the exact L^2 of :class:`ChainLMI`) by golden section on
    log s after bracketing (g(s t) is convex in s, so unimodal in log s; g = inf where H is not
    < 0, which happens only for small s), until two inner points agree to 1e-6 (relative).
    Returns (s, g(s t)), the best point evaluated."""
    seen: dict[float, float] = {}

    def g(x: float) -> float:
        if x not in seen:
            seen[x] = lmi.value(np.exp(x) * t)
        return seen[x]

    step = 0.5
    direction = 1.0 if g(step) < g(0.0) or not np.isfinite(g(0.0)) else -1.0
    prev, cur = 0.0 - direction * step, 0.0
    if direction < 0 and not g(-step) < g(0.0):
        a, b = -step, step                            # 0 is already bracketed
    else:
        while abs(cur) < 80.0:
            nxt = cur + direction * step
            if g(nxt) >= g(cur) and np.isfinite(g(cur)):
                break
            prev, cur, step = cur, nxt, 2.0 * step
        a, b = sorted((prev, cur + direction * step))
    x1, x2 = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    for _ in range(iterations):
        if abs(g(x1) - g(x2)) <= 1e-6 * min(g(x1), g(x2)):     # flat to 1e-6: done
            break
        if g(x1) <= g(x2):
            b, x2 = x2, x1
            x1 = b - GOLDEN * (b - a)
        else:
            a, x1 = x1, x2
            x2 = a + GOLDEN * (b - a)
    value, x = min((v, k) for k, v in seen.items())
    return float(np.exp(x)), float(value)


def start_multipliers(balanced: Sequence[np.ndarray], alpha: float, beta: float
                      ) -> tuple[np.ndarray, float, float]:
    """(t, g(T), ECLipsE-Fast's L^2) for balanced, input-reduced weights: the closed form's
    multipliers at their best common scale, and the exact L^2 of that T (not yet certified)."""
    sizes = [w.shape[0] for w in balanced[:-1]]
    L2_fast, log_lam = closed_form(balanced, alpha, beta)
    t = np.exp(np.log(L2_fast) + np.repeat(log_lam, sizes))
    s, L2 = best_scale(ChainLMI(balanced, alpha, beta), t)
    return s * t, L2, L2_fast


def compositional_bound(weights: Sequence[np.ndarray], alpha: float = 0.0, beta: float = 1.0
                        ) -> CompositionalResult:
    """Certified l2 Lipschitz bound from ECLipsE-Fast's multipliers with their best common scale.

    ``weights``: W^0..W^l (W^i of shape n_{i+1} x n_i); ``alpha``, ``beta``: the activation's
    slope bounds, 0 <= alpha < beta. Never above ECLipsE-Fast's value; cost O(sum_k n_k^3), linear
    in depth. Raises :class:`LipSDPError` if the float64 certificate fails (it names what to use
    instead)."""
    start = time.perf_counter()
    weights = check_weights(weights, alpha, beta)
    if any(not np.any(w) for w in weights):           # a zero layer: f is constant
        return CompositionalResult(0.0, 0.0, np.ones(sum(w.shape[0] for w in weights[:-1])),
                                   0.0, time.perf_counter() - start)
    balanced, to_original = balance([reduce_input_layer(weights[0]), *weights[1:]])
    try:
        t, L2, L2_fast = start_multipliers(balanced, alpha, beta)
    except np.linalg.LinAlgError as exc:
        raise LipSDPError(f"the compositional recursion failed in float64 ({exc}); use "
                          f"naive_bound(weights, beta), which is always sound") from exc
    certified = certify_t(weights, to_original(L2, t)[1], alpha, beta)
    if certified is None:
        raise LipSDPError(
            "the compositional multipliers could not be certified in float64 (the LMI is "
            "feasible only up to rounding: weights of extreme or mixed scales?); use "
            "naive_bound(weights, beta), the product of spectral norms, which is always sound")
    L2, t = certified
    return CompositionalResult(float(np.sqrt(L2)), float(L2), t,
                               float(np.sqrt(to_original(L2_fast, t)[0])),
                               time.perf_counter() - start)
