"""Lesson 4: a weak attack misleads. Bungert et al.'s sign-step PGD (eq. (13)) against the strong
ensemble on a small MNIST net: per image, which attack breaks it at eps; accuracy against eps for
both; the certified share (sound LipSDP bound) beneath them."""
from __future__ import annotations

import functools

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..attacks import breaking_radii
from ..attacks.ensemble import APGD
from ..certify import certified_radii, lipschitz_bound
from ..progress import quiet
from .mnist import mnist_subset, small_mnist_net

EPS_GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
N_IMAGES = 100                     # attacked test images; the first 50 are shown
# status of an image at eps -> colour of its frame
STATUS = {"certified": "tab:green", "survives both": "tab:blue",
          "missed by eq. (13)": "tab:orange", "broken by both": "tab:red",
          "eq. (13) only": "tab:purple", "wrong": "grey",
          "certified yet broken (a bug)": "black"}


@functools.lru_cache(maxsize=8)
def weak_attack_sweep(method: str = "standard") -> dict[str, torch.Tensor]:
    """Per image of the first N_IMAGES test images: the radius at which each attack first breaks
    it on EPS_GRID (:func:`breaking_radii`), and its certified radius. Cached per method."""
    net = small_mnist_net(method)
    _, test = mnist_subset()
    x, y = (t[:N_IMAGES] for t in test.tensors)
    with quiet():
        bound = lipschitz_bound(net, "lipsdp")
    return dict(images=x, paper=breaking_radii(net, (x, y), EPS_GRID, "paper pgd"),
                strong=breaking_radii(net, (x, y), EPS_GRID, "strong", iterations=50,
                                       attacks=APGD),
                certified=certified_radii(net, (x, y), bound.value), L=torch.tensor(bound.value),
                sign_efficiency=sign_efficiency(net, x, y))


def sign_efficiency(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, ||g||_1 / (sqrt(d) ||g||_2) for the loss gradient g at x: the first-order loss
    gain of a sign step scaled to l2 length eps, over that of the l2 steepest step g / ||g||_2
    of the same length (1 only if every |g_i| is equal; 1 / sqrt(d) if one pixel carries g)."""
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y, reduction="sum"), x)
    g = grad.flatten(1)
    return g.norm(p=1, dim=1) / (g.shape[1] ** 0.5 * g.norm(dim=1).clamp_min(1e-30))


def image_status(sweep: dict[str, torch.Tensor], eps: float) -> list[str]:
    """Each image's status at ``eps`` (a key of STATUS)."""
    statuses = []
    for paper, strong, cert in zip(sweep["paper"], sweep["strong"], sweep["certified"]):
        if strong == 0:
            statuses.append("wrong")
        elif cert > eps and min(paper, strong) <= eps:
            statuses.append("certified yet broken (a bug)")
        elif cert > eps:
            statuses.append("certified")
        elif paper > eps and strong > eps:
            statuses.append("survives both")
        elif paper > eps:
            statuses.append("missed by eq. (13)")
        elif strong > eps:
            statuses.append("eq. (13) only")
        else:
            statuses.append("broken by both")
    return statuses


def _mosaic(images: torch.Tensor, statuses: list[str], columns: int = 10) -> np.ndarray:
    """The images as one RGB picture, each in a frame of its status's colour."""
    rows = -(-len(images) // columns)
    tile = 32
    picture = np.ones((rows * tile, columns * tile, 3))
    for k, (image, status) in enumerate(zip(images, statuses)):
        r, c = divmod(k, columns)
        cell = np.empty((tile, tile, 3))
        cell[:] = plt.matplotlib.colors.to_rgb(STATUS[status])
        cell[2:30, 2:30] = 1.0 - image.reshape(28, 28, 1).numpy()
        picture[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cell
    return picture


CURVE_COLOURS = {"eq. (13)": "tab:orange", "strong": "tab:red", "certified": "tab:green"}


def draw_accuracy_against_eps(ax: plt.Axes, radii: dict[str, torch.Tensor], eps: float,
                              max_eps: float) -> None:
    """Accuracy (%) against eps for each named set of per-sample radii (breaking radii of an
    attack, or certified radii): the share of samples whose radius exceeds eps."""
    grid = np.linspace(0.0, max_eps, 61)
    for name, values in radii.items():
        shares = [100.0 * float((values > e).double().mean()) for e in grid]
        ax.step(grid, shares, where="post", label=name, color=CURVE_COLOURS.get(name))
    ax.axvline(eps, color="k", lw=0.8, ls=":")
    ax.set(xlabel="l2 radius eps", ylabel="accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=7)


def draw_weak_attack(ax: plt.Axes, method: str = "standard", eps: float = 2.0
                     ) -> dict[str, float]:
    """Left: accuracy against eps under eq. (13) and the strong attacks, and the certified
    share. Right: the first 50 images framed by their status at ``eps`` (the grid point
    nearest to it), the legend naming only the statuses drawn. Returns the three percentages,
    how many images eq. (13) missed, how many certified images an attack broke (never any: the
    bound is sound), and the mean sign-step efficiency (:func:`sign_efficiency`)."""
    eps = min(EPS_GRID, key=lambda e: abs(e - eps))
    sweep = weak_attack_sweep(method)
    statuses = image_status(sweep, eps)
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")
    curves, pictures = ax.inset_axes((0.0, 0.12, 0.36, 0.8)), ax.inset_axes((0.42, 0.0, 0.4, 1.0))
    draw_accuracy_against_eps(curves, {"eq. (13)": sweep["paper"], "strong": sweep["strong"],
                                       "certified": sweep["certified"]}, eps, max(EPS_GRID))
    pictures.imshow(_mosaic(sweep["images"][:50], statuses[:50]))
    pictures.set(xticks=[], yticks=[])
    shown_statuses = statuses[:50]
    handles = [plt.matplotlib.patches.Patch(color=c, label=f"{s} ({shown_statuses.count(s)})")
               for s, c in STATUS.items() if s in shown_statuses]    # only what is drawn
    pictures.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    shown = {key: 100.0 * float((sweep[key] > eps).double().mean())
             for key in ("paper", "strong", "certified")}
    shown["missed"] = statuses.count("missed by eq. (13)")
    shown["certified_yet_broken"] = statuses.count("certified yet broken (a bug)")
    shown["sign_efficiency"] = float(sweep["sign_efficiency"].mean())
    ax.set_title(f"{method}, eps {eps:g}: eq. (13) {shown['paper']:.0f}%, strong "
                 f"{shown['strong']:.0f}%, certified {shown['certified']:.0f}% "
                 f"(L = {float(sweep['L']):.3g}); sign-step efficiency "
                 f"{shown['sign_efficiency']:.2f}", fontsize=9)
    return shown
