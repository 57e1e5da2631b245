"""Lesson 5: margins, not just constants (Fazlyab, Entesari et al.'s CRM). On Pauli et al.'s
3-class 2D data, each test point's logit margin against its distance to the decision boundary,
with the radii that the global constant (margin / (sqrt(2) L)) and the pairwise constants
(min_j (z_y - z_j) / L_yj, LipLT) certify; the CRM loss's strength is the control."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..attacks.ensemble import nearest_adversarial
from ..certify import certified_accuracy, certified_radii
from ..data import pauli_2d
from ..estimators import liplt, lipsdp
from ..models import fully_connected
from ..progress import quiet
from ..trainers.crm import CRMConfig, crm_train

EPS_2D = 0.05                # the radius at which the title counts certified points
N_POINTS = 150               # test points drawn


@functools.lru_cache(maxsize=16)
def crm_2d_net(strength: float, seed: int = 0) -> nn.Module:
    """A 2-16-16-3 ReLU net trained 1000 full-batch epochs on the 50 points with the CRM loss at
    weight ``strength`` (0: cross-entropy alone) after 200 plain epochs; radii are pushed up to
    R0 = 0.2 (the data lie in the unit square). About three seconds; cached."""
    if strength < 0:
        raise ValueError(f"the CRM strength must be >= 0, got {strength}")
    net = fully_connected([2, 16, 16, 3], "relu", seed=seed)
    cfg = CRMConfig(epochs=1000, batch_size=50, lr=0.01, decay_epoch=10**6, R0=0.2, t=20.0,
                    lam=float(strength), robust_start=200, power_iterations=5)
    with quiet():
        crm_train(net, pauli_2d().train, cfg, seed=seed)
    return net.eval()


@functools.lru_cache(maxsize=16)
def margin_view(strength: float) -> dict[str, torch.Tensor | float]:
    """Per test point: logit margin, attack distance, and the radii certified by the global
    LipSDP-neuron constant and by LipLT's pairwise constants (both sound)."""
    net = crm_2d_net(float(strength))
    x, y = (t[:N_POINTS] for t in pauli_2d().test.tensors)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    with quiet():
        L = lipsdp(W, alpha, beta, "neuron", progress=False).bound
    pairwise = liplt(W, alpha, beta).pairwise.detach()
    with torch.no_grad():
        logits = net(x).double()
    top2 = logits.topk(2, dim=1).values
    margin = torch.where(logits.argmax(1) == y, top2[:, 0] - top2[:, 1], torch.zeros(()))
    distance = (nearest_adversarial(net, x) - x).norm(dim=1).double()
    off = ~torch.eye(3, dtype=torch.bool)
    return dict(margin=margin, distance=distance, L=L,
                global_radius=certified_radii(net, (x, y), L),
                pairwise_radius=certified_radii(net, (x, y), pairwise),
                pairwise_over_global=float(pairwise[off].mean() / (2 ** 0.5 * L)))


def draw_margins(ax: plt.Axes, strength: float = 0.0) -> dict[str, float]:
    """Logit margin (x) against three distances (y) per correctly classified test point: the
    attack's distance to the boundary (above), the pairwise certified radius, the global one
    (below): a sound radius never exceeds the attack's distance."""
    view = margin_view(float(strength))
    ok = view["margin"] > 0
    m = view["margin"][ok]
    ax.clear()
    ax.scatter(m, view["distance"][ok], s=10, c="k", label="attack's distance (upper)")
    ax.scatter(m, view["pairwise_radius"][ok], s=10, c="tab:blue",
               label="certified, pairwise L_ij (LipLT)")
    ax.scatter(m, view["global_radius"][ok], s=10, c="tab:orange",
               label="certified, sqrt(2) L (LipSDP)")
    ax.axhline(EPS_2D, color="grey", ls=":", lw=0.8)
    shown = dict(global_certified=certified_accuracy(view["global_radius"], EPS_2D),
                 pairwise_certified=certified_accuracy(view["pairwise_radius"], EPS_2D),
                 mean_margin=float(m.mean()) if len(m) else 0.0, L=float(view["L"]),
                 pairwise_over_global=view["pairwise_over_global"],
                 violations=int((view["pairwise_radius"] > view["distance"] + 1e-9).sum()))
    ax.set(xlabel="logit margin z_y - max z_j", ylabel="l2 distance",
           title=f"CRM strength {strength:g}; certified at eps {EPS_2D:g}:\n"
                 f"{shown['global_certified']:.0f}% with sqrt(2) L, "
                 f"{shown['pairwise_certified']:.0f}% with L_ij "
                 f"(mean L_ij / sqrt(2) L = {shown['pairwise_over_global']:.2f})")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    return shown
