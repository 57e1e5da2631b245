"""Lesson 3: LipSDP with a coupled multiplier (LipSDP-Network) certifies constants below the
truth. For Pauli et al.'s 1-2-1 tanh net the coupled T makes the LMI block diagonal, so it holds
for every L once tau >= 1/2."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize_scalar

from .. import counterexample as cx
from ..estimators.lipsdp import exact_L2

COUPLING_MAX = 0.99      # at c = 1 the LMI holds for every L > 0 (its hidden block is singular)
TAUS = np.logspace(-1, 3, 121)


def multiplier(coupling: float) -> np.ndarray:
    """T / tau = (1 - c) I + c (e1 - e2)(e1 - e2)^T: c = 0 is diagonal (sound), c = 1 the
    coupled multiplier of Pauli et al. Section II-C."""
    if not 0.0 <= coupling <= COUPLING_MAX:
        raise ValueError(f"coupling must be in [0, {COUPLING_MAX}], got {coupling}")
    return (1.0 - coupling) * np.eye(2) + coupling * cx.T_COUPLED


def least_L(coupling: float, tau: float) -> float:
    """The least L the LMI (5) accepts for the counterexample net at T = tau * multiplier(c):
    sqrt(tau (1 - c)) for tau > 1 / (1 + c), inf where the hidden block is not negative definite
    (below that no L is accepted; exactly at tau = 1 / (1 + c) the block is singular along a
    direction the LMI's off-diagonal block misses, and L = sqrt(tau (1 - c)) still is)."""
    return float(np.sqrt(exact_L2([cx.W0, cx.W1], tau * multiplier(coupling), 0.0, 1.0)))


def coupled_bound(coupling: float) -> float:
    """The least L the LMI (5) certifies at coupling c, minimised over tau > 0 numerically
    (the closed form, which lesson 3 derives and the tests check, is sqrt((1 - c) / (1 + c)))."""
    multiplier(coupling)                                   # validates c
    best = minimize_scalar(lambda log_tau: min(least_L(coupling, np.exp(log_tau)), 1e3),
                           bounds=(-12.0, 12.0), method="bounded", options=dict(xatol=1e-6))
    return float(best.fun)


@functools.lru_cache(maxsize=1)
def true_constant() -> float:
    return cx.exact_lipschitz()[0]


def draw_counterexample(ax: plt.Axes, coupling: float = 0.0) -> dict[str, float]:
    """Left: the least L the LMI accepts (minimised over tau) against the coupling c, with the
    net's true Lipschitz constant. Right: at the chosen c, the least L against tau."""
    grid = np.linspace(0.0, COUPLING_MAX, 34)
    curve = [coupled_bound(c) for c in grid]
    here = coupled_bound(coupling)
    per_tau = np.array([least_L(coupling, t) for t in TAUS])
    true = true_constant()
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")
    left, right = ax.inset_axes((0.0, 0.0, 0.44, 0.78)), ax.inset_axes((0.56, 0.0, 0.44, 0.78))
    left.plot(grid, curve, "b-", label=r"least L, best $\tau$")
    left.plot([coupling], [here], "ro", ms=7)
    left.set(xlabel="coupling c", ylabel="least accepted L", ylim=(0, 2.5))
    right.plot(TAUS, np.where(np.isfinite(per_tau), per_tau, np.nan), "b-",
               label=f"least L at c = {coupling:.2f}")
    right.axvline(1.0 / (1.0 + coupling), color="grey", ls=":", lw=0.8,
                  label=r"$\tau = 1/(1+c)$")
    right.set(xscale="log", xlabel=r"multiplier scale $\tau$", ylabel="least accepted L",
              ylim=(0, 2.5))
    for panel in (left, right):
        panel.axhline(true, color="k", ls="--", label=f"true constant {true:.3f}")
        panel.legend(fontsize=7, loc="upper right")
    ax.set_title(f"c = {coupling:.2f}: the LMI accepts L = {here:.3g}, "
                 + ("below the truth: unsound" if here < true else "above the truth"), fontsize=9)
    feasible = np.isfinite(per_tau)
    return dict(bound=here, true=true, unsound=here < true,
                least_tau=float(TAUS[feasible].min()) if feasible.any() else float("inf"))
