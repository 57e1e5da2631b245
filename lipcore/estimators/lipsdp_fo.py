"""LipSDP-neuron and -layer by first-order optimisation over T, with an exact bound at every T.

Read beside :mod:`lipcore.estimators.lipsdp` (Pauli et al. 2021, eq. (5)). For a fixed diagonal
T >= 0 write P(0, T) = [[C, D], [D^T, H]], split into the input block x^0 and the hidden block
(x^1, ..., x^l). If H < 0, the least L^2 with P(L^2, T) <= 0 is exactly

    g(T) = lambda_max(S(T)),   S(T) = C - D H^{-1} D^T                  (Schur complement)

so **every** such T gives a sound bound, and minimising g over T only tightens it. g is convex
(its epigraph {(T, s): P(s, T) <= 0} is an LMI) and its gradient comes from the eigenvectors of
S alone: for a unit eigenvector u of S, z = (u, -H^{-1} D^T u) satisfies z^T P(0, T) z = u^T S u,
and since P is linear in T (envelope theorem)

    d lambda / d t_i = z^T (dP / dt_i) z = -2 (b_i - alpha a_i)(b_i - beta a_i),

with a = the pre-activations W^{k-1} x^{k-1} and b = x^k of z at neuron i (eq. (5)'s quadratic
constraint). lambda_max is not smooth where it is multiple, so the solver minimises the smooth
maximum tau * log sum_j exp(lambda_j / tau), lowering tau as it goes, with L-BFGS directions and
a backtracking line search that never leaves {H < 0}. It works on log T (T stays positive) and
on the balanced, input-reduced weights, starting from the compositional multipliers
(:mod:`lipcore.estimators.compositional`). Every value and gradient uses the block-tridiagonal
recursion of :mod:`lipcore.estimators.chain` (cost linear in depth). The best T found is mapped
back and certified in float64 on the full LMI by :func:`lipcore.estimators.lipsdp.certified_L2`,
so the returned bound never relies on the optimiser having converged: a time budget that stops it
early gives a looser, still sound, bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from ..progress import bar
from .chain import ChainLMI
from .lipsdp import small_lmi_threads


@dataclass
class FirstOrderTrace:
    """How the optimiser went: the exact g(T) after each accepted step, the least of them (that
    of the returned T), and why it stopped."""

    values: list[float]
    best: float
    iterations: int
    stopped: str          # "converged", "budget" or "max_iterations"
    seconds: float


def _smooth_max(lam: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
    """tau * log sum exp(lam / tau) and its weights softmax(lam / tau)."""
    tau = max(tau, 1e-300)                  # g = 0 (an all-zero net): the plain maximum
    shifted = (lam - lam[-1]) / tau
    w = np.exp(shifted)
    total = w.sum()
    return float(lam[-1] + tau * np.log(total)), w / total


# A smoothing level ends when g improved by less than tol over this many accepted steps.
STALL_WINDOW = 10
# Eigenvalues more than SMOOTH_CUTOFF * tau below the largest weigh < exp(-23) ~ 1e-10 in the
# smoothed maximum: they change neither its value (relatively) nor its gradient measurably.
SMOOTH_CUTOFF = 23.0


def top_eigenpairs(S: np.ndarray, tau: float, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of S within SMOOTH_CUTOFF * tau of the largest (ascending): the top k by
    LAPACK's MRRR driver, doubling k until the smallest found lies below that window (the full
    eigendecomposition of a wide net's S costs several times more)."""
    n = len(S)
    while k < n:
        lam, U = scipy.linalg.eigh(S, subset_by_index=[n - k, n - 1], driver="evr",
                                   check_finite=False)
        if lam[0] < lam[-1] - SMOOTH_CUTOFF * tau:
            return lam, U
        k *= 2
    return np.linalg.eigh(S)


def minimise_T(weights: Sequence[np.ndarray], alpha: float, beta: float, coupling: str,
               t0: np.ndarray, time_budget: float = 60.0, tol: float = 1e-4,
               max_iterations: int = 20000, memory: int = 10, progress: bool | None = None
               ) -> tuple[np.ndarray, FirstOrderTrace]:
    """Minimise g over diagonal T >= 0 ("neuron": one t per neuron, "layer": one per layer) by
    smoothed L-BFGS on log t (module docstring), from the feasible start ``t0`` (T's diagonal;
    equal within each layer for "layer"). Returns the best t found (by the exact g) and a trace.
    Stops when g improved by less than ``tol`` (relative) over STALL_WINDOW accepted steps at the
    finest smoothing, after ``time_budget`` seconds, or after ``max_iterations`` steps."""
    start = time.perf_counter()
    lmi = ChainLMI(weights, alpha, beta)
    if coupling == "layer":                            # one log t per layer
        starts = lmi.offsets[:-1]
        expand = lambda v: np.repeat(v, lmi.sizes)                          # noqa: E731
        collapse = lambda g: np.add.reduceat(g, starts)                     # noqa: E731
        s = np.log(t0[starts])
    else:
        expand = collapse = lambda v: v                                     # noqa: E731
        s = np.log(t0)

    def evaluate(s_, tau):
        with np.errstate(over="ignore"):               # a trial step may overflow: H test fails
            t_ = expand(np.exp(s_))
        out = lmi.schur(t_)
        if out is None:
            return None
        S, factors = out
        try:
            lam, U = top_eigenpairs(S, tau)
        except np.linalg.LinAlgError:
            return None
        value, w = _smooth_max(lam, tau)
        keep = w > 1e-10 * w.max()
        grad_t = lmi.neuron_gradients(lmi.chain(t_, factors, U[:, keep])) @ w[keep]
        return value, collapse(grad_t * t_), max(float(lam[-1]), 0.0)

    with small_lmi_threads(lmi.n):
        best_s, trace = _minimise(evaluate, lmi.value(t0), s, start, time_budget, tol,
                                  max_iterations, memory, coupling, progress)
    return expand(np.exp(best_s)), trace


def _minimise(evaluate, g0: float, s: np.ndarray, start: float, time_budget: float, tol: float,
              max_iterations: int, memory: int, coupling: str, progress: bool | None
              ) -> tuple[np.ndarray, FirstOrderTrace]:
    """The smoothed L-BFGS loop of :func:`minimise_T` over log t."""
    tau_rel, tau_min = 1e-2, 1e-5
    current = evaluate(s, tau_rel * g0)
    best_s, best_g, values = s.copy(), current[2], [current[2]]
    window_start = 0                    # the stall test looks at values since the last sharpening
    S_hist, Y_hist = [], []
    stopped, iterations = "max_iterations", 0
    with bar(max_iterations, f"LipSDP-{coupling} (first order)", show=progress, delay=2.0) as pbar:
        for iterations in range(1, max_iterations + 1):
            if time.perf_counter() - start > time_budget:
                stopped = "budget"
                break
            tau = max(tau_rel, tau_min) * best_g
            f, grad, _ = current
            direction = -_lbfgs_direction(grad, S_hist, Y_hist)
            if direction @ grad >= 0:                       # not a descent direction: restart
                S_hist, Y_hist, direction = [], [], -grad / max(np.abs(grad).max(), 1e-300)
            step, accepted = 1.0, None
            for _ in range(40):                             # Armijo backtracking inside H < 0
                trial = evaluate(s + step * direction, tau)
                if trial is not None and trial[0] <= f + 1e-4 * step * (direction @ grad):
                    accepted = trial
                    break
                step *= 0.5
            stalled = accepted is None                      # no progress at this smoothing
            if accepted is not None:
                s_new = s + step * direction
                S_hist.append(s_new - s)
                Y_hist.append(accepted[1] - grad)
                S_hist, Y_hist = S_hist[-memory:], Y_hist[-memory:]
                s, current = s_new, accepted
                values.append(accepted[2])
                if accepted[2] < best_g:
                    best_s, best_g = s.copy(), accepted[2]
                pbar.update(1)
                pbar.set_postfix(L=f"{np.sqrt(best_g):.5g}")
                # smoothing bias is about tau log(n): once progress stalls, sharpen it
                window = values[window_start:][-STALL_WINDOW:]
                stalled = (len(window) == STALL_WINDOW
                           and window[0] - min(window) <= tol * abs(window[0]))
                if stalled:
                    window_start = len(values) - 1
            if stalled:
                if tau_rel <= tau_min:
                    stopped = "converged"
                    break
                tau_rel /= 10.0
                S_hist, Y_hist = [], []
                current = evaluate(s, max(tau_rel, tau_min) * best_g)
    return best_s, FirstOrderTrace(values=values, best=best_g, iterations=iterations,
                                   stopped=stopped, seconds=time.perf_counter() - start)


def _lbfgs_direction(grad: np.ndarray, S_hist: list, Y_hist: list) -> np.ndarray:
    """H_k grad by the two-loop recursion (Nocedal & Wright, Algorithm 7.4)."""
    q, rhos, alphas = grad.copy(), [], []
    pairs = [(s, y) for s, y in zip(S_hist, Y_hist) if s @ y > 1e-12 * np.linalg.norm(s) *
             np.linalg.norm(y)]
    for s, y in reversed(pairs):
        rho = 1.0 / (y @ s)
        a = rho * (s @ q)
        q -= a * y
        rhos.append(rho)
        alphas.append(a)
    if pairs:
        s, y = pairs[-1]
        q *= (s @ y) / (y @ y)
    else:
        q /= max(np.abs(grad).max(), 1e-300)
    for (s, y), rho, a in zip(pairs, reversed(rhos), reversed(alphas)):
        q += s * (a - rho * (y @ q))
    return q
