"""Per-class certified radii from logit margins and Lipschitz bounds: what a certificate checks
(:mod:`lipcore.certify`) and what CRM's loss maximises (:mod:`lipcore.trainers.crm`).

A module of its own so that training CRM imports this formula, not the certificates' machinery
(and with it the attacks): a trained net's cache key covers only the code its training runs.
"""
from __future__ import annotations

import math

import torch


def margin_radii(logits: torch.Tensor, labels: torch.Tensor, pairwise: torch.Tensor,
                 allowance: torch.Tensor | float = 0.0) -> torch.Tensor:
    """R_j = (z_y - z_j - allowance) / L_yj for every sample and class, +inf at j = y.
    ``pairwise`` is a (C, C) matrix of bounds on z_i - z_j, or one number for every pair
    (sqrt(2) L); ``allowance`` (per sample) covers float error in the logits. The certified
    radius is min_j R_j; CRM's loss uses the R_j themselves (differentiably: the zero diagonal of
    L is clamped so that no 0/0 enters the graph)."""
    gaps = logits.gather(1, labels[:, None]) - logits
    if torch.is_tensor(allowance) or allowance != 0:
        gaps = gaps - torch.as_tensor(allowance, dtype=gaps.dtype).reshape(-1, 1)
    scale = pairwise[labels] if pairwise.dim() == 2 else pairwise
    return (gaps / scale.clamp_min(1e-12)).scatter(1, labels[:, None], math.inf)
