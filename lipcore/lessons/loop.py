"""Lesson 10: LipLT's loop transformation against the naive product as depth grows (Fazlyab,
Entesari et al. 2023, Section 3).

Random nets 16 - 16 x L - 4 (PyTorch's default initialisation, seed 0) with a leaky ReLU of
slope ``alpha`` on the negative side, so the activation is slope-restricted in [alpha, 1]:
alpha = 0 is ReLU, alpha = 1 the identity. The weights do not depend on alpha, so the naive
bound does not either; what alpha changes is how much of each activation is the linear part
(alpha + beta)/2 that LipLT keeps inside its products of matrices. Every bound comes from
lipcore: :mod:`lipcore.estimators` (``naive_bound``, ``liplt``, ``compositional_bound``, ``lipsdp``
with neuron coupling, ``empirical_lower_bound``); the lesson's test checks that
:func:`lipcore.certify.lipschitz_bound`, which reads [alpha, beta] off the net's own leaky
ReLUs, gives the same values.
"""
from __future__ import annotations

import functools
import math
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits
from torch import nn

from ..certify import round_up
from ..estimators import (compositional_bound, empirical_lower_bound, liplt, lipsdp,
                          naive_bound)
from ..models import fully_connected
from ..progress import quiet

ALPHAS = (0.0, 0.3, 0.6, 0.9, 1.0)       # the slider: the activation's slope interval [alpha, 1]
DEPTHS = tuple(range(1, 9))             # hidden layers L
SDP_DEPTH = 4                           # LipSDP-neuron and compositional up to this depth only
WIDTH, INPUTS, OUTPUTS = 16, 16, 4
BETA = 1.0
METHODS = ("naive", "liplt", "compositional", "lipsdp")
LABELS = {"naive": "naive product", "liplt": "LipLT", "compositional": "compositional",
          "lipsdp": "LipSDP-neuron", "empirical": "empirical lower bound"}
STYLES = {"naive": ("tab:red", "s-"), "liplt": ("tab:blue", "o-"),
          "compositional": ("tab:purple", "v--"), "lipsdp": ("tab:green", "^-"),
          "empirical": ("k", "x:")}
BOUND_YLIM = (2e-4, 5.0)                # every drawn bound lies in here (the test checks it)


def loop_net(depth: int, alpha: float, seed: int = 0) -> nn.Sequential:
    """The lesson's net: ``fully_connected([16] + [16] * depth + [4], "relu", seed)`` with each
    ReLU replaced by ``LeakyReLU(alpha)`` (slopes in [alpha, 1]); the weights depend on depth
    and seed only, never on alpha."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (slopes in [alpha, 1]), got {alpha}")
    base = fully_connected([INPUTS] + [WIDTH] * depth + [OUTPUTS], "relu", seed=seed)
    return nn.Sequential(*[nn.LeakyReLU(alpha) if isinstance(m, nn.ReLU) else m
                           for m in base.net])


def _weights(net: nn.Sequential) -> list[np.ndarray]:
    return [m.weight.detach().double().numpy() for m in net if isinstance(m, nn.Linear)]


def share(alpha: float, beta: float = BETA) -> float:
    """The part of the largest slope that the linear term carries: ((alpha + beta)/2) / beta."""
    return (alpha + beta) / (2 * beta)


def ratio_ceiling(alpha: float, depth: int, beta: float = BETA) -> float:
    """naive / LipLT <= (beta / c)^L with c = (beta - alpha)/2 (inf at alpha = beta): LipLT keeps
    at least the path through every psi, c^L prod ||W_k||, and naive is beta^L prod ||W_k||."""
    c = (beta - alpha) / 2
    return math.inf if c == 0 else (beta / c) ** depth


def bounds(depth: int, alpha: float, seed: int = 0) -> dict[str, float]:
    """Every bound of :func:`loop_net` (depth, alpha, seed), from lipcore's estimators on its
    weights with slopes [alpha, 1]: naive product, LipLT (Theorem 3.3), compositional and
    LipSDP-neuron (NaN beyond SDP_DEPTH and at alpha = 1, where lipcore's LMIs need alpha < beta)
    and the empirical lower bound. The upper bounds are rounded up as
    :func:`lipcore.certify.lipschitz_bound` rounds them (:func:`lipcore.certify.round_up`), so
    float error never puts one below the lower bound. BLAS runs in one thread: on these
    16 x 16 blocks a second thread only waits (30 times slower on a busy 2-core machine)."""
    net = loop_net(depth, alpha, seed)
    W = _weights(net)
    out = dict(naive=round_up(naive_bound(W, BETA)),
               liplt=round_up(float(liplt(W, alpha, BETA).L)),
               compositional=math.nan, lipsdp=math.nan)
    with threadpool_limits(limits=1, user_api="blas"), quiet():
        if depth <= SDP_DEPTH and alpha < BETA:
            out["compositional"] = round_up(compositional_bound(W, alpha, BETA).bound)
            out["lipsdp"] = round_up(lipsdp(W, alpha, BETA, "neuron", progress=False).bound)
        out["empirical"] = empirical_lower_bound(net, INPUTS, n_random=64, n_ascent=2, steps=15,
                                                 seed=seed).value
    return out


@functools.lru_cache(maxsize=None)
def depth_sweep(alpha: float, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`bounds` at each depth of DEPTHS, one array per bound. Cached per (alpha, seed)."""
    rows = [bounds(depth, alpha, seed) for depth in DEPTHS]
    out = {name: np.array([row[name] for row in rows]) for name in METHODS + ("empirical",)}
    out["depth"] = np.array(DEPTHS)
    return out


def sweep_all(seed: int = 0) -> float:
    """Compute (and cache) the depth sweep of every alpha of ALPHAS, so that the slider only
    draws; returns the seconds it took (a few seconds per alpha on 2 busy cores)."""
    start = time.perf_counter()
    for alpha in ALPHAS:
        depth_sweep(alpha, seed)
    ratio_curves(seed)
    return time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def ratio_curves(seed: int = 0) -> dict[float, np.ndarray]:
    """naive / LipLT at each depth for every alpha of ALPHAS, straight from the weights
    (:func:`naive_bound`, :func:`liplt`): a few milliseconds per net."""
    curves = {}
    for alpha in ALPHAS:
        ratios = []
        for depth in DEPTHS:
            W = _weights(loop_net(depth, alpha, seed))
            ratios.append(naive_bound(W, BETA) / float(liplt(W, alpha, BETA).L))
        curves[alpha] = np.array(ratios)
    return curves


def draw_loop_transformation(ax: plt.Axes, alpha: float = 0.0) -> dict:
    """Left: every bound against depth (log scale) for the slope interval [alpha, 1]. Right:
    naive / LipLT against depth for every alpha of ALPHAS, the chosen one bold."""
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS} (the precomputed settings), got {alpha}")
    sweep, curves = depth_sweep(alpha), ratio_curves()
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")
    left, right = ax.inset_axes((0.0, 0.0, 0.46, 0.86)), ax.inset_axes((0.58, 0.0, 0.42, 0.86))
    for name in METHODS + ("empirical",):
        colour, style = STYLES[name]
        label = LABELS[name]
        if name in ("lipsdp", "compositional"):
            label += fr" ($L \leq {SDP_DEPTH}$)" if alpha < BETA else r": needs $\alpha < \beta$"
        left.plot(sweep["depth"], sweep[name], style, color=colour, ms=4, lw=1.2, label=label)
    left.set(yscale="log", ylim=BOUND_YLIM, xlabel="hidden layers L",
             ylabel="Lipschitz bound (log scale)", xticks=DEPTHS)
    left.legend(fontsize=7, loc="lower left")
    cmap = plt.get_cmap("viridis")
    for i, a in enumerate(ALPHAS):
        chosen = a == alpha
        right.plot(DEPTHS, curves[a], "o-" if chosen else "-", ms=4,
                   color=cmap(0.85 * i / (len(ALPHAS) - 1)), lw=2.4 if chosen else 0.9,
                   alpha=1.0 if chosen else 0.55, label=fr"$\alpha$ = {a:g}")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    top = max(float(c.max()) for c in curves.values())
    right.set(yscale="log", ylim=(0.8, 1.5 * top), xlabel="hidden layers L",
              ylabel="naive / LipLT (log scale)", xticks=DEPTHS)
    right.legend(fontsize=7, loc="upper left", title="slopes in [$\\alpha$, 1]",
                 title_fontsize=7)
    ratio = sweep["naive"] / sweep["liplt"]
    ax.set_title(fr"slopes in [{alpha:g}, 1]: the linear part $(\alpha+\beta)/2$ carries "
                 f"{100 * share(alpha):.0f}% of the largest slope; naive / LipLT at "
                 f"L = {DEPTHS[-1]}: {ratio[-1]:.3g}", fontsize=9)
    return dict(alpha=alpha, depth=sweep["depth"], ratio=ratio,
                **{name: sweep[name] for name in METHODS + ("empirical",)})
