"""What the lessons (``notebooks/lessons/``) compute and draw: one function per lesson figure.

Each ``draw_*`` function draws one lesson's figure onto the axes it is given, for the control
values it is given, and returns what it shows (numbers a test can check: a control that changes
nothing drawn is a bug). The lessons only call these, through :func:`small_multiples` (a static
figure at a few settings, which the executed copy and the HTML book show) and :func:`explore`
(ipywidgets controls above the same figure, redrawn on every change). No algorithm lives here
either: training, bounds, certificates and attacks are lipcore's own.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from . import counterexample as cx
from .attacks.ensemble import nearest_adversarial
from .certify import certified_radii, lipschitz_bound
from .data import pauli_2d
from .estimators import empirical_lower_bound, liplt, lipsdp, naive_bound
from .estimators.lipsdp import exact_L2
from .models import fully_connected
from .progress import quiet
from .trainers import LipschitzLossConfig, TrainConfig, train, train_lipschitz_loss
from .trainers.clip import CLIPConfig, LipschitzSet, clip_train

# ------------------------------------------------------------------ lesson 1: certified balls in 2D
METHODS_2D = ("none", "l2", "lipschitz loss", "clip")
STEPS_2D = 1000            # full-batch Adam steps: about a second on one core
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green")


@functools.lru_cache(maxsize=32)
def trained_2d_net(method: str, strength: float, seed: int = 0) -> nn.Module:
    """Pauli et al.'s 2-10-10-3 tanh net trained on their 50 points with ``method`` at
    ``strength`` (l2: the penalty lambda; lipschitz loss: beta; clip: a fixed lambda). Cached."""
    if method not in METHODS_2D:
        raise ValueError(f"method must be one of {METHODS_2D}, got {method!r}")
    data = pauli_2d()
    net = fully_connected([2, 10, 10, 3], "tanh", seed=seed)
    adam = dict(epochs=STEPS_2D, batch_size=None, lr=0.01, optimizer="adam")
    with quiet():
        _train_2d(net, data, method, strength, seed, adam)
    return net.eval()


def _train_2d(net: nn.Module, data, method: str, strength: float, seed: int, adam: dict) -> None:
    if method in ("none", "l2"):
        train(net, data.train, TrainConfig(**adam, l2=strength if method == "l2" else 0.0))
    elif method == "lipschitz loss":
        train_lipschitz_loss(net, data.train, TrainConfig(**adam),
                             LipschitzLossConfig(beta=strength, sigma=0.05, L_n=20.0))
    else:
        pairs = LipschitzSet.from_images(data.train.tensors[0], noise=0.05,
                                         generator=torch.Generator().manual_seed(seed))
        clip_train(net, data.train, CLIPConfig(epochs=STEPS_2D, batch_size=50, lr=0.01,
                                               optimizer="adam", lam0=strength, d_lambda=0.0,
                                               ascent_every=1), pairs)


def draw_certified_balls(ax: plt.Axes, method: str = "none", strength: float = 0.0,
                         points: int = 40) -> dict[str, float]:
    """Decision regions of the 2D net, the first ``points`` test points with their certified
    balls (radius margin / (sqrt(2) L), L from LipSDP-neuron: sound), and for each the nearest
    adversarial point the attack finds, which lies outside the ball."""
    net = trained_2d_net(method, float(strength))
    data = pauli_2d()
    x, y = (t[:points] for t in data.test.tensors)
    with quiet():
        L = lipschitz_bound(net, "lipsdp").value
    radii = certified_radii(net, (x, y), L)
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 200),
                                      indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        regions = net(grid).argmax(1).reshape(200, 200)
        accuracy = 100.0 * float((net(data.test.tensors[0]).argmax(1) == data.test.tensors[1])
                                 .float().mean())
    ax.clear()
    ax.imshow(regions, origin="lower", extent=(0, 1, 0, 1), alpha=0.25,
              cmap=plt.matplotlib.colors.ListedColormap(CLASS_COLOURS), vmin=0, vmax=2)
    ax.scatter(x[:, 0], x[:, 1], c=[CLASS_COLOURS[int(c)] for c in y], s=12, edgecolors="k",
               linewidths=0.4, zorder=3)
    for point, r in zip(x, radii):
        if r > 0:
            ax.add_patch(plt.Circle(point.tolist(), float(r), fill=False, lw=0.8, zorder=2))
    certified = radii > 0
    broken_inside = 0          # adversarials inside a certified ball: must stay 0 (a sound L)
    if certified.any():
        adv = nearest_adversarial(net, x[certified])
        with torch.no_grad():
            fooled = net(adv).argmax(1) != y[certified]
        broken_inside = int((fooled & ((adv - x[certified]).norm(dim=1) < radii[certified])).sum())
        for start, end in zip(x[certified][fooled], adv[fooled]):
            ax.plot([start[0], end[0]], [start[1], end[1]], "r-", lw=0.6, zorder=2)
        ax.scatter(adv[fooled, 0], adv[fooled, 1], marker="x", c="r", s=14, zorder=4)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xticks=[], yticks=[],
           title=f"{method}" + (f" {strength:g}" if method != "none" else "") +
                 f": L = {L:.3g}, acc {accuracy:.0f}%")
    return dict(L=L, accuracy=accuracy, certified=int(certified.sum()),
                mean_radius=float(radii.mean()), broken_inside=broken_inside)


# ------------------------------------------------------------------ lesson 2: the bound ladder
def bound_ladder(depth: int = 2, width: int = 32, activation: str = "tanh", scale: float = 1.0,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Every estimator on one random net (input 16, ``depth`` hidden layers of ``width``, 4
    outputs, weights times ``scale``): value and seconds, from the empirical lower bound up."""
    net = fully_connected([16] + [width] * depth + [4], activation, seed=seed)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(scale)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    rows = []

    def timed(name: str, fn: Callable[[], float], sound: bool) -> None:
        start = time.perf_counter()
        with quiet():
            value = float(fn())
        rows.append(dict(estimator=name, bound=value, seconds=time.perf_counter() - start,
                         sound=sound))
    timed("empirical lower bound", lambda: empirical_lower_bound(net, 16, n_random=128, steps=30,
                                                                 seed=seed).value, False)
    timed("LipSDP-neuron", lambda: lipsdp(W, alpha, beta, "neuron", progress=False).bound, True)
    timed("LipSDP-layer", lambda: lipsdp(W, alpha, beta, "layer", progress=False).bound, True)
    timed("LipLT", lambda: liplt(W, alpha, beta).L, True)
    timed("naive", lambda: naive_bound(W, beta), True)
    return rows


def draw_bound_ladder(ax: plt.Axes, depth: int = 2, width: int = 32, activation: str = "tanh",
                      scale: float = 1.0) -> list[dict[str, Any]]:
    """The ladder as horizontal bars relative to the lower bound, each with its time."""
    rows = bound_ladder(depth, width, activation, scale)
    lower = rows[0]["bound"]
    ax.clear()
    names = [r["estimator"] for r in rows]
    ratios = [r["bound"] / lower for r in rows]
    ax.barh(names, ratios, color=["grey"] + ["tab:blue"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.text(ratios[i], i, f"  {r['bound']:.3g} ({1000 * r['seconds']:.0f} ms)", va="center",
                fontsize=8)
    ax.set(xscale="log", xlabel="bound / empirical lower bound",
           title=f"{depth} x {width} {activation}, weights x {scale:g}")
    ax.invert_yaxis()
    ax.set_xlim(0.9, max(ratios) * 4)
    return rows


# ------------------------------------------------------------------ lesson 3: the counterexample
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


# ------------------------------------------------------------------ showing a lesson
def small_multiples(draw: Callable[..., Any], settings: list[dict[str, Any]], ncols: int = 3,
                    size: tuple[float, float] = (4.0, 3.6)) -> plt.Figure:
    """One panel per setting: the static view of a lesson (the book, an executed copy)."""
    nrows = -(-len(settings) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        draw(ax, **setting)
    for ax in axes.flat[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def explore(draw: Callable[..., Any], figsize: tuple[float, float] = (6.0, 4.5),
            **controls: Any):
    """ipywidgets controls above ``draw``'s figure; each change redraws it (with a busy label
    while a slow redraw runs). ``controls`` are widgets or anything ipywidgets.interactive
    accepts. Returns the widget box."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    busy = widgets.Label("")
    with plt.ioff():
        fig, ax = plt.subplots(figsize=figsize)

    def redraw(**values):
        busy.value = "computing ..."
        start = time.perf_counter()
        shown = draw(ax, **values)
        fig.canvas.draw_idle()
        busy.value = f"drawn in {time.perf_counter() - start:.2f} s"
        with out:
            out.clear_output(wait=True)
            display(fig)
        return shown
    ui = widgets.interactive(redraw, **controls)
    for child in ui.children[:-1]:
        if hasattr(child, "continuous_update"):
            child.continuous_update = False
    return widgets.VBox([widgets.HBox(list(ui.children[:-1]) + [busy]), out])
