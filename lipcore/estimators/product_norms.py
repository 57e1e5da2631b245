"""Sound norms of products of linear operators (dense layers, zero-padded convolutions) that are
never written down as one matrix, in float64.

:func:`sweep_norms` bounds ||A_K|| for every prefix A_K = W_K ... W_0 of a chain in one forward
sweep. It carries a matrix Z whose r rows live in the current layer's space, with
Z^T Z >= A_{K-1} A_{K-1}^T (equal up to tau, below); at the start Z = I. One step computes
Y = Z W_K^T (each row through W_K), so that Y^T Y >= A_K A_K^T and ||A_K||^2 <= lambda_max(Y Y^T)
= lambda_max(Y^T Y), taken on the smaller side. When the layer's output is narrower than r, the
rows are compressed: with Y^T Y + tau I = L L^T (Cholesky, tau >= 0 only raises the bounds),
Z = L^T has as many rows as the narrow layer has dimensions and the same Z^T Z. So every product
costs one Gram matrix of the size of its narrowest point, however large its two ends, and the
operators of a start are applied once for all its ends.

* :func:`banded_gram`: the first Gram matrix of a sweep, W W^T or W^T W of a convolution, from a
  few probes: two positions further apart than the product's receptive field never interact, so
  one probe per channel and colour class of a distance-2 colouring of the grid recovers every
  column (Curtis, Powell and Reid 1974), e.g. 288 probes instead of 8,192 one-hot vectors for a
  stride-2 4x4 conv with 32 output channels on a 16 x 16 grid.
* :func:`lambda_max_bound`: the top eigenvalue of a symmetric PSD matrix from above: Lanczos
  (scipy's eigsh, in float32: it only guesses; eigvalsh up to 64 rows) estimates it, and a
  Cholesky factorisation of c I - M in float64 proves c, a little above the guess, is an upper
  bound once c is raised by the factorisation's own error (below); it costs n^3 / 3 flops
  against about 9 n^3 for eigvalsh. If no margin is proved (never seen), trace(M) bounds it.

Rounding (theorems, Higham 2002, eq. (3.13) and Thm 10.3, u = 2^-53, no underflow): a Cholesky
of an n x n matrix A that runs to completion gives R^T R = A + E with |E| <= gamma_{n+1} |R^T|
|R|, so ||E||_2 <= || |R| ||_F^2 gamma_{n+1} <= gamma_{n+1} trace(A) / (1 - gamma_{n+1}); a
Gram matrix of k-term dot products is off by at most gamma_k trace(G) in the same way.
:func:`_float_slack` turns these into amounts added to every proved eigenvalue bound, to every
norm (the Gram matrix's own error: :func:`gram_norm`) and to every compression's tau, so that
the norms bound the exact Gram matrices of the rows the sweep computed, and Z^T Z >= those
(at n = 8,192 the amounts are about 1e-8 relative). The remaining rounding, in applying the
operators to the rows, is the callers' SAFETY inflation.
"""
from __future__ import annotations

import math
import time
from typing import Protocol, Sequence

import numpy as np
import torch
from scipy.linalg.blas import dsyrk
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

MARGINS = (1e-6, 1e-5, 1e-3, 1e-1)        # relative margins above the Lanczos estimate, in turn
SMALL_MARGINS = (1e-12, 1e-9) + MARGINS    # above eigvalsh's, which is accurate to rounding
SMALL = 64                                 # rows up to which eigvalsh gives the estimate
ROW_LIMIT = 2 ** 28                         # entries of the swept rows (2 GiB in float64)
BATCH = 512                                 # rows through an operator at a time
UNIT = 2.0 ** -53                           # float64's unit roundoff


class _OutOfTime(Exception):
    """A sweep's deadline passed inside a step (raised between batches of rows)."""


class Operator(Protocol):
    """What a product needs of each factor (:class:`lipcore.estimators.liplt_ops.LinearOp`)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dim: int
    out_dim: int

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...


def lambda_max_bound(M: torch.Tensor) -> float:
    """An upper bound on the largest eigenvalue of the symmetric float64 matrix ``M`` (PSD, with
    a non-negative diagonal), proved by a Cholesky factorisation of c I - M (module docstring);
    trace(M), raised by its summation error, if no margin is proved (never seen, but rounding
    is not a theorem)."""
    n = len(M)
    top = float(torch.diagonal(M).max().clamp_min(0.0))
    if top == 0.0:                                 # a PSD matrix with a zero diagonal is zero
        return 0.0
    estimate, margins = None, SMALL_MARGINS
    if n > SMALL:
        try:
            estimate = float(eigsh(M.cpu().float().numpy(), k=1, which="LA", tol=1e-7,
                                   v0=np.ones(n, dtype=np.float32), return_eigenvectors=False)[0])
            margins = MARGINS
        except ArpackNoConvergence:
            pass
    if estimate is None:
        estimate = float(torch.linalg.eigvalsh(M)[-1])
    estimate = max(estimate, top)                  # lambda_max >= the largest diagonal entry
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    for margin in margins:
        c = estimate * (1.0 + margin)
        if int(torch.linalg.cholesky_ex(c * eye - M).info) == 0:
            return c + _float_slack(n * c, n + 1)        # trace(c I - M) <= n c
    trace = float(torch.diagonal(M).sum())
    return trace + _float_slack(trace, n)


def gram_norm(G: torch.Tensor, terms: int) -> float:
    """An upper bound on the 2-norm of the rows whose Gram matrix ``G`` was computed from
    ``terms``-term dot products: the square root of :func:`lambda_max_bound` plus G's own
    rounding error (Weyl's inequality)."""
    trace = float(torch.diagonal(G).sum())
    return float(np.sqrt(lambda_max_bound(G) + _float_slack(trace, terms)))


def _float_slack(trace: float, terms: int) -> float:
    """Twice gamma_terms trace / (1 - gamma_terms): a bound on the 2-norm of the rounding error
    of a Cholesky (terms = n + 1) or a Gram matrix of ``terms``-term dot products whose matrix
    has this trace (module docstring); twice, so that rounding in this sum is covered too."""
    if terms * UNIT >= 0.25:
        raise FloatingPointError(f"no rounding bound for sums of {terms} terms in float64")
    gamma = terms * UNIT / (1 - terms * UNIT)
    return 2.0 * gamma * trace / (1.0 - gamma)


def row_gram(Y: torch.Tensor, side: str) -> torch.Tensor:
    """Y Y^T (``side="rows"``) or Y^T Y (``"columns"``) of a float64 matrix, by BLAS syrk (one
    triangle: half a general product's flops), made exactly symmetric."""
    if Y.device.type != "cpu":
        G = Y @ Y.T if side == "rows" else Y.T @ Y
        return (G + G.T) / 2
    a = Y.contiguous().numpy().T                   # Fortran order: no copy for BLAS
    upper = torch.from_numpy(dsyrk(1.0, a, trans=1 if side == "rows" else 0))
    return upper.triu() + upper.triu(1).T


def _grid(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of a layer's space; a flat (dense) space is n channels on 1 x 1."""
    return tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)


def interaction_radius(ops: Sequence[Operator], side: str) -> tuple[int, int] | None:
    """The largest grid distance (per axis) at which two positions of the Gram matrix of
    ops[-1] ... ops[0] on ``side`` ("out": A A^T, "in": A^T A) can be non-zero, from the
    receptive field (width w in the input, step S): outputs interact when their windows
    overlap (|d| S < w), inputs when one window holds both (|d| < w). None for dense layers."""
    if any(getattr(op, "stride", None) is None for op in ops):
        return None
    radius = []
    for axis in range(2):
        S, w = 1, 1
        for op in reversed(ops):
            S, w = S * op.stride[axis], op.stride[axis] * (w - 1) + op.weight.shape[2 + axis]
        radius.append((w - 1) // S if side == "out" else w - 1)
    return radius[0], radius[1]


def _owners(size: int, colour: int, period: int, radius: int) -> torch.Tensor:
    """For each position of an axis, the member of colour class ``colour`` (positions colour,
    colour + period, ...) within ``radius`` of it, or -1; at most one exists."""
    owner = torch.full((size,), -1, dtype=torch.long)
    for member in range(colour, size, period):
        near = slice(max(0, member - radius), min(size, member + radius + 1))
        assert bool((owner[near] == -1).all()), "colour classes closer than twice the radius"
        owner[near] = member
    return owner


def banded_gram(ops: Sequence[Operator], side: str, row_limit: int = ROW_LIMIT,
                deadline: float = math.inf) -> torch.Tensor:
    """A A^T (``side="out"``) or A^T A (``"in"``) of A = ops[-1] ... ops[0] in float64, from
    A A^T p (or A^T A p) for one probe p per channel and colour class (module docstring). Where
    colouring saves nothing (dense layers, or a receptive field as wide as the grid), the unit
    vectors make one pass instead, X = their images (A's rows or columns), and G = X X^T: half
    the passes, and a cheap product when this side is the small one. Raises _OutOfTime between
    batches of probes once ``time.monotonic()`` passes ``deadline``."""
    shape = ops[-1].out_shape if side == "out" else ops[0].in_shape
    C, H, W = _grid(shape)
    radius = interaction_radius(ops, side) or (H, W)
    period = (min(2 * radius[0] + 1, H), min(2 * radius[1] + 1, W))
    n = C * H * W
    other = ops[0].in_dim if side == "out" else ops[-1].out_dim
    if period == (H, W) and n * other <= row_limit:
        return row_gram(_one_pass(ops, n, side, deadline), "rows")
    G = torch.zeros(n, n, dtype=torch.float64, device=ops[0].weight.device)
    channel = torch.arange(C, device=G.device)
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for a in range(period[0]):
        for b in range(period[1]):
            rows, cols = _owners(H, a, period[0], radius[0]), _owners(W, b, period[1], radius[1])
            probes = torch.zeros(C, C, H, W, dtype=torch.float64, device=G.device)
            probes[channel, channel, a::period[0], b::period[1]] = 1.0
            seen = _gram_apply(ops, probes.reshape(C, *shape), side, deadline
                               ).reshape(C, C, H * W)
            valid = ((rows[y] >= 0) & (cols[x] >= 0)).flatten().to(G.device)
            here = (y * W + x).flatten().to(G.device)[valid]
            owner = (rows[y] * W + cols[x]).flatten().to(G.device)[valid]
            # G[(c', here), (c, owner)] = response at (c', here) to the probe of channel c
            G[(channel[:, None, None] * H * W + here).expand(C, C, -1),
              (channel[None, :, None] * H * W + owner).expand(C, C, -1)] = \
                seen[:, :, valid].permute(1, 0, 2)
    return (G + G.T) / 2


def _one_pass(ops: Sequence[Operator], n: int, side: str, deadline: float) -> torch.Tensor:
    """The n x other matrix of A^T e_i (``"out"``) or A e_i (``"in"``)."""
    eye = torch.eye(n, dtype=torch.float64, device=ops[0].weight.device)
    return _in_batches(lambda chunk: _across(ops, chunk, side), eye, deadline)


def _gram_apply(ops: Sequence[Operator], x: torch.Tensor, side: str, deadline: float
                ) -> torch.Tensor:
    """A A^T x (``"out"``) or A^T A x (``"in"``)."""
    return _in_batches(lambda chunk: _across(ops, _across(ops, chunk, side), side, back=True), x,
                       deadline)


def _across(ops: Sequence[Operator], x: torch.Tensor, side: str, back: bool = False
            ) -> torch.Tensor:
    """From ``side`` of A to the other side (A^T x from "out", A x from "in"), or ``back``."""
    if (side == "out") != back:
        for op in reversed(ops):
            x = op.adjoint(x)
        return x
    for op in ops:
        x = op.apply(x)
    return x


def _check(deadline: float) -> None:
    """Raise _OutOfTime once ``time.monotonic()`` has reached ``deadline``."""
    if time.monotonic() >= deadline:
        raise _OutOfTime


def _in_batches(fn, x: torch.Tensor, deadline: float = math.inf) -> torch.Tensor:
    """fn applied to the rows of x, BATCH at a time, as flat rows; _OutOfTime before a batch
    that would start at or after ``deadline``."""
    out = []
    for chunk in x.split(BATCH):
        _check(deadline)
        out.append(fn(chunk).flatten(1))
    return torch.cat(out)


def _compressed(G: torch.Tensor, terms: int) -> torch.Tensor:
    """Z with Z^T Z >= G + the rounding error of G (a Gram matrix of ``terms``-term dot
    products): Z = R of a Cholesky of G + tau I, with tau at least the error of G and of the
    factorisation (:func:`_float_slack`) and 1e-12 * max diag G, times the least power of 100
    that makes it positive definite. These rows replace a wide matrix of Gram G."""
    n = len(G)
    trace = float(torch.diagonal(G).sum())
    # tau covers E of a Cholesky of G + tau I, whose trace is trace + n tau: solve for tau
    slack = _float_slack(trace, terms) + _float_slack(trace, n + 1)
    shrink = 1.0 - n * _float_slack(1.0, n + 1)
    if shrink < 0.5:
        raise FloatingPointError(f"no rounding bound for a Cholesky of {n} rows in float64")
    tau = max(1e-12 * float(torch.diagonal(G).max().clamp_min(1e-300)), slack / shrink)
    eye = torch.eye(n, dtype=G.dtype, device=G.device)
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(G + tau * eye)
        if int(info) == 0:
            return L.T.contiguous()
        tau *= 100.0
    raise FloatingPointError(f"a Gram matrix has no Cholesky factor even with tau = {tau:g}")


def _widens_then_narrows(ops: Sequence[Operator]) -> bool:
    """Whether ops[0] widens its input and ops[1] narrows below it: then the first Gram matrix is
    cheaper on ops[1]'s output (fewer rows, none carried through the wide layer), at the price of
    ops[0]'s own norm, which the caller bounds alone (exactly for a dense layer, by the DFT for a
    convolution)."""
    return (len(ops) > 1 and ops[0].out_dim > ops[0].in_dim
            and ops[1].out_dim < ops[0].in_dim)


def sweep_norms(ops: Sequence[Operator], gram_limit: int, row_limit: int = ROW_LIMIT,
                deadline: float = math.inf) -> tuple[dict[int, float], bool]:
    """{K: an upper bound on ||ops[K] ... ops[0]||} (module docstring), for every K whose Gram
    matrix has at most ``gram_limit`` rows, while the swept rows have at most ``row_limit``
    entries and ``time.monotonic()`` is before ``deadline`` (checked before every batch of rows
    through the operators and every factorisation; one already started runs to its end); the ends
    before the first narrow layer of a start wider than ``gram_limit``, and ops[0] alone where
    it widens and ops[1] narrows (:func:`_widens_then_narrows`), are missing too (the caller
    bounds them otherwise). Each value is exact up to tau and rounding. The flag says
    whether the deadline stopped the sweep."""
    norms: dict[int, float] = {}
    try:
        _sweep(ops, gram_limit, row_limit, deadline, norms)
    except _OutOfTime:
        return norms, True
    return norms, False


def _sweep(ops: Sequence[Operator], gram_limit: int, row_limit: int, deadline: float,
           norms: dict[int, float]) -> None:
    """:func:`sweep_norms`'s sweep, writing each norm into ``norms`` as soon as it is proved."""
    Z = None                            # None: the identity on ops[0]'s input, not yet written
    start = 0
    if ops[0].in_dim > gram_limit or _widens_then_narrows(ops):   # compress at a narrow output
        narrow = [K for K, op in enumerate(ops) if op.out_dim <= min(gram_limit, ops[0].in_dim)]
        if not narrow:
            return
        G = banded_gram(ops[:narrow[0] + 1], "out", deadline=deadline)
        _check(deadline)
        norms[narrow[0]] = gram_norm(G, ops[0].in_dim)     # G's entries sum over ops[0]'s input
        start = narrow[0] + 1
        if start == len(ops):
            return
        _check(deadline)
        Z = _compressed(G, ops[0].in_dim)
    for K in range(start, len(ops)):
        _check(deadline)
        op = ops[K]
        rows = ops[0].in_dim if Z is None else len(Z)
        narrower = op.out_dim < rows
        if Z is None:                   # the first operator alone: probes, not one-hot rows
            G = banded_gram([op], "out" if narrower else "in", deadline=deadline)
        elif rows * op.out_dim > row_limit:
            return
        else:
            Y = _in_batches(op.apply, Z, deadline)
            G = row_gram(Y, "columns" if narrower else "rows")
        _check(deadline)
        norms[K] = gram_norm(G, rows if narrower else op.out_dim)   # its inner dimension
        if K + 1 == len(ops):           # the rows for the next operator are not needed
            return
        if narrower:
            _check(deadline)
            Z = _compressed(G, rows)                 # Y^T Y sums over the rows
        elif Z is not None:
            Z = Y
        elif rows * op.out_dim <= row_limit:
            eye = torch.eye(rows, dtype=torch.float64, device=op.weight.device)
            Z = _in_batches(op.apply, eye, deadline)
        else:
            return
