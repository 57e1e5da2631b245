"""Sound norms of products of linear operators (dense layers, zero-padded convolutions) that are
never written down as one matrix: their Gram matrices are built column by column in float64.

* :func:`product_norm`: ||A|| for A = W_K ... W_s from the Gram matrix on A's smaller side.
* :func:`factored_product_norm`: ||B C|| for a product whose sides are both large but which
  passes through a small middle (a strided conv's output): with G_C = C C^T + tau I = L L^T
  (tau >= 0 makes it positive definite and only raises the bound), ||B C||^2 = lambda_max(B G_C
  B^T) <= lambda_max(L^T (B^T B) L), two m x m Gram matrices for a middle of size m.
* :func:`lambda_max_bound`: the top eigenvalue of a symmetric PSD matrix from above: Lanczos
  (scipy's eigsh) estimates it, and a Cholesky factorisation of c I - M proves c is an upper
  bound. A Cholesky that succeeds in floating point proves c I - M + E positive definite with
  ||E|| <= about (n + 1) eps (c + ||M||) (Demmel 1989), far below the callers' SAFETY inflation,
  and it costs n^3 / 3 flops against about 9 n^3 for eigvalsh.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch.nn import functional as F

MARGINS = (1e-9, 1e-7, 1e-5, 1e-3)        # relative margins above the Lanczos estimate, in turn


class Operator(Protocol):
    """What a product needs of each factor (:class:`lipcore.estimators.liplt_ops.LinearOp`)."""

    in_dim: int
    out_dim: int

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...


def lambda_max_bound(M: torch.Tensor) -> float:
    """An upper bound on the largest eigenvalue of the symmetric PSD float64 matrix ``M``,
    proved by a Cholesky factorisation of c I - M (module docstring); eigvalsh if no margin of
    MARGINS is proved (never seen, but rounding is not a theorem)."""
    n = len(M)
    if n <= 64:
        return float(torch.linalg.eigvalsh(M)[-1].clamp_min(0.0))
    top = float(torch.diagonal(M).max().clamp_min(0.0))
    if top == 0.0:
        return 0.0
    estimate = float(eigsh(M.cpu().numpy(), k=1, which="LA", tol=1e-10,
                           v0=np.ones(n), return_eigenvectors=False)[0])
    estimate = max(estimate, top)                  # lambda_max >= the largest diagonal entry
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    for margin in MARGINS:
        c = estimate * (1.0 + margin)
        if int(torch.linalg.cholesky_ex(c * eye - M).info) == 0:
            return c
    return float(torch.linalg.eigvalsh(M)[-1].clamp_min(0.0))


def _through(ops: Sequence[Operator], x: torch.Tensor, adjoint: bool) -> torch.Tensor:
    for op in (reversed(ops) if adjoint else ops):
        x = op.adjoint(x) if adjoint else op.apply(x)
    return x.flatten(1)


def gram(ops: Sequence[Operator], side: str, batch: int = 512) -> torch.Tensor:
    """A A^T (``side="out"``, on A's output space) or A^T A (``"in"``) for A = ops[-1] ... ops[0]
    in float64, from ``batch`` unit vectors at a time: either A's rows (or columns) from one pass
    and then one matrix product, or both passes (A (A^T e)) and no product, whichever costs less
    (:func:`_one_pass_is_cheaper`)."""
    n = ops[-1].out_dim if side == "out" else ops[0].in_dim
    device = _device(ops)
    one_pass = _one_pass_is_cheaper(ops, n)
    parts = []
    for i in range(0, n, batch):
        e = F.one_hot(torch.arange(i, min(i + batch, n), device=device), n).to(torch.float64)
        x = _through(ops, e, adjoint=side == "out")
        parts.append(x if one_pass else _through(ops, x, adjoint=side != "out"))
    G = torch.cat(parts)
    if one_pass:
        return G @ G.T
    return (G + G.T) / 2                          # symmetric up to rounding; make it exactly so


CONV_PENALTY = 4.0          # a float64 conv does about this many times fewer flops/s than a GEMM


def _one_pass_is_cheaper(ops: Sequence[Operator], n: int) -> bool:
    """One pass plus an n x n product (n^2 N multiply-adds, N the other side) against a second
    pass through the operators (n times their multiply-adds, convs penalised)."""
    other = ops[0].in_dim + ops[-1].out_dim - n
    macs = sum(op.out_dim * (op.weight[0].numel() if getattr(op, "is_conv", False)
                             else op.in_dim) for op in ops)
    return n * other < CONV_PENALTY * macs


def _device(ops: Sequence[Operator]) -> torch.device:
    return next(o.weight.device for o in ops if hasattr(o, "weight"))


def product_norm(ops: Sequence[Operator], batch: int = 512) -> float:
    """||ops[-1] ... ops[0]|| from its Gram matrix on the smaller side (float64, unrounded)."""
    side = "in" if ops[0].in_dim <= ops[-1].out_dim else "out"
    return float(np.sqrt(lambda_max_bound(gram(ops, side, batch))))


def factored_product_norm(ops: Sequence[Operator], split: int, batch: int = 512) -> float:
    """An upper bound on ||B C|| with C = ops[:split], B = ops[split:] through the middle of
    size ops[split].in_dim (module docstring): exact up to tau and rounding."""
    C, B = ops[:split], ops[split:]
    G_C = gram(C, "out", batch)
    tau = 1e-12 * float(torch.diagonal(G_C).max())
    eye = torch.eye(len(G_C), dtype=G_C.dtype, device=G_C.device)
    for _ in range(4):
        L, info = torch.linalg.cholesky_ex(G_C + tau * eye)
        if int(info) == 0:
            break
        tau *= 100.0
    else:
        raise FloatingPointError("the middle Gram matrix has no Cholesky factor even with "
                                 f"tau = {tau:g}; use the split bound instead")
    S = L.T @ gram(B, "in", batch) @ L
    return float(np.sqrt(lambda_max_bound((S + S.T) / 2)))
