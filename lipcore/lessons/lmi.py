"""Lesson 8: what LipSDP is. The slope restriction of each neuron as a quadratic constraint with a
multiplier t_i >= 0, the LMI P(L^2, T) <= 0 of LipSDP-neuron, and where it holds for a net with
two hidden neurons (Pauli et al. 2021, Section II-B, eqs. (2)-(6) and Remark 2; Fazlyab et al.
2019).

The net is fixed: one input, two ReLU neurons, one output,

    f(x) = W1 relu(W0 x + b0) + b1 = 2 relu(x) - relu(x + 1),

with W0 = [1; 1], b0 = [0; 1], W1 = [2, -1], b1 = 0; ReLU is slope-restricted in
[alpha, beta] = [0, 1]. Its LMI is 3 x 3 (one input row, two hidden rows). Everything the lesson
draws is lipcore's own LMI: :func:`lipcore.estimators.lipsdp.lmi_matrix` (eq. (5)),
:func:`~lipcore.estimators.lipsdp.lmi_max_eig`, :func:`~lipcore.estimators.lipsdp.exact_L2`
(the least L^2 for a fixed T) and :func:`~lipcore.estimators.lipsdp.lipsdp` (the SDP (6)).
The map over (t1, t2) evaluates P at every grid point as the affine function it is,
P(L^2, T) = P(0, 0) + L^2 dP/dL^2 + t1 dP/dt1 + t2 dP/dt2, each term read off ``lmi_matrix``,
so that its 40,401 3 x 3 eigenvalue problems take a few hundredths of a second (the test checks
the map against ``lmi_max_eig`` point by point).

What the lesson states as theorems about this net (each checked by tests/test_lesson8.py):
the true Lipschitz constant is 1 (the net is piecewise linear with slopes 0, -1, 1); LipSDP's
optimum is exactly 2, reached only at T = diag(4, 2); T = ||W1||^2 I = 5 I certifies the naive
bound ||W1|| ||W0|| = sqrt(10); no L certifies a T with 2/t1 + 1/(2 t2) >= 1.
"""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from ..estimators import LipSDPResult, lipsdp, lmi_matrix, lmi_max_eig, naive_bound
from ..estimators.lipsdp import exact_L2, small_lmi_threads
from ..progress import quiet
from .show import clear_axes

W0 = np.array([[1.0], [1.0]])
B0 = np.array([0.0, 1.0])
W1 = np.array([[2.0, -1.0]])
B1 = np.array([0.0])
WEIGHTS = (W0, W1)
ALPHA, BETA = 0.0, 1.0                  # ReLU's slope interval (eq. (2))
T_MAX, L_MAX = 10.0, 4.0                # the map's t1, t2 axes and the L axis run from 0 to these
T_GRID = np.linspace(0.0, T_MAX, 201)   # step 0.05: the sliders' values lie on it
L_GRID = np.linspace(0.0, L_MAX, 161)
# lambda_max(P) <= FEASIBLE_TOL counts as <= 0: at (L, T) = (2, diag(4, 2)), where P is singular
# and negative semidefinite in exact arithmetic, float64 returns +1e-15.
FEASIBLE_TOL = 1e-9
EIG_RANGE = 4.0                         # the colour scale of the map: lambda_max in [-4, 4]
EIG_YLIM = (-4.0, 4.0)


def net_value(x: ArrayLike) -> np.ndarray:
    """f(x) = W1 relu(W0 x + b0) + b1 for scalar inputs x (vectorised)."""
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(np.multiply.outer(x, W0[:, 0]) + B0, 0.0) @ W1[0] + B1[0]


def pieces(biases: ArrayLike = B0) -> list[dict]:
    """The linear pieces of x -> W1 relu(W0 x + b) (one input): each piece's x-interval, which
    neurons are active there (pattern d, d_i = 1 if W0_i x + b_i > 0) and its slope
    sum_i W1_i d_i W0_i. ``biases`` replaces b0 (the LMI never reads it)."""
    b = np.asarray(biases, dtype=np.float64)
    kinks = np.unique(-b / W0[:, 0])
    edges = np.concatenate([[-np.inf], kinks, [np.inf]])
    inner = np.concatenate([[kinks[0] - 1.0], (kinks[:-1] + kinks[1:]) / 2, [kinks[-1] + 1.0]])
    out = []
    for lo, hi, x in zip(edges[:-1], edges[1:], inner):
        d = (W0[:, 0] * x + b > 0).astype(int)
        out.append(dict(interval=(float(lo) + 0.0, float(hi) + 0.0),        # + 0.0: no -0.0
                        pattern=tuple(int(v) for v in d),
                        slope=float(W1[0] @ (d * W0[:, 0]))))
    return out


def true_constant(biases: ArrayLike = B0) -> float:
    """The exact Lipschitz constant of the net: a continuous piecewise-linear function of one
    variable is Lipschitz with constant max |slope| over its pieces, and no smaller."""
    return max(abs(p["slope"]) for p in pieces(biases))


def naive() -> float:
    """||W1|| ||W0|| (lipcore's naive_bound with beta = 1) = sqrt(10)."""
    return naive_bound(list(WEIGHTS), BETA)


def naive_point() -> tuple[float, float]:
    """T = ||W1||^2 I: the diagonal multiplier that certifies the naive bound (a theorem for one
    hidden layer with alpha = 0, beta = 1; the lesson's question 4)."""
    s = float(np.linalg.norm(W1, 2) ** 2)
    return s, s


@functools.lru_cache(maxsize=1)
def lipsdp_optimum() -> LipSDPResult:
    """LipSDP-neuron (the SDP (6)) on the lesson's weights: lipcore's :func:`lipsdp`, certified
    (its ``bound`` is sqrt of a proven L^2 and ``t`` the diagonal of its T)."""
    with quiet():
        return lipsdp(list(WEIGHTS), ALPHA, BETA, "neuron", progress=False)


def least_certified_L(t1: float, t2: float) -> float:
    """The least L with P(L^2, diag(t1, t2)) <= 0 (lipcore's exact_L2, a Schur complement);
    inf where no L certifies this T (the hidden block -2T + W1^T W1 is not negative definite)."""
    _check_t(t1, t2)
    return float(np.sqrt(exact_L2(list(WEIGHTS), np.diag([t1, t2]), ALPHA, BETA)))


@functools.lru_cache(maxsize=1)
def _affine_parts() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """P(0, 0) and the derivatives of P in L^2, t1 and t2, read off lipcore's lmi_matrix
    (P is affine in (L^2, T), eq. (5))."""
    w = list(WEIGHTS)
    zero = lmi_matrix(w, np.zeros((2, 2)), 0.0, ALPHA, BETA)
    d_L2 = lmi_matrix(w, np.zeros((2, 2)), 1.0, ALPHA, BETA) - zero
    d_t1 = lmi_matrix(w, np.diag([1.0, 0.0]), 0.0, ALPHA, BETA) - zero
    d_t2 = lmi_matrix(w, np.diag([0.0, 1.0]), 0.0, ALPHA, BETA) - zero
    return zero, d_L2, d_t1, d_t2


def _stack(L2: float) -> np.ndarray:
    """P(L^2, diag(t1, t2)) at every grid point: shape (t2, t1, 3, 3)."""
    zero, d_L2, d_t1, d_t2 = _affine_parts()
    t1, t2 = np.meshgrid(T_GRID, T_GRID)             # rows: t2, columns: t1
    return (zero + L2 * d_L2)[None, None] + t1[..., None, None] * d_t1 + \
        t2[..., None, None] * d_t2


def eig_map(L: float) -> np.ndarray:
    """lambda_max(P(L^2, diag(t1, t2))) on T_GRID x T_GRID (rows t2, columns t1)."""
    with small_lmi_threads(2):
        return np.linalg.eigvalsh(_stack(L * L))[..., -1]


@functools.lru_cache(maxsize=1)
def hidden_block_map() -> np.ndarray:
    """lambda_max of P's hidden block -2T + W1^T W1 on the grid (it does not contain L): some L
    certifies T exactly where it is < 0."""
    with small_lmi_threads(2):
        return np.linalg.eigvalsh(_stack(0.0)[..., 1:, 1:])[..., -1]


def eig_curve(t1: float, t2: float) -> np.ndarray:
    """lambda_max(P(L^2, diag(t1, t2))) for L on L_GRID (lipcore's lmi_max_eig)."""
    _check_t(t1, t2)
    T = np.diag([t1, t2])
    with small_lmi_threads(2):
        return np.array([lmi_max_eig(list(WEIGHTS), T, L * L, ALPHA, BETA) for L in L_GRID])


def _check_t(t1: float, t2: float) -> None:
    if min(t1, t2) < 0:
        raise ValueError(f"the multipliers must be >= 0 (T in D_n), got t1 = {t1}, t2 = {t2}")


def draw_lmi_feasibility(ax: plt.Axes, t1: float = 5.0, t2: float = 5.0,
                         L: float = 3.2) -> dict:
    """Left: lambda_max(P(L^2, diag(t1, t2))) over the (t1, t2) plane for the chosen L, the
    region where the LMI holds (lambda_max <= 0) outlined, the hidden-block curve beyond which no
    L certifies T dotted, the student's T, LipSDP's optimal T and the naive point 5 I marked.
    Right: lambda_max(P) against L at the student's T; it crosses 0 at the least certified L."""
    _check_t(t1, t2)
    if not 0 < L <= L_MAX:
        raise ValueError(f"L must lie in (0, {L_MAX}], got {L}")
    best, true, top = lipsdp_optimum(), true_constant(), naive()
    grid = eig_map(L)
    feasible_grid = grid <= FEASIBLE_TOL
    here = lmi_max_eig(list(WEIGHTS), np.diag([t1, t2]), L * L, ALPHA, BETA)
    feasible = here <= FEASIBLE_TOL
    least = least_certified_L(t1, t2)
    curve = eig_curve(t1, t2)

    clear_axes(ax)
    left = ax.inset_axes((0.0, 0.0, 0.40, 0.80))
    bar = ax.inset_axes((0.415, 0.0, 0.015, 0.80))
    right = ax.inset_axes((0.56, 0.0, 0.44, 0.80))
    extent = (T_GRID[0], T_GRID[-1], T_GRID[0], T_GRID[-1])
    image = left.imshow(grid, origin="lower", extent=extent, aspect="auto", cmap="RdBu_r",
                        norm=TwoSlopeNorm(0.0, -EIG_RANGE, EIG_RANGE), interpolation="nearest")
    ax.figure.colorbar(image, cax=bar, extend="both")
    bar.set_ylabel(r"$\lambda_{\max}(P)$", fontsize=8, labelpad=1)
    bar.tick_params(labelsize=7)
    if feasible_grid.any() and not feasible_grid.all():
        left.contour(T_GRID, T_GRID, grid, levels=[FEASIBLE_TOL], colors="k", linewidths=1.6)
    left.contour(T_GRID, T_GRID, hidden_block_map(), levels=[0.0], colors="k", linewidths=1.0,
                 linestyles=":")
    left.plot(*naive_point(), "s", color="tab:orange", ms=7, mec="k")
    left.plot(*best.t, "*", color="gold", ms=13, mec="k")
    mark = dict(marker="o", ls="", mfc="none", mew=2.5, ms=12,
                mec="limegreen" if feasible else "magenta")
    left.plot([t1], [t2], **mark)
    left.set(xlim=extent[:2], ylim=extent[2:], xlabel=r"$t_1$", ylabel=r"$t_2$")
    left.legend(handles=[
        Line2D([], [], color="k", lw=1.6, label=f"LMI holds inside (L = {L:.2f})"),
        Line2D([], [], color="k", lw=1.0, ls=":", label="left of, below it: no L works"),
        Line2D([], [], ls="", marker="*", color="gold", mec="k", ms=11,
               label=f"LipSDP's T = diag({best.t[0]:.2f}, {best.t[1]:.2f})"),
        Line2D([], [], ls="", marker="s", color="tab:orange", mec="k", ms=7,
               label=r"$\|W_1\|^2 I$ (naive bound)"),
        Line2D([], [], **{**mark, "ms": 8}, label="your T")],
        fontsize=6.5, loc="upper right", framealpha=0.9)

    right.axhspan(EIG_YLIM[0], 0.0, color="tab:blue", alpha=0.08)
    right.axhline(0.0, color="grey", lw=0.8)
    right.plot(L_GRID, np.clip(curve, *EIG_YLIM), "b-", lw=1.4,
               label=fr"$\lambda_{{\max}}(P)$ at $T$ = diag({t1:.2f}, {t2:.2f})")
    right.axvline(true, color="k", ls="--", lw=1.0, label=f"true constant {true:.3g}")
    right.axvline(best.bound, color="gold", lw=1.6, label=f"LipSDP {best.bound:.3f}")
    right.axvline(top, color="tab:orange", ls="-.", lw=1.0, label=f"naive {top:.3f}")
    if np.isfinite(least):
        right.axvline(least, color="b", ls=":", lw=1.2, label=f"least L at your T: {least:.3f}")
    right.plot([L], [np.clip(here, *EIG_YLIM)], **mark)
    right.set(xlim=(0.0, L_MAX), ylim=EIG_YLIM, xlabel="L",
              ylabel=r"$\lambda_{\max}(P(L^2, T))$")
    right.legend(fontsize=6.5, loc="upper right", framealpha=0.9)

    verdict = (f"feasible: {L:.2f} is a proven bound" if feasible else
               "not feasible at this T" + (f" (any L >= {least:.3f} is)" if np.isfinite(least)
                                           else ": no L certifies this T"))
    ax.set_title(f"L = {L:.2f}, T = diag({t1:.2f}, {t2:.2f}): "
                 fr"$\lambda_{{\max}}(P)$ = {here:+.3f}, {verdict}" + "\n"
                 + f"LipSDP (best T) {best.bound:.3f}, true constant {true:.3g}, "
                 f"naive {top:.3f}; the LMI holds on {100 * feasible_grid.mean():.3g}% "
                 "of the map", fontsize=9)
    return dict(t=(float(t1), float(t2)), L=float(L), max_eig=float(here),
                feasible=bool(feasible), least_L=least, hidden_ok=bool(np.isfinite(least)),
                lipsdp=float(best.bound), lipsdp_t=tuple(float(v) for v in best.t),
                true=float(true), naive=float(top), feasible_share=float(feasible_grid.mean()),
                eig_map=grid, eig_curve=curve)
