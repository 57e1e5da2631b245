"""Lesson 2: the Lipschitz bounds of one net side by side, from an empirical lower bound (a
difference quotient actually attained) up to the naive product of norms."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import matplotlib.pyplot as plt
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from ..estimators import compositional_bound, empirical_lower_bound, liplt, lipsdp, naive_bound
from ..models import fully_connected
from ..progress import quiet

# pairs (smaller, larger) whose order is a theorem; any other order between two upper bounds is
# an observation on the nets drawn. The compositional multiplier is one per layer (T_k = lambda_k
# I), so both LipSDPs may choose it; compositional <= naive needs alpha = 0 (ECLipsE-Fast's
# recursion then gives at most beta^k prod ||W_i||), which holds for tanh, ReLU and sigmoid.
THEOREMS = (("LipSDP-neuron", "LipSDP-layer"), ("LipSDP-neuron", "compositional"),
            ("LipSDP-layer", "compositional"), ("compositional", "naive"), ("LipLT", "naive"))


@functools.cache
def _warm_up() -> None:
    """One untimed empirical lower bound on a tiny net: torch.func's first call costs seconds of
    set-up that would otherwise show as the lower bound's time in the first figure drawn."""
    with quiet():
        empirical_lower_bound(fully_connected([2, 2, 1], "tanh", seed=0), 2, n_random=4, steps=1)


def bound_ladder(depth: int = 2, width: int = 32, activation: str = "tanh", scale: float = 1.0,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Every estimator on one random net (input 16, ``depth`` hidden layers of ``width``, 4
    outputs, weights times ``scale``): value and seconds, the empirical lower bound first."""
    net = fully_connected([16] + [width] * depth + [4], activation, seed=seed)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(scale)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    rows = []
    _warm_up()

    def timed(name: str, fn: Callable[[], float], sound: bool) -> None:
        start = time.perf_counter()
        with quiet():
            value = float(fn())
        rows.append(dict(estimator=name, bound=value, seconds=time.perf_counter() - start,
                         sound=sound))
    with threadpool_limits(limits=1, user_api="blas"):    # tiny matrices: a second thread waits
        timed("empirical lower bound", lambda: empirical_lower_bound(
            net, 16, n_random=128, steps=30, seed=seed).value, False)
        timed("LipSDP-neuron", lambda: lipsdp(W, alpha, beta, "neuron", progress=False).bound,
              True)
        timed("LipSDP-layer", lambda: lipsdp(W, alpha, beta, "layer", progress=False).bound, True)
        timed("compositional", lambda: compositional_bound(W, alpha, beta).bound, True)
        timed("LipLT", lambda: liplt(W, alpha, beta).L, True)
        timed("naive", lambda: naive_bound(W, beta), True)
    return rows


def draw_bound_ladder(ax: plt.Axes, depth: int = 2, width: int = 32, activation: str = "tanh",
                      scale: float = 1.0) -> list[dict[str, Any]]:
    """Each bound divided by the empirical lower bound, as horizontal bars on a log axis, with
    its value and time; the line at 1 is the lower bound, which no sound bound may fall below."""
    rows = bound_ladder(depth, width, activation, scale)
    lower = rows[0]["bound"]
    ax.clear()
    names = [r["estimator"] for r in rows]
    ratios = [r["bound"] / lower for r in rows]
    ax.barh(names, ratios, color=["grey"] + ["tab:blue"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.text(ratios[i], i, f"  {r['bound']:.3g} ({1000 * r['seconds']:.0f} ms)", va="center",
                fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="bound / empirical lower bound (log scale)",
           title=f"{depth} x {width} {activation}, weights x {scale:g}")
    ax.invert_yaxis()
    ax.set_xlim(0.8, max(ratios) * 6)
    return rows
