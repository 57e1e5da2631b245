"""Lesson 5: a certified radius is a margin divided by a constant (Fazlyab, Entesari et al.'s
CRM). On Pauli et al.'s 3-class 2D data, each test point's logit margin against the radius that
one global LipLT constant certifies (margin / (sqrt(2) L)), the radius that LipLT's pairwise
constants certify (min_j (z_y - z_j) / L_yj), and the distance to the decision boundary; the
CRM loss's weight is the training control, eps the certificate's."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..certify import certified_accuracy, certified_radii
from ..data import pauli_2d
from ..estimators import liplt
from ..models import fully_connected
from ..progress import quiet
from ..trainers.crm import CRMConfig, crm_train
from .balls import nearest_other_class

N_POINTS = 150               # test points drawn
CRM_STRENGTHS = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0)
EPS_2D = (0.01, 0.02, 0.05, 0.1, 0.2)
MAX_MARGIN, MAX_RADIUS = 80.0, 0.45    # fixed axes, so panels and redraws compare


@functools.lru_cache(maxsize=16)
def crm_2d_net(strength: float, seed: int = 0) -> nn.Module:
    """A 2-16-16-3 ReLU net trained 500 full-batch epochs on the 50 points: 100 of cross-entropy,
    then 400 with the CRM term at weight ``strength`` (0: cross-entropy throughout); radii are
    pushed up to R0 = 0.2 (the data lie in the unit square). About a second; cached."""
    if strength < 0:
        raise ValueError(f"the CRM strength must be >= 0, got {strength}")
    net = fully_connected([2, 16, 16, 3], "relu", seed=seed)
    cfg = CRMConfig(epochs=500, batch_size=50, lr=0.01, decay_epoch=10**6, R0=0.2, t=20.0,
                    lam=float(strength), robust_start=100, power_iterations=5)
    with quiet():
        crm_train(net, pauli_2d().train, cfg, seed=seed)
    return net.eval()


@functools.lru_cache(maxsize=16)
def margin_view(strength: float) -> dict[str, torch.Tensor | float]:
    """Per test point: logit margin, distance to the boundary (nearest grid point of another
    class), and the radii certified by LipLT's global constant L and by its pairwise constants
    L_ij (both sound; L_ij <= sqrt(2) L always, so the pairwise radius is never the smaller)."""
    net = crm_2d_net(float(strength))
    x, y = (t[:N_POINTS] for t in pauli_2d().test.tensors)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    bounds = liplt(W, alpha, beta)
    L, pairwise = float(bounds.L), bounds.pairwise.detach()
    with torch.no_grad():
        logits = net(x).double()
    top2 = logits.topk(2, dim=1).values
    margin = torch.where(logits.argmax(1) == y, top2[:, 0] - top2[:, 1], torch.zeros(()))
    off = ~torch.eye(3, dtype=torch.bool)
    return dict(margin=margin, distance=nearest_other_class(net, x)[1], L=L,
                global_radius=certified_radii(net, (x, y), L),
                pairwise_radius=certified_radii(net, (x, y), pairwise),
                pairwise_over_global=float(pairwise[off].mean() / (2 ** 0.5 * L)),
                max_pairwise_over_global=float(pairwise[off].max() / (2 ** 0.5 * L)),
                accuracy=100.0 * float((logits.argmax(1) == y).double().mean()))


def draw_margins(ax: plt.Axes, strength: float = 0.0, eps: float = 0.05) -> dict[str, float]:
    """Logit margin (x) against three distances (y) per correctly classified test point: the
    distance to the boundary (black), the pairwise certified radius (blue) and the global one
    (orange, on the line margin / (sqrt(2) L)); the share certified at ``eps`` in the title."""
    view = margin_view(float(strength))
    ok = view["margin"] > 0
    m = view["margin"][ok]
    ax.clear()
    ax.scatter(m, view["distance"][ok], s=10, c="k", label="distance to the boundary")
    ax.scatter(m, view["pairwise_radius"][ok], s=10, c="tab:blue",
               label=r"certified, pairwise: $\min_j (z_y - z_j) / L_{yj}$")
    ax.scatter(m, view["global_radius"][ok], s=10, c="tab:orange",
               label=r"certified, global: margin / ($\sqrt{2} L$)")
    ax.axhline(eps, color="grey", ls=":", lw=0.8, label=f"eps = {eps:g}")
    shown = dict(global_certified=certified_accuracy(view["global_radius"], eps),
                 pairwise_certified=certified_accuracy(view["pairwise_radius"], eps),
                 mean_margin=float(m.mean()) if len(m) else 0.0, L=view["L"],
                 mean_pairwise_radius=float(view["pairwise_radius"][ok].mean()) if len(m) else 0.0,
                 accuracy=view["accuracy"], pairwise_over_global=view["pairwise_over_global"],
                 max_pairwise_over_global=view["max_pairwise_over_global"],
                 violations=int((view["pairwise_radius"] > view["distance"] + 1e-9).sum()),
                 global_above_pairwise=int((view["global_radius"]
                                            > view["pairwise_radius"] + 1e-12).sum()))
    ax.set(xlim=(0, MAX_MARGIN), ylim=(0, MAX_RADIUS),
           xlabel=r"logit margin $z_y - \max_{j\neq y} z_j$",
           ylabel="l2 distance in the input plane",
           title=f"CRM weight {strength:g}: acc {shown['accuracy']:.0f}%, LipLT L = "
                 f"{view['L']:.3g}, mean margin {shown['mean_margin']:.2f}\n"
                 f"certified at eps {eps:g}: "
                 f"{shown['global_certified']:.0f}% with sqrt(2) L, "
                 f"{shown['pairwise_certified']:.0f}% with L_ij")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper right")
    return shown
