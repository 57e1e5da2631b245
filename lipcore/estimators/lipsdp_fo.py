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
on the balanced, input-reduced weights; the best T found is mapped back and certified exactly in
float64 on the full LMI by :func:`lipcore.estimators.lipsdp.certified_L2`, so the returned bound
never relies on the optimiser having converged: a time budget that stops it early gives a looser,
still sound, bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from ..progress import bar
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


def _layer_sizes(weights: Sequence[np.ndarray]) -> list[int]:
    return [w.shape[0] for w in weights[:-1]]


class SchurLMI:
    """g(T) = lambda_max(C - D H^{-1} D^T) and its gradient for LipSDP with diagonal T.

    ``weights`` are W^0..W^l (numpy, float64). The blocks are assembled directly from the
    weights: H is block tridiagonal over the hidden layers and D couples x^0 to x^1 only."""

    def __init__(self, weights: Sequence[np.ndarray], alpha: float, beta: float):
        self.W = [np.asarray(w, dtype=np.float64) for w in weights]
        self.alpha, self.beta = alpha, beta
        self.sizes = _layer_sizes(self.W)
        self.offsets = np.cumsum([0] + self.sizes)
        self.n0, self.n = self.W[0].shape[1], int(self.offsets[-1])
        self.last_gram = self.W[-1].T @ self.W[-1]

    def blocks(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C, D, H) of P(0, T) for T = diag(t), eq. (5)."""
        a, b, W, o = self.alpha, self.beta, self.W, self.offsets
        H = np.zeros((self.n, self.n))
        for k, size in enumerate(self.sizes):          # hidden layer k + 1: x^{k+1} = phi(W^k x^k)
            tk = t[o[k]:o[k + 1]]
            rows = slice(o[k], o[k + 1])
            H[rows, rows] -= 2.0 * np.diag(tk)                              # -2 T (B^T T B)
            if k == 0:
                continue
            prev = slice(o[k - 1], o[k])                                    # x^k feeds layer k+1
            Wt = W[k].T * tk                                                # W^k^T T_{k+1}
            if a * b != 0.0:
                H[prev, prev] -= 2.0 * a * b * (Wt @ W[k])                   # A^T T A
            H[prev, rows] += (a + b) * Wt                                   # A^T T B
            H[rows, prev] += (a + b) * Wt.T
        H[o[-2]:, o[-2]:] += self.last_gram                                 # W^l^T W^l
        t1 = t[:self.sizes[0]]
        Wt0 = W[0].T * t1
        C = -2.0 * a * b * (Wt0 @ W[0]) if a * b != 0.0 else np.zeros((self.n0, self.n0))
        D = np.zeros((self.n0, self.n))
        D[:, :self.sizes[0]] = (a + b) * Wt0
        return C, D, H

    def spectrum(self, t: np.ndarray):
        """(eigenvalues, eigenvectors of S, the matrix -H^{-1} D^T) or None if H is not < 0."""
        C, D, H = self.blocks(t)
        try:
            factor = scipy.linalg.cho_factor(-H, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        V = scipy.linalg.cho_solve(factor, D.T, check_finite=False)       # -H^{-1} D^T
        S = C + D @ V
        lam, U = np.linalg.eigh((S + S.T) / 2.0)
        return lam, U, V

    def value(self, t: np.ndarray) -> float:
        """g(T): the exact least L^2 for this T (inf outside {H < 0})."""
        spec = self.spectrum(t)
        return np.inf if spec is None else max(float(spec[0][-1]), 0.0)

    def neuron_gradients(self, U: np.ndarray, V: np.ndarray) -> np.ndarray:
        """d lambda_j / d t_i for the eigenvectors U[:, j] (neurons x vectors)."""
        x = [U] + [V[self.offsets[k]:self.offsets[k + 1]] for k in range(len(self.sizes))]
        pre = np.concatenate([self.W[k] @ x[k] for k in range(len(self.sizes))])   # a = A z
        post = np.concatenate(x[1:])                                                # b = B z
        return -2.0 * (post - self.alpha * pre) * (post - self.beta * pre)


def _smooth_max(lam: np.ndarray, tau: float) -> tuple[float, np.ndarray]:
    """tau * log sum exp(lam / tau) and its weights softmax(lam / tau)."""
    tau = max(tau, 1e-300)                  # g = 0 (an all-zero net): the plain maximum
    shifted = (lam - lam[-1]) / tau
    w = np.exp(shifted)
    total = w.sum()
    return float(lam[-1] + tau * np.log(total)), w / total


def feasible_start(lmi: SchurLMI, layer_of: np.ndarray) -> np.ndarray:
    """A T = diag(c theta^k) (layer k) with H < 0, for balanced weights (every ||W^k|| = 1):
    theta in (1, 4) makes each consecutive 2x2 block negative definite; c covers W^l^T W^l."""
    for theta in (2.0, 1.5, 3.0, 1.2, 3.5):
        for c in (1.0, 2.0, 4.0, 8.0, 32.0, 256.0):
            t = c * theta ** layer_of.astype(np.float64)
            if lmi.spectrum(t) is not None:
                return t
    raise RuntimeError("no starting T with a negative definite hidden block was found; "
                       "are the weights finite?")


def minimise_T(weights: Sequence[np.ndarray], alpha: float, beta: float, coupling: str,
               time_budget: float = 60.0, tol: float = 1e-4, max_iterations: int = 2000,
               memory: int = 10, progress: bool | None = None
               ) -> tuple[np.ndarray, FirstOrderTrace]:
    """Minimise g over diagonal T >= 0 ("neuron": one t per neuron, "layer": one per layer) by
    smoothed L-BFGS on log t (module docstring). Returns the best T found (by the exact g) and a
    trace. Stops when g improved by less than ``tol`` (relative) over 25 accepted steps at the
    finest smoothing, after ``time_budget`` seconds, or after ``max_iterations`` steps."""
    start = time.perf_counter()
    lmi = SchurLMI(weights, alpha, beta)
    layer_of = np.concatenate([np.full(s, k) for k, s in enumerate(lmi.sizes)])
    if coupling == "layer":
        expand = np.eye(len(lmi.sizes))[layer_of]            # neurons x layers
    else:
        expand = np.eye(lmi.n)
    t0 = feasible_start(lmi, layer_of)
    s = np.log(np.linalg.lstsq(expand, t0, rcond=None)[0])

    def evaluate(s_, tau):
        t_ = expand @ np.exp(s_)
        spec = lmi.spectrum(t_)
        if spec is None:
            return None
        lam, U, V = spec
        value, w = _smooth_max(lam, tau)
        keep = w > 1e-10 * w.max()
        grad_t = lmi.neuron_gradients(U[:, keep], V @ U[:, keep]) @ w[keep]
        return value, (expand.T @ grad_t) * np.exp(s_), max(float(lam[-1]), 0.0)

    with small_lmi_threads(lmi.n):
        best_s, trace = _minimise(evaluate, lmi.value(t0), s, start, time_budget, tol,
                                  max_iterations, memory, coupling, progress)
    return np.diag(expand @ np.exp(best_s)), trace


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
                window = values[window_start:][-25:]
                stalled = len(window) == 25 and window[0] - min(window) <= tol * abs(window[0])
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
