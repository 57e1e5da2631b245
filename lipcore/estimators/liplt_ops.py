"""LipLT for feed-forward conv and dense nets, with operators never materialised during training,
and a sound certificate for trained nets.

A net x_{k+1} = phi(W_k x_k + b_k), logits z = W_L x_L + b_L, where each W_k is a convolution or a
dense layer (a flatten in between is a reshape) and phi is slope-restricted in [alpha, beta]
(alpha >= 0). With A_{K,s} = W_K W_{K-1} ... W_s, mid = (alpha + beta)/2 and c = (beta - alpha)/2,
the recursion (19) of Fazlyab, Entesari et al. (Theorem 3.3) reads

    m_0 = ||A_{0,0}||,
    m_K = mid^K ||A_{K,0}|| + c sum_{j<K} mid^(K-1-j) ||A_{K,j+1}|| m_j,

and the logit differences z_i - z_j have the same recursion at K = L with the row
r = e_i - e_j in front: the vector norms ||A_{L,s}^T r|| are exact, so the last layer costs no
power iteration (:func:`logit_bounds`).

Two ways to get the inner norms ||A_{K,s}||:

* :class:`PowerIteration` (training): persistent, warm-started vectors for all O(L^2) pairs,
  evaluated batched so that one iteration is one pass forward and one backward through the L
  operators (vectors of every start s join the batch at layer s and leave it at their K). The
  result is differentiable in the weights. Power iteration approaches a norm from *below*, so
  these bounds are **estimates**, not certificates (the official code certifies with them).
* :func:`lipcore.estimators.liplt_sound.sound_norms` (certificates): an upper bound on every
  ||A_{K,s}|| by construction. It lives in a module of its own, which training does not import,
  so that making certificates faster never changes a trained net's cache key.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..trace import pair, trace

SAFETY = 1e-8
ROUNDING_SLACK = 1e-9       # of G_ii + G_jj, for the cancellation in G_ii + G_jj - 2 G_ij
Pair = tuple[int, int]                      # (K, s): the product W_K ... W_s


@dataclass
class LinearOp:
    """The linear part of one layer (bias dropped) on inputs of ``in_shape`` (no batch axis):
    a dense layer (``stride`` None) or a zero-padded convolution."""

    weight: torch.Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None

    @property
    def is_conv(self) -> bool:
        return self.stride is not None

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), *self.in_shape)
        if not self.is_conv:
            return x @ self.weight.T
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(len(y), *self.out_shape)
        if not self.is_conv:
            return y @ self.weight
        k = self.weight.shape[-2:]
        extra = [self.in_shape[i + 1] - ((self.out_shape[i + 1] - 1) * self.stride[i]
                                         - 2 * self.padding[i] + k[i]) for i in range(2)]
        return F.conv_transpose2d(y, self.weight, None, self.stride, self.padding,
                                  output_padding=extra)

    def detached_double(self) -> "LinearOp":
        return dataclasses.replace(self, weight=self.weight.detach().double())


def linear_op(module: nn.Conv2d | nn.Linear, in_shape: tuple[int, ...],
              out_shape: tuple[int, ...]) -> LinearOp:
    if isinstance(module, nn.Linear):
        return LinearOp(module.weight, in_shape, out_shape)
    return LinearOp(module.weight, in_shape, out_shape, pair(module.stride), pair(module.padding))


@dataclass
class OperatorChain:
    """The operators W_0 ... W_L of a net and its activations' slope bounds."""

    ops: list[LinearOp]
    alpha: float
    beta: float

    @property
    def depth(self) -> int:
        """L: the index of the logit layer."""
        return len(self.ops) - 1

    @property
    def mid(self) -> float:
        return (self.alpha + self.beta) / 2

    @property
    def c(self) -> float:
        return (self.beta - self.alpha) / 2


def operator_chain(model: nn.Module, input_shape: tuple[int, ...]) -> OperatorChain:
    """The chain of a plain feed-forward net, [flatten] linear/conv, activation, ..., linear, as
    :func:`lipcore.trace.trace` extracts and verifies it, with the live weights (CRM trains
    through them). Activations may differ between layers: the chain's [alpha, beta] is the hull
    of their slope bounds. Raises a clear error for anything else (pooling, batch norm, residual
    connections)."""
    ops, slopes, expect_op = [], [], True
    chain = trace(model, input_shape)
    if not hasattr(chain, "ops"):
        raise ValueError("LipLT (here) needs a plain chain of layers; this model has skip "
                         "connections (use method='naive')")
    for op in chain.ops:
        if op.kind in ("reshape", "identity"):
            continue
        if op.kind == "affine" and expect_op:
            ops.append(linear_op(op.module, op.in_shape, op.out_shape))
            expect_op = False
        elif op.kind == "activation" and not expect_op:
            slopes.append((op.alpha, op.beta))
            expect_op = True
        else:
            wanted = "a linear layer" if expect_op else "an activation"
            raise ValueError(f"LipLT (here) handles nets of Linear/Conv2d layers with one "
                             f"slope-restricted activation after each hidden layer; got "
                             f"{op.module!r} where {wanted} was expected (an elementwise one: "
                             "for GroupSort use method='naive')")
    if len(ops) < 2 or expect_op:
        raise ValueError("LipLT needs at least one hidden layer and a linear output layer")
    return OperatorChain(ops, min(a for a, _ in slopes), max(b for _, b in slopes))


def hidden_pairs(chain: OperatorChain) -> list[Pair]:
    """Every (K, s) with s <= K < L: the inner products the recursion needs."""
    return [(K, s) for K in range(chain.depth) for s in range(K + 1)]


Blocks = dict[int, tuple[torch.Tensor, list[int]]]   # layer -> (stacked vectors, other end of each)


def _sweep(chain: OperatorChain, joining: Blocks, adjoint: bool = False) -> Blocks:
    """Every operator product applied to its vectors in one batched pass over the layers.

    ``joining[a] = (vectors, exits)``: the vectors that join at layer a, row r leaving after layer
    ``exits[r]``. Forward (layers 0 .. L, join at s, leave after K) this computes A_{K,s} v;
    with ``adjoint`` (layers L .. 0, join at K, leave after s) A_{K,s}^T v. Vectors with the same
    exit travel as one block, so each layer costs one concatenation, one operator call and one
    split, whatever the number of products: the pass is O(L) calls (on a GPU, O(L) time).
    Returns, per exit layer, the stacked results and the layer each row joined at, which is the
    form the opposite pass takes as ``joining``."""
    layers = range(chain.depth, -1, -1) if adjoint else range(chain.depth + 1)
    alive: dict[int, tuple[list[torch.Tensor], list[int]]] = {}   # exit -> (blocks, joined at)
    done = {}
    for d in layers:
        op = chain.ops[d]
        shape = op.out_shape if adjoint else op.in_shape
        if d in joining:
            vectors, exits = joining[d]
            for r, e in enumerate(exits):
                blocks, joined = alive.setdefault(e, ([], []))
                blocks.append(vectors[r:r + 1])
                joined.append(d)
        if not alive:
            continue
        order = sorted(alive)
        stacked = torch.cat([b.reshape(len(b), *shape) for e in order for b in alive[e][0]])
        result = op.adjoint(stacked) if adjoint else op.apply(stacked)
        pieces = result.split([len(alive[e][1]) for e in order])
        still = {}
        for e, piece in zip(order, pieces):
            if e == d:
                done[e] = (piece, alive[e][1])
            else:
                still[e] = ([piece], alive[e][1])
        alive = still
    return done


class PowerIteration:
    """Warm-started power iteration for every inner product of a chain (module docstring), or
    for ``pairs`` only (e.g. the single layers (k, k) of the naive bound). Keep one instance per
    net through training: each call continues from the last vectors. The vectors are kept in one
    block per start layer s, each row with the layer K its product ends at."""

    def __init__(self, chain: OperatorChain, seed: int = 0, pairs: list[Pair] | None = None):
        gen = torch.Generator().manual_seed(seed)
        device = chain.ops[0].weight.device
        ends: dict[int, list[int]] = {}
        for K, s in sorted(hidden_pairs(chain) if pairs is None else pairs, key=lambda p: p[::-1]):
            ends.setdefault(s, []).append(K)
        self._blocks: Blocks = {
            s: (_unit_rows(torch.randn(len(Ks), *chain.ops[s].in_shape, generator=gen).to(device)),
                Ks) for s, Ks in ends.items()}

    @property
    def vectors(self) -> dict[Pair, torch.Tensor]:
        """The current right singular vector estimate of each product (K, s)."""
        return {(K, s): block[r] for s, (block, ends) in self._blocks.items()
                for r, K in enumerate(ends)}

    @vectors.setter
    def vectors(self, vectors: dict[Pair, torch.Tensor]) -> None:
        self._blocks = {s: (torch.stack([vectors[(K, s)] for K in ends]), ends)
                        for s, (_, ends) in self._blocks.items()}

    def norms(self, chain: OperatorChain, iterations: int) -> dict[Pair, torch.Tensor]:
        """||A_{K,s}|| estimated after ``iterations`` more steps; differentiable in the weights
        through a final application of each operator to its (detached) vector."""
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        with torch.no_grad():
            for _ in range(iterations):
                back = _sweep(chain, _sweep(chain, self._blocks), adjoint=True)
                self._blocks = {s: (_unit_rows(x), ends) for s, (x, ends) in back.items()}
        norms = {}
        for K, (y, starts) in _sweep(chain, self._blocks).items():
            norms.update(zip(((K, s) for s in starts), y.flatten(1).norm(dim=1)))
        return norms


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (v.dim() - 1))


def recursion(chain: OperatorChain, norms: dict[Pair, torch.Tensor | float]) -> torch.Tensor:
    """m_0 ... m_{L-1} of the recursion (module docstring) from the norms ||A_{K,s}||, as one
    triangular solve: m = b + T m with b_K = mid^K ||A_{K,0}|| and T_Kj = c mid^(K-1-j)
    ||A_{K,j+1}|| for j < K. A handful of operations whatever the depth (O(L^2) scalar ones
    would dominate a GPU training step's kernel launches). Float norms give a float64 result."""
    D, mid, c = chain.depth, chain.mid, chain.c
    first = norms[(0, 0)]
    like = first if torch.is_tensor(first) else torch.zeros((), dtype=torch.float64)
    values = torch.stack([torch.as_tensor(norms[p], dtype=like.dtype, device=like.device)
                          for p in hidden_pairs(chain)])        # row by row: tril order
    N = like.new_zeros(D, D).index_put(tuple(torch.tril_indices(D, D, device=like.device)),
                                       values)                # N[K, s] = ||A_{K,s}||
    k = torch.arange(D, dtype=like.dtype, device=like.device)
    gap = k[:, None] - 1 - k[None, :]                          # K - 1 - j
    T = torch.where(gap >= 0, c * mid ** gap.clamp_min(0), 0.0) * F.pad(N[:, 1:], (0, 1))
    b = mid ** k * N[:, 0]
    eye = torch.eye(D, dtype=like.dtype, device=like.device)
    return torch.linalg.solve_triangular(eye - T, b[:, None], upper=False)[:, 0]


def logit_bounds(chain: OperatorChain, hidden: torch.Tensor, slack: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, L_ij, L_i): the last step of the recursion for the whole logit map, for z_i - z_j and
    for z_i alone, from the hidden m_j. The last layer is exact: the C rows e_i are pulled back
    through every A_{L,s}^T in one backward pass; with X_s the pulled-back rows and G = X_s X_s^T,
    ||A_{L,s}^T (e_i - e_j)||^2 = G_ii + G_jj - 2 G_ij, ||A_{L,s}^T e_i||^2 = G_ii and
    ||A_{L,s}||^2 = the largest eigenvalue of G. Only C rows travel (not C^2: Tiny-ImageNet has
    200 classes), and the L + 1 Gram matrices are combined as one stack, so the step adds few
    operations to a training step however deep the net.
    ``slack`` (relative to G_ii + G_jj) covers the rounding of that difference in a certificate."""
    L, C = chain.depth, chain.ops[-1].out_dim
    W = chain.ops[-1].weight
    x = torch.eye(C, dtype=W.dtype, device=W.device)
    grams = []
    for d in range(L, -1, -1):
        x = chain.ops[d].adjoint(x)
        flat = x.flatten(1)
        grams.append(flat @ flat.T)
    gram = torch.stack(grams[::-1])                         # gram[s]: the rows through A_{L,s}
    diag = gram.diagonal(dim1=1, dim2=2)
    both = diag[:, :, None] + diag[:, None, :]
    squared = (both * (1 + slack) - 2 * gram).clamp_min(1e-30)
    off_diagonal = ~torch.eye(C, dtype=torch.bool, device=W.device)
    pairs = torch.where(off_diagonal, squared.sqrt(), 0.0)
    classes = (diag * (1 + slack)).sqrt()
    whole = (torch.linalg.eigvalsh(gram)[:, -1] * (1 + slack)).clamp_min(1e-30).sqrt()
    hidden = hidden.to(dtype=W.dtype, device=W.device)
    k = torch.arange(L, dtype=W.dtype, device=W.device)
    mid, c = chain.mid, chain.c
    w = torch.cat([hidden.new_full((1,), mid ** L), c * mid ** (L - 1 - k) * hidden])
    pairwise = torch.einsum("s,sij->ij", w, pairs)
    return w @ whole, torch.maximum(pairwise, pairwise.T), w @ classes   # symmetric up to rounding


@dataclass
class LipLTBounds:
    """LipLT bounds of one net: ``L`` (whole logit map), ``pairwise[i, j]`` (z_i - z_j),
    ``per_class[i]`` (z_i), ``hidden`` (m_0 ... m_{L-1}); ``sound`` says whether every inner norm
    was a guaranteed upper bound (else the bounds are power-iteration estimates)."""

    L: torch.Tensor
    pairwise: torch.Tensor
    per_class: torch.Tensor
    hidden: torch.Tensor
    sound: bool


def liplt_bounds(chain: OperatorChain, norms: dict[Pair, torch.Tensor | float], sound: bool
                 ) -> LipLTBounds:
    """The LipLT recursion with the inner norms ``norms``: from :class:`PowerIteration` (an
    estimate, differentiable) or from :func:`lipcore.estimators.liplt_sound.sound_norms` (then
    pass ``sound=True``)."""
    hidden = recursion(chain, norms)
    if sound:
        with torch.no_grad():
            double = OperatorChain([op.detached_double() for op in chain.ops], chain.alpha,
                                   chain.beta)
            L, pairwise, per_class = logit_bounds(double, hidden, slack=ROUNDING_SLACK)
        inflate = 1 + SAFETY
        return LipLTBounds(L * inflate, pairwise * inflate, per_class * inflate, hidden, True)
    L, pairwise, per_class = logit_bounds(chain, hidden)
    return LipLTBounds(L, pairwise, per_class, hidden, False)


def naive_pairwise_estimate(chain: OperatorChain, power: PowerIteration, iterations: int
                            ) -> torch.Tensor:
    """The naive L_ij with power-iteration layer norms (what a naive trainer computes per step;
    ``power`` must hold the pairs (k, k), k < L): prod_{k<L} ||W_k|| beta^L ||w_i - w_j||."""
    norms = power.norms(chain, iterations)
    body = math.prod(norms[(k, k)] for k in range(chain.depth)) * chain.beta ** chain.depth
    W = chain.ops[-1].weight
    return body * (W[:, None] - W[None]).norm(dim=2)
