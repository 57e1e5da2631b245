"""Robustness against eps: for each sample, the smallest radius of a grid at which an attack
breaks it. Each radius attacks only the survivors of the smaller ones (a point within the smaller
ball lies within the larger), so a sweep costs little more than its largest radius."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .ensemble import DEFAULT_ATTACKS, predict, as_tensors, robust_accuracy
from .pgd import pgd_l2

SWEEP_ATTACKS = ("strong", "paper pgd")
BATCH = 500                        # predictions in batches, as robust_accuracy makes them


def breaking_radii(model: nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
                   eps_grid: Sequence[float], attack: str = "strong", iterations: int = 100,
                   seed: int = 0, attacks: Sequence[str] = DEFAULT_ATTACKS,
                   pgd: dict | None = None) -> torch.Tensor:
    """Per sample, the smallest eps of ``eps_grid`` at which ``attack`` finds a misclassified
    point in the l2 ball (0 for a sample misclassified without attack, inf where no eps of the
    grid breaks it): an upper bound on its robust radius, so the accuracy at eps is the share
    with a breaking radius > eps. ``attack``: ``"strong"`` (the ensemble ``attacks`` of
    :func:`robust_accuracy`) or ``"paper pgd"`` (Bungert et al. eq. (13), step 0.25; ``pgd``
    overrides :func:`pgd_l2`'s options, e.g. ``dict(variant="l2", step=0.5)``)."""
    if attack not in SWEEP_ATTACKS:
        raise ValueError(f"attack must be one of {SWEEP_ATTACKS}, got {attack!r}")
    grid = sorted(float(e) for e in eps_grid)
    if not grid or grid[0] <= 0 or not all(math.isfinite(e) for e in grid):
        raise ValueError(f"eps_grid must hold finite radii > 0, got {list(eps_grid)}")
    x, y = as_tensors(data)
    model.eval()
    device = str(x.device)
    correct = predict(model, x, device, BATCH) == y
    radii = torch.where(correct, math.inf, 0.0).double()
    for eps in grid:
        alive = torch.nonzero(torch.isinf(radii)).flatten()
        if not len(alive):
            break
        if attack == "strong":
            robust = robust_accuracy(model, (x[alive], y[alive]), eps=eps,
                                     attacks=attacks, iterations=iterations, seed=seed,
                                     progress=False).robust
        else:
            adv = pgd_l2(model, x[alive], y[alive], eps=eps, iterations=iterations,
                         **{"step": 0.25, **(pgd or {})})
            robust = predict(model, adv, device, BATCH) == y[alive]
        radii[alive[~robust]] = eps
    return radii
