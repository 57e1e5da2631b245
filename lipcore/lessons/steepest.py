"""Lesson 9: l2 against l-infinity steepest ascent (the ground lesson 4 needs).

Two figures. :func:`draw_steepest_2d`: a gradient g in the plane, the l2 disc and the
l-infinity square of radius EPS_2D, the maximiser of g^T d over each, and one PGD step of each
kind (``step * g / ||g||_2`` and ``step * sign(g)``) with its projection onto the disc; beside it
the projected sign step's first-order gain, as a share of the largest possible eps ||g||_2,
against the gradient's angle. :func:`draw_attacks_against_eps`: on a small MNIST net
(:func:`lipcore.lessons.mnist.small_mnist_net`), accuracy against eps under lipcore's PGD with
sign steps (``pgd_l2(variant="paper")``, Bungert et al. eq. (13)), with l2 steps
(``variant="l2"``), with l2 steps from a random start, and under the strong ensemble
(:func:`lipcore.attacks.breaking_radii`, APGD-CE + APGD-DLR from AutoAttack's implementation).
The steps and the projection are lipcore's (:func:`lipcore.attacks.pgd_l2`,
:func:`lipcore.attacks.project_l2_ball`); the lesson's test checks that one iteration of
``pgd_l2`` takes exactly :func:`steepest_step`.
"""
from __future__ import annotations

import functools
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D

from ..attacks import breaking_radii, pgd_l2, project_l2_ball
from ..attacks.ensemble import APGD
from ..progress import quiet
from .mnist import mnist_subset, small_mnist_net
from .show import clear_axes
from .weak_attack import EPS_GRID, sign_efficiency

EPS_2D = 1.0                         # radius of the disc and the square in the 2D picture
D_MNIST = 28 * 28
N_IMAGES = 200                       # attacked test images (the first of mnist_subset's)
ITERATIONS = 50                      # PGD iterations (lesson 4: 100; at steps 0.25 and 7 that moves
                                     # no accuracy at eps 0.5, 1, 2 by more than 1 point)
STEPS = (0.05, 0.25, 1.0, 7.0)       # l2 length of one PGD step; a sign step's entry is length/28
PAPER_STEP = 7.0                     # eq. (13)'s sign step 0.25 has l2 length 0.25 * 28 = 7
ATTACKS = ("sign PGD", "l2 PGD", "l2 PGD, random start", "strong")
COLOURS = {"sign PGD": "tab:orange", "l2 PGD": "tab:blue", "l2 PGD, random start": "tab:cyan",
           "strong": "tab:red"}
STYLE = {"sign PGD": "o-", "l2 PGD": "s-", "l2 PGD, random start": "^--", "strong": "-"}
MARKERS = {"sign PGD": "o", "l2 PGD": "s", "l2 PGD, random start": "^", "strong": "D"}


# ------------------------------------------------------------------ the steps and their gains

def steepest_step(g: torch.Tensor, step: float, p: float) -> torch.Tensor:
    """argmax of g^T d over ||d||_p <= step, for p = 2 (``step * g / ||g||_2``) or p = inf
    (``step * sign(g)``), per row of ``g`` (N, d): the direction PGD's step takes, before
    projection. Hoelder's inequality g^T d <= ||g||_q ||d||_p (1/p + 1/q = 1) is attained there."""
    if p == 2:
        return step * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    if p == math.inf:
        return step * torch.sign(g)
    raise ValueError(f"p must be 2 or math.inf, got {p}")


def gains(g: torch.Tensor, step: float, eps: float) -> dict[str, torch.Tensor]:
    """First-order gains g^T d per row of ``g`` (N, d) of one step from the centre of the l2
    ball of radius ``eps``: the l2 step and the sign step of nominal size ``step``, each
    projected onto the ball (:func:`lipcore.attacks.project_l2_ball`), and the largest gain any
    d in the ball can have, eps ||g||_2 (Cauchy-Schwarz). Also each step's l2 length before the
    projection (``step`` and ``step * sqrt(#nonzero g_i)``)."""
    l2, sign = steepest_step(g, step, 2), steepest_step(g, step, math.inf)
    l2_in, sign_in = project_l2_ball(l2, eps), project_l2_ball(sign, eps)
    return dict(l2=(g * l2_in).sum(-1), sign=(g * sign_in).sum(-1), best=eps * g.norm(dim=-1),
                l2_length=l2.norm(dim=-1), sign_length=sign.norm(dim=-1),
                l2_point=l2_in, sign_point=sign_in, sign_unprojected=sign)


def gradient_2d(angle: float) -> torch.Tensor:
    """The unit gradient (cos angle, sin angle), angle in degrees, with the rounding error of
    cos(90 deg) set to 0 so that sign() sees an exact axis as one."""
    rad = math.radians(angle)
    g = torch.tensor([math.cos(rad), math.sin(rad)], dtype=torch.float64)
    return torch.where(g.abs() < 1e-12, torch.zeros_like(g), g)


def gain_share_curve(step: float, eps: float = EPS_2D, resolution: float = 0.5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The projected sign step's first-order gain over eps ||g||_2, for unit gradients at
    every angle of a grid (degrees; the axes 0, 90, 180, 270 included exactly)."""
    angles = np.arange(0.0, 360.0 + resolution / 2, resolution)
    g = torch.stack([gradient_2d(a) for a in angles])
    out = gains(g, step, eps)
    return angles, (out["sign"] / out["best"]).numpy()


def _arrow(ax: plt.Axes, point: torch.Tensor, colour: str, **style) -> None:
    ax.annotate("", xy=tuple(point.tolist()), xytext=(0.0, 0.0),
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=style.pop("lw", 1.8),
                                shrinkA=0, shrinkB=0, **style))


def draw_steepest_2d(ax: plt.Axes, angle: float = 30.0, step: float = 1.0) -> dict:
    """Left: the l2 disc and the l-infinity square of radius EPS_2D, a unit gradient g at
    ``angle`` degrees, the maximiser of g^T d over each ball (stars), the l2 step
    ``step * g/||g||`` and the sign step ``step * sign(g)`` (dashed where it leaves the disc)
    with its projection onto the disc, and the level lines g^T d = const through what each
    projected step reaches. Right: the projected sign step's gain as a share of eps ||g||_2
    against the angle, at this step. Returns the gains, lengths and points drawn."""
    eps = EPS_2D
    g = gradient_2d(angle)
    out = {k: v[0] for k, v in gains(g[None], step, eps).items()}
    clear_axes(ax)
    plane, curve = ax.inset_axes((0.0, 0.0, 0.42, 0.88)), ax.inset_axes((0.71, 0.12, 0.29, 0.7))
    plane.add_patch(plt.Rectangle((-eps, -eps), 2 * eps, 2 * eps, fill=False, color="tab:orange",
                                  lw=1.0, alpha=0.6, label=r"$\|d\|_\infty \leq \epsilon$"))
    plane.add_patch(plt.Circle((0, 0), eps, fill=False, color="tab:blue", lw=1.0, alpha=0.6,
                               label=r"$\|d\|_2 \leq \epsilon$"))
    # level lines g^T d = c are perpendicular to g: points c g + t g_perp
    perp = torch.stack([-g[1], g[0]])
    t = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    for value, colour in ((float(out["l2"]), "tab:blue"), (float(out["sign"]), "tab:orange")):
        line = value * g[:, None] + perp[:, None] * t[None]
        plane.plot(line[0], line[1], ":", color=colour, lw=1.0)
    _arrow(plane, 1.45 * g, "0.4", lw=1.2)
    plane.annotate("g", tuple((1.5 * g).tolist()), color="0.3", fontsize=10)
    outside = float(out["sign_length"]) > eps
    _arrow(plane, out["sign_unprojected"], "tab:orange", lw=1.0, ls="--" if outside else "-")
    _arrow(plane, out["sign_point"], "tab:orange")
    _arrow(plane, out["l2_point"], "tab:blue")
    best_l2, best_linf = eps * g / g.norm(), eps * torch.sign(g)
    plane.plot(*best_l2.tolist(), "*", color="tab:blue", ms=12, label=r"$\epsilon\, g/\|g\|_2$")
    plane.plot(*best_linf.tolist(), "*", color="tab:orange", ms=12,
               label=r"$\epsilon\, \mathrm{sign}(g)$")
    plane.plot(*out["sign_point"].tolist(), "o", color="tab:orange", ms=5,
               label="sign step, projected")
    plane.plot(*out["l2_point"].tolist(), "s", color="tab:blue", ms=5, label="l2 step, projected")
    plane.set(xlim=(-2.1, 2.1), ylim=(-2.1, 2.1), aspect="equal", xticks=[-1, 0, 1],
              yticks=[-1, 0, 1])
    plane.axhline(0, color="0.85", lw=0.6, zorder=0)
    plane.axvline(0, color="0.85", lw=0.6, zorder=0)
    # beside the plane, not on it: at some angles the steps point into any corner of it
    plane.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    angles, share = gain_share_curve(step, eps)
    curve.plot(angles, share, color="tab:orange", lw=1.2, label="sign step, projected")
    curve.plot([angle % 360], [float(out["sign"] / out["best"])], "o", color="tab:orange")
    curve.axhline(1.0, color="tab:blue", lw=1.0, ls="--",
                  label=r"best in the disc, $\epsilon\|g\|_2$")
    curve.axhline(1 / math.sqrt(2), color="0.5", lw=0.8, ls=":", label=r"$1/\sqrt{2}$")
    curve.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                 frameon=False)               # above the panel: the curve can lie anywhere
    curve.set(xlim=(0, 360), ylim=(0.0, 1.05), xticks=range(0, 361, 90),
              xlabel="angle of g (degrees)", ylabel=r"sign gain / $\epsilon\|g\|_2$")
    between = math.degrees(math.acos(max(-1.0, min(1.0, float(
        (out["sign_point"] @ g) / out["sign_point"].norm().clamp_min(1e-30))))))
    shown = dict(angle=float(angle), step=float(step), eps=eps, g=g.numpy(),
                 l2_gain=float(out["l2"]), sign_gain=float(out["sign"]),
                 best_gain=float(out["best"]), l2_length=float(out["l2_length"]),
                 sign_length=float(out["sign_length"]), sign_outside=outside,
                 l2_point=out["l2_point"].numpy(), sign_point=out["sign_point"].numpy(),
                 angle_between=between, share_curve=share)
    where = "projected onto the disc" if outside else "inside the disc"
    ax.set_title(f"g at {angle:g} deg, step {step:g}: the sign step has l2 length "
                 f"{shown['sign_length']:.2f} ({where})\nfirst-order gain: l2 step "
                 f"{shown['l2_gain']:.2f}, sign step {shown['sign_gain']:.2f}, best in the disc "
                 f"{shown['best_gain']:.2f}; the two steps are {between:.0f} deg apart", fontsize=9)
    return shown


# ------------------------------------------------------------------ PGD on a small MNIST net

def _images() -> tuple[torch.Tensor, torch.Tensor]:
    _, test = mnist_subset()
    x, y = (t[:N_IMAGES] for t in test.tensors)
    return x, y


def pgd_radii(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str,
              step: float, random_start: bool = False) -> torch.Tensor:
    """Per image, the smallest eps of EPS_GRID at which ``pgd_l2(variant, step)`` (ITERATIONS
    iterations, lipcore's) breaks it (0: wrong without attack; inf: never): lipcore's
    :func:`breaking_radii` with these PGD options."""
    return breaking_radii(net, (x, y), EPS_GRID, "paper pgd", iterations=ITERATIONS,
                          pgd=dict(variant=variant, step=step, random_start=random_start,
                                   generator=torch.Generator().manual_seed(0)))


@functools.lru_cache(maxsize=1)
def strong_radii() -> torch.Tensor:
    """Breaking radii under APGD-CE + APGD-DLR (50 iterations; AutoAttack's implementation)."""
    x, y = _images()
    with quiet():
        return breaking_radii(small_mnist_net("standard"), (x, y), EPS_GRID, "strong",
                              iterations=50, attacks=APGD)


@functools.lru_cache(maxsize=None)
def attack_sweep(step: float) -> dict[str, torch.Tensor]:
    """Breaking radii of every attack of ATTACKS on the first N_IMAGES test images, PGD with
    steps of l2 length ``step`` (sign steps of entry ``step / 28``). Cached per step."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS} (the precomputed settings), got {step}")
    net = small_mnist_net("standard")
    x, y = _images()
    return {"sign PGD": pgd_radii(net, x, y, "paper", step / math.sqrt(D_MNIST)),
            "l2 PGD": pgd_radii(net, x, y, "l2", step),
            "l2 PGD, random start": pgd_radii(net, x, y, "l2", step, random_start=True),
            "strong": strong_radii()}


def sweep_all() -> float:
    """Compute (and cache) every step of STEPS so that the controls only draw; seconds taken."""
    start = time.perf_counter()
    for step in STEPS:
        attack_sweep(step)
    return time.perf_counter() - start


def accuracy(radii: torch.Tensor, eps: float) -> float:
    """Accuracy (%) at eps: the share of images whose breaking radius exceeds it."""
    return 100.0 * float((radii > eps).double().mean())


@functools.lru_cache(maxsize=1)
def first_steps(eps: float = 2.0) -> dict[str, torch.Tensor]:
    """On the attacked images, with g the loss gradient at each clean image: the largest
    first-order gain in the ball, eps ||g||_2 (``best``), the sign-step efficiency
    ||g||_1 / (sqrt(d) ||g||_2) (:func:`lipcore.lessons.weak_attack.sign_efficiency`),
    and the first-order gain g^T delta of one iteration of lipcore's ``pgd_l2`` at ``eps``
    (sign step 0.25, l2 step eps), with and without the clamp to [0, 1] that pgd_l2 applies."""
    net = small_mnist_net("standard")
    x, y = _images()
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xg), y, reduction="sum"), xg)
    g = g.flatten(1)
    out = dict(efficiency=sign_efficiency(net, x, y), best=eps * g.norm(dim=1))
    for name, variant, step in (("sign", "paper", 0.25), ("l2", "l2", eps)):
        delta = (pgd_l2(net, x, y, eps=eps, step=step, iterations=1, variant=variant) - x)
        out[f"{name}_clamped"] = (g * delta.flatten(1)).sum(1)
        free = project_l2_ball(steepest_step(g, step, 2 if variant == "l2" else math.inf), eps)
        out[name] = (g * free).sum(1)
    return out


@functools.lru_cache(maxsize=None)
def distance_reached(variant: str, step: float, eps: float = 2.0) -> torch.Tensor:
    """Per image, ||x_adv - x||_2 after ITERATIONS iterations of lipcore's ``pgd_l2`` (``variant``
    "paper" with entries ``step / 28``, or "l2" with ``step``: l2 length ``step`` either way) at
    ``eps``: how far into the ball the attack got."""
    x, y = _images()
    size = step / math.sqrt(D_MNIST) if variant == "paper" else step
    adv = pgd_l2(small_mnist_net("standard"), x, y, eps=eps, step=size, iterations=ITERATIONS,
                 variant=variant)
    return (adv - x).flatten(1).norm(dim=1)


def draw_attacks_against_eps(ax: plt.Axes, eps: float = 1.0, step: float = PAPER_STEP) -> dict:
    """Left: accuracy against eps under every attack of ATTACKS, PGD at steps of l2 length
    ``step``; the dotted line is ``eps`` (snapped to EPS_GRID). Right: accuracy at ``eps``
    against the step's l2 length for the three PGD attacks, the strong one as a line. Returns
    the accuracy (%) under each attack at (eps, step) and the curves drawn."""
    eps = min(EPS_GRID, key=lambda e: abs(e - eps))
    sweep = attack_sweep(step)
    clear_axes(ax)
    left, right = ax.inset_axes((0.0, 0.0, 0.44, 0.86)), ax.inset_axes((0.56, 0.0, 0.44, 0.86))
    grid = np.linspace(0.0, max(EPS_GRID), 121)
    curves = {}
    measured = (0.0, *EPS_GRID)                  # the clean accuracy and the grid's radii
    for name in ATTACKS:
        curves[name] = [accuracy(sweep[name], e) for e in grid]
        left.step(grid, curves[name], where="post", color=COLOURS[name], label=name,
                  lw=1.6 if name == "strong" else 1.2, ls="--" if "random" in name else "-")
        left.plot(measured, [accuracy(sweep[name], e) for e in measured], MARKERS[name],
                  color=COLOURS[name], ms=3.5)     # where an attack ran (the last one at 3)
    left.axvline(eps, color="k", lw=0.8, ls=":")
    left.set(xlabel=r"l2 radius $\epsilon$", ylabel="accuracy (%)", ylim=(0, 100),
             xlim=(0, max(EPS_GRID) + 0.1))
    # one legend for both panels, where no curve goes (every accuracy at eps <= 1 is above 35%)
    left.legend(handles=[Line2D([], [], color=COLOURS[n], ls="--" if "random" in n else "-",
                                marker=MARKERS[n] if n == "strong" else STYLE[n][0], ms=4,
                                label=n) for n in ATTACKS], fontsize=7, loc="lower left",
                title="both panels", title_fontsize=7)
    at_steps = {name: [accuracy(attack_sweep(s)[name], eps) for s in STEPS]
                for name in ATTACKS[:3]}
    for name, values in at_steps.items():
        right.plot(STEPS, values, STYLE[name], color=COLOURS[name], ms=4, label=name)
    right.axhline(accuracy(sweep["strong"], eps), color=COLOURS["strong"], label="strong")
    right.axvline(step, color="k", lw=0.8, ls=":")
    right.set(xscale="log", xlabel="l2 length of one PGD step",
              ylabel=f"accuracy at eps {eps:g} (%)", ylim=(0, 100), xticks=STEPS,
              xticklabels=[f"{s:g}" for s in STEPS])
    shown = {name: accuracy(sweep[name], eps) for name in ATTACKS}
    ax.set_title(f"eps {eps:g}, {ITERATIONS} PGD steps of l2 length {step:g} (sign entries "
                 f"{step / math.sqrt(D_MNIST):.3g})\naccuracy under sign PGD "
                 f"{shown['sign PGD']:.3g}%, l2 PGD {shown['l2 PGD']:.3g}%, l2 PGD from a random "
                 f"start {shown['l2 PGD, random start']:.3g}%, strong {shown['strong']:.3g}%",
                 fontsize=9)
    return dict(eps=eps, step=step, accuracy=shown, at_steps=at_steps, curves=curves, grid=grid)
