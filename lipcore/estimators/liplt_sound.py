"""Sound inner norms for LipLT's certificates (:mod:`.liplt_ops` has the recursion and the
training-time power iteration): an upper bound on every ||A_{K,s}|| = ||W_K ... W_s|| by
construction.

A product whose narrowest point (its input, its output or any layer between) has at most
``gram_limit`` dimensions gets its exact norm from a Gram matrix of that size in float64, one
forward sweep per start s for all its ends K (:mod:`.product_norms`: the top eigenvalue is proved
by a Cholesky factorisation); a single convolution also gets the DFT bound of :mod:`.layerwise`,
and only that where it widens into a layer narrower than its input (the sweep then starts at the
narrow side, which on 6C2F halves the dearest sweep a time budget keeps, for 0.2% of L); any
other product is bounded by the best split ||A_{K,t}|| ||A_{t-1,s}|| into pieces already
bounded (submultiplicativity). Each norm is inflated by SAFETY for rounding.

Training imports :mod:`.liplt_ops` but not this module, so that a faster certificate never
changes a trained net's cache key (:mod:`lipcore.deps`).
"""
from __future__ import annotations

import math
import time
import warnings

import torch

from .layerwise import conv2d_norm_bound
from .liplt_ops import SAFETY, LinearOp, OperatorChain, Pair, hidden_pairs
from .product_norms import sweep_norms


def _double_ops(chain: OperatorChain, pair: Pair) -> list[LinearOp]:
    """W_s ... W_K of ``pair`` = (K, s), detached, in float64."""
    K, s = pair
    return [op.detached_double() for op in chain.ops[s:K + 1]]


def single_norm(op: LinearOp) -> float:
    """A sound bound on one operator's norm: exact for dense layers, the DFT bound for convs."""
    if not op.is_conv:
        return float(torch.linalg.matrix_norm(op.weight.detach().double(), ord=2)) * (1 + SAFETY)
    return conv2d_norm_bound(op.weight, op.in_shape[-2:], op.stride, op.padding)


def sweep_order(chain: OperatorChain, last: int) -> list[int]:
    """The starts s = last, ..., 0 cheapest first, so that a time budget cuts the dearest sweeps:
    by the size of a start's first Gram matrix, min(in_dim, out_dim) of W_s, which every later
    step of its sweep carries (squared), later starts first among equals. On 6C2F the input
    layer's sweep (3,072 rows) then comes before the two 8,192-row ones."""
    return sorted(range(last, -1, -1),
                  key=lambda s: (min(chain.ops[s].in_dim, chain.ops[s].out_dim), -s))


def sound_norms(chain: OperatorChain, gram_limit: int = 8192, pairs: list[Pair] | None = None,
                time_budget_s: float | None = None) -> dict[Pair, float]:
    """An upper bound on ||A_{K,s}|| for every pair (module docstring): exact where the product's
    narrowest point has at most ``gram_limit`` dimensions (cost: a Cholesky factorisation of
    that size per pair, and one sweep of Gram-size batches through the layers per start), else
    the best split into bounded pieces. With ``time_budget_s``, the sweeps (the cheapest
    starts first, :func:`sweep_order`) stop once it is spent, checked before every batch of
    rows (a factorisation already started runs to its end); the products they did not reach
    are bounded by splits, still soundly, and a warning says so."""
    pairs = hidden_pairs(chain) if pairs is None else pairs
    last = max(K for K, _ in pairs)
    deadline = math.inf if time_budget_s is None else time.monotonic() + time_budget_s
    bound: dict[Pair, float] = {}
    exact: dict[Pair, float] = {}
    with torch.no_grad():
        for s in sweep_order(chain, last):
            norms, cut = sweep_norms(_double_ops(chain, (last, s)), gram_limit, deadline=deadline)
            exact.update({(s + k, s): norm * (1 + SAFETY) for k, norm in norms.items()})
            if cut:
                warnings.warn(f"sound_norms: the time budget of {time_budget_s:g} s ran out; "
                              "the products not reached are bounded by splits (sound, looser); "
                              "raise time_budget_s for a tighter bound", stacklevel=2)
                break
        for length in range(max(K - s for K, s in pairs) + 1):
            for K in range(length, last + 1):
                s = K - length
                best = single_norm(chain.ops[K]) if length == 0 else math.inf
                for t in range(s + 1, K + 1):               # split W_K..W_t | W_{t-1}..W_s
                    best = min(best, bound[(K, t)] * bound[(t - 1, s)])
                bound[(K, s)] = min(best, exact.get((K, s), math.inf))
    return {p: bound[p] for p in pairs}


def naive_pairwise_ops(chain: OperatorChain) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The naive counterparts, sound: L = prod_k ||W_k|| beta^L, L_ij = B ||w_i - w_j|| and
    L_i = B ||w_i|| with B = prod_{k<L} ||W_k|| beta^L (exact dense norms, DFT conv bounds)."""
    body = math.prod(single_norm(op) for op in chain.ops[:-1]) * chain.beta ** chain.depth
    W = chain.ops[-1].weight.detach().double()
    return (body * single_norm(chain.ops[-1]), body * (W[:, None] - W[None]).norm(dim=2),
            body * W.norm(dim=1))
