"""Lesson 3: LipSDP with a coupled multiplier (LipSDP-Network) certifies constants below the
truth."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize_scalar

from .. import counterexample as cx
from ..estimators.lipsdp import exact_L2

COUPLING_MAX = 0.99      # at c = 1 the LMI holds for every L > 0 (its hidden block is singular)


def coupled_bound(coupling: float) -> float:
    """The least L the LMI (5) certifies for the counterexample net with
    T = tau ((1 - c) I + c (e1 - e2)(e1 - e2)^T), minimised over tau > 0: c = 0 is a diagonal
    (sound) multiplier, c = 1 the coupled one of Pauli et al. Section II-C."""
    if not 0.0 <= coupling <= COUPLING_MAX:
        raise ValueError(f"coupling must be in [0, {COUPLING_MAX}], got {coupling}")
    T = (1.0 - coupling) * np.eye(2) + coupling * cx.T_COUPLED
    weights = [cx.W0, cx.W1]

    def L2(log_tau: float) -> float:
        value = exact_L2(weights, np.exp(log_tau) * T, 0.0, 1.0)
        return value if np.isfinite(value) else 1e6
    best = minimize_scalar(L2, bounds=(-12.0, 12.0), method="bounded", options=dict(xatol=1e-6))
    return float(np.sqrt(max(best.fun, 0.0)))


@functools.lru_cache(maxsize=1)
def true_constant() -> float:
    return cx.exact_lipschitz()[0]


def draw_counterexample(ax: plt.Axes, coupling: float = 0.0) -> dict[str, float]:
    """The LMI's certified L against the coupling, with the net's true Lipschitz constant."""
    grid = np.linspace(0.0, COUPLING_MAX, 34)
    curve = [coupled_bound(c) for c in grid]
    here = coupled_bound(coupling)
    ax.clear()
    ax.plot(grid, curve, "b-", label="least L the LMI (5) accepts")
    ax.axhline(true_constant(), color="k", ls="--", label=f"true constant {true_constant():.3f}")
    ax.plot([coupling], [here], "ro", ms=8)
    ax.set(xlabel="coupling c (0: diagonal T, 1: T = (e1 - e2)(e1 - e2)^T)", ylabel="L",
           title=f"c = {coupling:.2f}: the LMI certifies L = {here:.3g}\n"
                 + ("below the truth: unsound" if here < true_constant() else "above the truth"))
    ax.legend(fontsize=8)
    return dict(bound=here, true=true_constant(), unsound=here < true_constant())
