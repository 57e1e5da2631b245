"""LipLT (Fazlyab, Entesari et al. 2023, Section 3): Lipschitz bounds by loop transformation, for
fully connected nets, differentiable in the weights, with pairwise constants of logit differences.

Net (eq. (17) with H_k = 0, G_k = I): y_k = W_k x_k, x_{k+1} = phi(y_k) for k = 0..L-1, logits
y_L = W_L x_L, with phi slope-restricted in [alpha, beta], alpha >= 0. Loop transformation writes
phi(y) = (alpha + beta)/2 y + psi(y) with psi (beta - alpha)/2-Lipschitz; with
H^_k = (alpha + beta)/2 W_k, Theorem 3.3 gives Lipschitz constants m_k of x_0 -> y_k:

    m_0 = ||W_0||,
    m_{k+1} = ||W_{k+1} H^_k ... H^_0|| + (beta - alpha)/2 sum_{j=0}^{k} ||W_{k+1} H^_k ... H^_{j+1}|| m_j.

For one hidden layer this is eq. (15): ||(alpha + beta)/2 W_1 W_0|| + (beta - alpha)/2 ||W_1|| ||W_0||.
Pairwise constants L_ij of z_i - z_j run the last step with the row (e_i - e_j)^T W_L instead of
W_L, so the last layer is exact (vector norms). Proxies: L_i + L_j (rows e_i^T W_L) and
sqrt(2) m_L; L_ij is never above either. Every norm here is of a materialised matrix, computed
exactly (torch.linalg.matrix_norm), so the bounds are sound and differentiable; conv nets (power
iteration on operators) are not covered yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class LipLTResult:
    """LipLT bounds of one net: ``L`` for the whole logit map, ``pairwise[i, j]`` for z_i - z_j
    (0 on the diagonal), ``per_class[i]`` for z_i alone. Tensors keep the weights' graph."""

    L: torch.Tensor
    pairwise: torch.Tensor
    per_class: torch.Tensor
    hidden: list[torch.Tensor]        # m_0 ... m_{L-1}


def _as_tensors(weights: Sequence) -> list[torch.Tensor]:
    out = [w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w)) for w in weights]
    if len(out) < 2:
        raise ValueError("LipLT needs at least one hidden layer (two weight matrices)")
    for i, (a, b) in enumerate(zip(out[:-1], out[1:])):
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"weights {i} and {i + 1} do not chain: shapes {tuple(a.shape)} and "
                             f"{tuple(b.shape)} (each W^k must be (n_out, n_in))")
    return out


def _last_step(final: torch.Tensor, chains: list[torch.Tensor], hidden: list[torch.Tensor],
               c: float) -> torch.Tensor:
    """m for the rows of ``final`` (one bound per row block): ``chains[0]`` is the full product
    H^_{L-1} ... H^_0, ``chains[j + 1]`` is H^_{L-1} ... H^_{j+1}."""
    value = torch.linalg.matrix_norm(final @ chains[0], ord=2)
    for j, m_j in enumerate(hidden):
        value = value + c * torch.linalg.matrix_norm(final @ chains[j + 1], ord=2) * m_j
    return value


def liplt(weights: Sequence, alpha: float = 0.0, beta: float = 1.0) -> LipLTResult:
    """LipLT bounds (module docstring) of a fully connected net with weights W^0 ... W^L
    (torch tensors keep their graph; numpy arrays are converted)."""
    if not 0 <= alpha <= beta or not math.isfinite(beta):
        raise ValueError(f"need 0 <= alpha <= beta < inf, got alpha={alpha}, beta={beta}")
    W = _as_tensors(weights)
    mid, c = (alpha + beta) / 2, (beta - alpha) / 2
    hidden = [torch.linalg.matrix_norm(W[0], ord=2)]
    eye = torch.eye(W[0].shape[0], dtype=W[0].dtype, device=W[0].device)
    chains = [mid * W[0], eye]                 # H^_k ... H^_0, then H^_k ... H^_{j+1} for j = 0..k
    for k in range(1, len(W) - 1):
        hidden.append(_last_step(W[k], chains, hidden, c))
        h = mid * W[k]
        chains = [h @ a for a in chains] + [torch.eye(W[k].shape[0], dtype=W[k].dtype,
                                                      device=W[k].device)]
    final = W[-1]
    classes = final.shape[0]
    L = _last_step(final, chains, hidden, c)
    per_class = _last_step(final.unsqueeze(1), chains, hidden, c)           # rows e_i^T W_L
    diffs = final.unsqueeze(1) - final.unsqueeze(0)                          # (C, C, n_L)
    pairwise = _last_step(diffs.reshape(classes * classes, 1, -1), chains, hidden, c)
    pairwise = pairwise.reshape(classes, classes)
    return LipLTResult(L, torch.maximum(pairwise, pairwise.T), per_class, hidden)  # rounding


def naive_pairwise(weights: Sequence, beta: float = 1.0) -> torch.Tensor:
    """The naive counterpart of L_ij: prod_{k < L} ||W_k|| beta^L ||w_i - w_j||."""
    W = _as_tensors(weights)
    body = math.prod(float(torch.linalg.matrix_norm(w, ord=2)) for w in W[:-1]) * beta ** (len(W) - 1)
    final = W[-1]
    return body * (final.unsqueeze(1) - final.unsqueeze(0)).norm(dim=2)
