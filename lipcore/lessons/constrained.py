"""Lesson 12: training under a Lipschitz constraint (Pauli et al. 2021, Section III).

Three ways to train the same small net on Pauli et al.'s 2D data (:func:`lipcore.data.pauli_2d`,
50 training points, 5000 test points), each with lipcore's own trainer:

* nominal: cross-entropy only (:func:`lipcore.trainers.standard.train`);
* L2 weight decay at a few strengths ``l2`` (the same trainer, ``TrainConfig.l2``);
* Pauli et al.'s ADMM enforcing a bound L_des (:func:`lipcore.trainers.admm.admm_train` with
  ``ADMMConfig(L_des=...)``, problem (10)), started from the strongest L2 net, with the multiplier
  T fixed to LipSDP-neuron's on that net, as the paper suggests.

The net is 2-8-8-3 tanh (the paper's 2-10-10-3, narrowed) and training is short (600 full-batch
Adam steps instead of 10,000 SGD steps; 5 ADMM iterations of 100 W-steps each instead of at least
5 of 10,000), so that every net of the lesson trains in about a second (all of them: about 12 s,
on the first draw, which the lesson's static figure makes). The figure also shows ADMM's start with
its logits scaled down (:func:`rescaled_net`): same decisions, any L. Each net's certified L is
LipSDP-neuron's (:func:`lipcore.certify.lipschitz_bound`, sound) and is checked against the
largest difference quotient found (:func:`lipcore.estimators.empirical_lower_bound`).

Every net is cached per setting (``functools.lru_cache``), so a value the slider has shown before
redraws at once.
"""
from __future__ import annotations

import copy
import functools
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
import torch
from torch import nn

from ..certify import lipschitz_bound
from ..data import pauli_2d
from ..estimators import empirical_lower_bound
from ..models import fully_connected
from ..progress import quiet
from ..trainers import ADMMConfig, TrainConfig, admm_train, evaluate, train
from .show import clear_axes

WIDTHS = [2, 8, 8, 3]                          # Pauli et al.'s 2-10-10-3 tanh net, narrowed
BASE = dict(epochs=600, batch_size=None, lr=0.01, optimizer="adam")      # full-batch Adam
L2_STRENGTHS = (1e-3, 3e-3, 1e-2)              # L2 weight decay lambda (TrainConfig.l2)
ADMM_INIT_L2 = 1e-2                            # ADMM starts from this L2 net and its T
ADMM = dict(rho=1.0, iterations=5, w_step_epochs=100)
L_DES = (5.0, 10.0, 20.0, 30.0)                # the slider: the enforced bound
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green")
CLASS_NAMES = ("outside", "ring", "disc")          # r > 0.4, 0.2 < r <= 0.4, r <= 0.2
METHOD_COLOURS = {"nominal": "k", "l2": "tab:purple", "admm": "tab:red", "rescaled": "tab:grey"}
L_RANGE = (1.0, 1000.0)                       # the trade-off panel's certified-L axis (log)
ACCURACY_RANGE = (0.0, 100.0)


def certified_L(net: nn.Module) -> float:
    """LipSDP-neuron's certified bound on ``net`` (:func:`lipcore.certify.lipschitz_bound`), without
    the FutureWarning torch prints on its first forward-mode derivative in a process (the trace's
    check of the net), which would otherwise stand in the lesson's output."""
    with quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                                category=FutureWarning)
        return lipschitz_bound(net, "lipsdp").value


def small_2d_net(seed: int = 0) -> nn.Module:
    """The lesson's 2-8-8-3 tanh net (PyTorch's default initialisation, seeded)."""
    return fully_connected(WIDTHS, "tanh", seed=seed)


@functools.lru_cache(maxsize=None)
def standard_net(l2: float = 0.0, seed: int = 0) -> nn.Module:
    """The net trained by lipcore's standard trainer with L2 weight decay ``l2`` (0: nominal)."""
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    net = small_2d_net(seed)
    with quiet():
        train(net, pauli_2d().train, TrainConfig(**BASE, l2=l2), seed=seed)
    return net.eval()


def admm_config(L_des: float) -> ADMMConfig:
    """The lesson's ADMM settings for problem (10) with bound ``L_des``."""
    return ADMMConfig(rho=ADMM["rho"], L_des=L_des, iterations=ADMM["iterations"],
                      max_iterations=ADMM["iterations"],
                      w_step=TrainConfig(**{**BASE, "epochs": ADMM["w_step_epochs"]}))


@functools.lru_cache(maxsize=None)
def enforced_net(L_des: float, seed: int = 0) -> dict:
    """ADMM (9a)-(9c) for problem (10) from the L2 net at ``ADMM_INIT_L2`` (T: LipSDP-neuron's on
    that net). Returns the net (W-bar's weights, the W-step's biases) and ADMM's history."""
    if L_des <= 0:
        raise ValueError(f"L_des must be > 0, got {L_des}")
    net = copy.deepcopy(standard_net(ADMM_INIT_L2, seed))
    with quiet():
        result = admm_train(net, pauli_2d().train, admm_config(L_des), seed=seed)
    return dict(net=net.eval(), history=result.history)


@functools.lru_cache(maxsize=None)
def rescaled_net(L_target: float, seed: int = 0) -> nn.Module:
    """The L2 net that ADMM starts from with its last layer (weights and bias) multiplied by
    c = L_target / L, L its certified bound: every logit is multiplied by c > 0, so every decision
    (and the accuracy) stays, while the bound becomes c L (LipSDP scales exactly with W^l)."""
    if L_target <= 0:
        raise ValueError(f"L_target must be > 0, got {L_target}")
    net = copy.deepcopy(standard_net(ADMM_INIT_L2, seed))
    c = L_target / certified_L(net)
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(c)
        last.bias.mul_(c)
    return net.eval()


def _net(method: str, strength: float) -> nn.Module:
    if method == "rescaled":
        return rescaled_net(strength)
    if method == "nominal":
        return standard_net(0.0)
    if method == "l2":
        return standard_net(strength)
    if method == "admm":
        return enforced_net(strength)["net"]
    raise ValueError(f"method must be 'nominal', 'l2', 'admm' or 'rescaled', got {method!r}")


@functools.lru_cache(maxsize=None)
def trade_off_point(method: str, strength: float = 0.0) -> dict:
    """One net's point: certified L (LipSDP-neuron, sound), the largest difference quotient found
    (a lower bound on the true constant), test and training accuracy (%)."""
    net = _net(method, float(strength))
    data = pauli_2d()
    L = certified_L(net)
    lower = empirical_lower_bound(net, 2, n_random=256, n_ascent=4, steps=40, scale=0.5,
                                  inputs=data.train.tensors[0]).value
    train_loss, train_accuracy = evaluate(net, data.train)
    return dict(method=method, strength=float(strength), L=L, lower=lower,
                test_accuracy=evaluate(net, data.test)[1], train_accuracy=train_accuracy,
                train_loss=train_loss)


def majority_accuracy() -> float:
    """Test accuracy (%) of always answering the most frequent test class (0, outside the ring)."""
    y = pauli_2d().test.tensors[1]
    return 100.0 * float(torch.bincount(y).max()) / len(y)


def trade_off(methods: tuple[str, ...] = ("nominal", "l2", "admm", "rescaled")
              ) -> dict[str, list[dict]]:
    """Every net's point, by method: nominal, L2 at each of L2_STRENGTHS, ADMM at each L_DES, and
    ADMM's start rescaled to the smallest L_des."""
    strengths = {"nominal": (0.0,), "l2": L2_STRENGTHS, "admm": L_DES, "rescaled": (min(L_DES),)}
    return {m: [trade_off_point(m, s) for s in strengths[m]] for m in methods}


def _grid(n: int = 150) -> torch.Tensor:
    line = torch.linspace(0.0, 1.0, n)
    return torch.stack(torch.meshgrid(line, line, indexing="xy"), -1).reshape(-1, 2)


def _draw_regions(ax: plt.Axes, net: nn.Module, title: str, n: int = 150) -> np.ndarray:
    with torch.no_grad():
        regions = net(_grid(n)).argmax(1).reshape(n, n).numpy()
    x, y = pauli_2d().train.tensors
    ax.imshow(regions, origin="lower", extent=(0, 1, 0, 1), alpha=0.3,
              cmap=plt.matplotlib.colors.ListedColormap(CLASS_COLOURS), vmin=0, vmax=2)
    for r in (0.2, 0.4):                                  # the true class boundaries
        ax.add_patch(plt.Circle((0.5, 0.5), r, fill=False, ls="--", lw=0.7, color="k"))
    for c, colour in enumerate(CLASS_COLOURS):
        ax.scatter(*x[y == c].T, c=colour, s=14, edgecolors="k", linewidths=0.4, zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xticks=(0, 0.5, 1), yticks=(0, 0.5, 1),
           xlabel=r"$x_1$", ylabel=r"$x_2$")
    ax.set_title(title, fontsize=8)
    classes = [Patch(color=colour, alpha=0.5, label=f"{c}: {name}")
               for c, (colour, name) in enumerate(zip(CLASS_COLOURS, CLASS_NAMES))]
    ax.legend(handles=classes + [Line2D([], [], color="k", ls="--", lw=0.7, label="true boundary")],
              fontsize=6.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
              title="class (regions, dots)", title_fontsize=6.5)
    return regions


def _draw_trade_off(ax: plt.Axes, L_des: float, points: dict[str, list[dict]]) -> None:
    labels = {"nominal": "nominal", "l2": r"L2 decay $\lambda$ = " +
              ", ".join(f"{s:g}" for s in L2_STRENGTHS),
              "admm": r"ADMM, $L_{des}$ = " + ", ".join(f"{s:g}" for s in L_DES),
              "rescaled": f"L2 net at {ADMM_INIT_L2:g}, logits scaled down"}
    markers = {"nominal": "*", "l2": "o-", "admm": "o-", "rescaled": "D"}
    for method, rows in points.items():
        Ls = [r["L"] for r in rows]
        acc = [r["test_accuracy"] for r in rows]
        ax.plot(Ls, acc, markers[method], color=METHOD_COLOURS[method],
                ms={"nominal": 11, "rescaled": 6}.get(method, 5), lw=1.2, label=labels[method])
        for r in rows:                                    # lower bound .. certified L
            ax.plot([r["lower"], r["L"]], [r["test_accuracy"]] * 2, color=METHOD_COLOURS[method],
                    lw=3, alpha=0.25, solid_capstyle="butt")
    current = next(r for r in points["admm"] if r["strength"] == L_des)
    ax.plot([current["L"]], [current["test_accuracy"]], "o", ms=12, mfc="none", mec="tab:red",
            mew=2, label=fr"this net ($L_{{des}}$ = {L_des:g})")
    ax.axvspan(L_RANGE[0], L_des, color="tab:red", alpha=0.07)
    ax.axvline(L_des, color="tab:red", ls="--", lw=0.9)
    ax.plot([], [], color="grey", lw=3, alpha=0.3, label="largest quotient found to L")
    majority = majority_accuracy()
    ax.axhline(majority, color="0.3", ls=":", lw=1.0,
               label=f"always class 0 ({majority:.1f}%)")
    ax.set(xscale="log", xlim=L_RANGE, ylim=ACCURACY_RANGE, xlabel="certified L (LipSDP-neuron)",
           ylabel="test accuracy (%)")
    ax.legend(fontsize=6.5, loc="lower right")    # no net lies there: L > 25 means accuracy > 80%


def draw_constrained(ax: plt.Axes, L_des: float = 20.0) -> dict:
    """Left: the decision regions of the net ADMM trained under L <= ``L_des`` (dashed: the true
    class boundaries; dots: the 50 training points). Right: test accuracy against certified L for
    every net of the lesson, the current one circled and the allowed region L <= L_des shaded."""
    L_des = float(L_des)
    if L_des not in L_DES:
        raise ValueError(f"L_des must be one of {L_DES}, got {L_des}")
    clear_axes(ax)
    left = ax.inset_axes((0.0, 0.0, 0.30, 0.88))
    right = ax.inset_axes((0.56, 0.1, 0.44, 0.78))
    points = trade_off()
    here = next(r for r in points["admm"] if r["strength"] == L_des)
    regions = _draw_regions(
        left, enforced_net(L_des)["net"],
        fr"ADMM, $L_{{des}}$ = {L_des:g}: certified L = {here['L']:.2f} $\leq$ {L_des:g}"
        f"\ntest accuracy {here['test_accuracy']:.1f}%, training {here['train_accuracy']:.0f}%")
    _draw_trade_off(right, L_des, points)
    init = trade_off_point("l2", ADMM_INIT_L2)
    right.set_title(f"accuracy against certified L (ADMM starts from the L2 net at "
                    f"{ADMM_INIT_L2:g}:\nL = {init['L']:.1f}, {init['test_accuracy']:.1f}%)",
                    fontsize=8)
    return dict(L_des=L_des, L=here["L"], lower=here["lower"],
                test_accuracy=here["test_accuracy"], train_accuracy=here["train_accuracy"],
                classes_drawn=sorted(int(c) for c in np.unique(regions)),
                regions=regions, points=points)
