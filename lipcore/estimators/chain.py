"""LipSDP's LMI with a diagonal T as a block-tridiagonal chain: cost linear in depth.

Read beside :mod:`lipcore.estimators.lipsdp` (Pauli et al. 2021, eq. (5)). For diagonal T the
matrix Q = -P(L^2, T) over z = (x^0, x^1, ..., x^l) is block tridiagonal:

    A_0 = L^2 I + 2 alpha beta W^0^T T_1 W^0,    A_k = 2 T_k + 2 alpha beta W^k^T T_{k+1} W^k,
    A_l = 2 T_l - W^l^T W^l,                     B_k = -(alpha + beta) W^k^T T_{k+1}  (block k, k+1)

Eliminating from the last layer (block LDL^T, backward):

    Z_l = A_l,   Z_k = A_k - B_k Z_{k+1}^{-1} B_k^T   (k = l-1, ..., 1)

so the hidden block H = -(Q without x^0) is negative definite iff every Z_k is positive definite
(each is one Cholesky of a layer-sized matrix), and the least L^2 with P(L^2, T) <= 0 is

    g(T) = lambda_max(S),   S = B_0 Z_1^{-1} B_0^T - 2 alpha beta W^0^T T_1 W^0.

The hidden part of z = (u, -H^{-1} D^T u) for an eigenvector u of S (the gradient of
:mod:`lipcore.estimators.lipsdp_fo`) is the chain x^k = (alpha + beta) Z_k^{-1} T_k W^{k-1} x^{k-1}.
Every step costs O(sum_k n_k^3) instead of O((sum_k n_k)^3).

:func:`lmi_holds` certifies Q > 0 in floating point: the same recursion, on Q scaled by its absolute
diagonal and shifted down by a stated allowance (:func:`float_allowance`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

UNIT_ROUNDOFF = 2.0 ** -53


def _cholesky(Z: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of Z, or None when Z is not (numerically) positive definite.
    LAPACK directly: scipy.linalg's checking wrappers cost more than a 20 x 20 factorisation."""
    if not np.all(np.isfinite(Z)):
        return None
    Lf, info = lapack.dpotrf(Z, lower=1, clean=1)
    return Lf if info == 0 else None


def _solve_lower(Lf: np.ndarray, B: np.ndarray, trans: bool = False) -> np.ndarray:
    """L^{-1} B (or L^{-T} B) for a lower-triangular factor L."""
    X, info = lapack.dtrtrs(Lf, B, lower=1, trans=1 if trans else 0)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular solve failed (LAPACK info {info})")
    return X


class ChainLMI:
    """The blocks of -P(L^2, T) for diagonal T = diag(t) and weights W^0..W^l (module doc)."""

    def __init__(self, weights: Sequence[np.ndarray], alpha: float, beta: float):
        self.W = [np.asarray(w, dtype=np.float64) for w in weights]
        self.alpha, self.beta = float(alpha), float(beta)
        self.sizes = [w.shape[0] for w in self.W[:-1]]           # n_1..n_l
        self.offsets = np.cumsum([0] + self.sizes)
        self.n0, self.n = self.W[0].shape[1], int(self.offsets[-1])
        self.last_gram = self.W[-1].T @ self.W[-1]

    def layer(self, t: np.ndarray, k: int) -> np.ndarray:
        """t restricted to hidden layer k = 1..l."""
        return t[self.offsets[k - 1]:self.offsets[k]]

    def diagonal_block(self, t: np.ndarray, k: int) -> np.ndarray:
        """A_k for hidden layer k = 1..l (without the input block's L^2)."""
        tk = self.layer(t, k)
        A = np.diag(2.0 * tk)
        if k == len(self.sizes):
            A -= self.last_gram
        elif self.alpha * self.beta != 0.0:
            A += 2.0 * self.alpha * self.beta * (self.W[k].T * self.layer(t, k + 1)) @ self.W[k]
        return A

    def coupling(self, t: np.ndarray, k: int) -> np.ndarray:
        """B_k^T = -(alpha + beta) T_{k+1} W^k, the block between x^{k+1} and x^k (k = 0..l-1)."""
        return -(self.alpha + self.beta) * (self.layer(t, k + 1)[:, None] * self.W[k])

    def hidden_factors(self, t: np.ndarray) -> list[np.ndarray] | None:
        """Cholesky factors of Z_1..Z_l (backward recursion), or None when H is not < 0."""
        l = len(self.sizes)
        factors: list = [None] * l
        Z = self.diagonal_block(t, l)
        for k in range(l, 0, -1):
            Lf = _cholesky(Z)
            if Lf is None:
                return None
            factors[k - 1] = Lf
            if k > 1:
                Y = _solve_lower(Lf, self.coupling(t, k - 1))           # L_k^{-1} B_{k-1}^T
                Z = self.diagonal_block(t, k - 1) - Y.T @ Y
        return factors

    def schur(self, t: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """(S, factors): g(T) = lambda_max(S); None when H is not < 0."""
        factors = self.hidden_factors(t)
        if factors is None:
            return None
        Y = _solve_lower(factors[0], self.coupling(t, 0))
        S = Y.T @ Y
        if self.alpha * self.beta != 0.0:
            S -= 2.0 * self.alpha * self.beta * (self.W[0].T * self.layer(t, 1)) @ self.W[0]
        return (S + S.T) / 2.0, factors

    def value(self, t: np.ndarray) -> float:
        """g(T): the exact least L^2 for this T (inf when H is not < 0 or S is not finite)."""
        out = self.schur(t)
        if out is None or not np.all(np.isfinite(out[0])):
            return np.inf
        n = len(out[0])
        try:
            top = scipy.linalg.eigh(out[0], eigvals_only=True, subset_by_index=[n - 1, n - 1],
                                    check_finite=False)[0]
        except np.linalg.LinAlgError:              # eigen-solver did not converge: no bound here
            return np.inf
        return max(float(top), 0.0)

    def chain(self, t: np.ndarray, factors: list[np.ndarray], U: np.ndarray) -> list[np.ndarray]:
        """x^0 = U, x^k = (alpha + beta) Z_k^{-1} T_k W^{k-1} x^{k-1}: the hidden part of
        z = (u, -H^{-1} D^T u) for each column u of U."""
        xs = [U]
        for k, Lf in enumerate(factors, start=1):
            r = (self.alpha + self.beta) * (self.layer(t, k)[:, None] * (self.W[k - 1] @ xs[-1]))
            xs.append(_solve_lower(Lf, _solve_lower(Lf, r), trans=True))
        return xs

    def neuron_gradients(self, xs: list[np.ndarray]) -> np.ndarray:
        """d lambda_j / d t_i = -2 (b_i - alpha a_i)(b_i - beta a_i) for the vectors of
        :meth:`chain` (neurons x vectors); a = W^{k-1} x^{k-1}, b = x^k."""
        pre = np.concatenate([self.W[k] @ xs[k] for k in range(len(self.sizes))])
        post = np.concatenate(xs[1:])
        return -2.0 * (post - self.alpha * pre) * (post - self.beta * pre)


# ----------------------------------------------------------------------------------------------
# Certification in floating point
# ----------------------------------------------------------------------------------------------

def float_allowance(widest_row: int) -> float:
    """Shift c for :func:`lmi_holds`, relative to the scaled unit diagonal.

    If the floating-point Cholesky of a symmetric M runs to completion, M + E = R^T R with
    |E| <= gamma_{m+1} |R^T| |R| (Higham, Accuracy and Stability, Thm 10.3; m = the longest inner
    product, here at most the widest block row); with M scaled to a diagonal of at most 1, every
    entry of |R^T||R| is at most about 1, and forming the blocks adds at most gamma_m per entry.
    So ||E||_2 <= 2 m gamma_{m+1} (m nonzeros a row); c is four times that: success of the
    Cholesky of Q~ - c I proves Q~ > 0, with a factor 2 to spare.
    """
    m = int(widest_row) + 1
    gamma = m * UNIT_ROUNDOFF / (1.0 - m * UNIT_ROUNDOFF)
    return 8.0 * m * gamma


def lmi_holds(weights: Sequence[np.ndarray], t: np.ndarray, L2: float, alpha: float = 0.0,
              beta: float = 1.0) -> bool:
    """True only if P(L^2, diag(t)) < 0 is proven in float64, on the full (unreduced) LMI.

    Q = -P is scaled by s_i = the sum of the absolute diagonal contributions (L^2, 2 t_i,
    2 alpha beta (W^T T W)_ii, (W^l^T W^l)_ii), shifted by :func:`float_allowance` and factorised
    by the block recursion of the module docstring. The scaling makes the test independent of the
    layers' scales (deep nets' multipliers span many orders of magnitude)."""
    lmi = ChainLMI(weights, alpha, beta)
    t = np.asarray(t, dtype=np.float64)
    if not (L2 > 0 and np.all(t > 0) and np.all(np.isfinite(t)) and np.isfinite(L2)):
        return False
    l, ab = len(lmi.sizes), alpha * beta
    scale = [np.full(lmi.n0, L2 + (2 * ab * (lmi.W[0] ** 2).T @ lmi.layer(t, 1) if ab else 0.0))]
    for k in range(1, l + 1):
        s = 2.0 * lmi.layer(t, k)
        if k == l:
            s = s + np.diag(lmi.last_gram)
        elif ab:
            s = s + 2 * ab * (lmi.W[k] ** 2).T @ lmi.layer(t, k + 1)
        scale.append(s)
    root = [1.0 / np.sqrt(s) for s in scale]
    dims = [lmi.n0, *lmi.sizes]
    c = float_allowance(max(dims[k] + dims[k + 1] + (dims[k - 1] if k else 0)
                            for k in range(l)) if l > 1 else dims[0] + dims[1])

    def diag(k: int) -> np.ndarray:
        if k:
            A = lmi.diagonal_block(t, k)
        else:
            A = L2 * np.eye(lmi.n0)
            if ab:
                A += 2.0 * ab * (lmi.W[0].T * lmi.layer(t, 1)) @ lmi.W[0]
        return (root[k][:, None] * A * root[k][None, :]) - c * np.eye(dims[k])

    Z = diag(l)
    for k in range(l, 0, -1):
        Lf = _cholesky(Z)
        if Lf is None:
            return False
        Bt = root[k][:, None] * lmi.coupling(t, k - 1) * root[k - 1][None, :]
        Y = _solve_lower(Lf, Bt)
        Z = diag(k - 1) - Y.T @ Y
    return _cholesky(Z) is not None


# ----------------------------------------------------------------------------------------------
# Inputs, and the two exact transformations that every solver uses
# ----------------------------------------------------------------------------------------------

class LipSDPError(RuntimeError):
    """LipSDP could not produce a certified bound (infeasible, inaccurate or failed solve)."""


def check_weights(weights: Sequence, alpha: float, beta: float) -> list[np.ndarray]:
    """W^0..W^l as float64 matrices, after checking shapes, finiteness and 0 <= alpha < beta."""
    weights = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    if len(weights) < 2:
        raise ValueError("LipSDP needs at least one hidden layer (two weight matrices)")
    for i, (a, b) in enumerate(zip(weights[:-1], weights[1:])):
        if b.shape[1] != a.shape[0]:
            raise ValueError(f"W^{i + 1} has {b.shape[1]} columns but W^{i} has {a.shape[0]} rows; "
                             f"weights must be ordered W^0..W^l with W^i of shape (n_(i+1), n_i)")
    if not all(np.all(np.isfinite(w)) for w in weights):
        raise ValueError("weights contain NaN or inf")
    if not 0.0 <= alpha < beta < np.inf:
        raise ValueError(f"slope bounds must satisfy 0 <= alpha < beta < inf, got "
                         f"alpha={alpha}, beta={beta}")
    return weights


def reduce_input_layer(W0: np.ndarray) -> np.ndarray:
    """W~^0 (n_1 x min(n_0, n_1)) with W~^0 W~^0^T = W^0 W^0^T: same LipSDP optimum
    (:mod:`lipcore.estimators.lipsdp`, step 1)."""
    n1, n0 = W0.shape
    if n0 <= n1:
        return W0
    lam, U = np.linalg.eigh(W0 @ W0.T)
    return U * np.sqrt(np.clip(lam, 0.0, None))


def balance(weights: Sequence[np.ndarray]):
    """(c_k W^k with c_k = 1 / ||W^k||_2, to_original): every layer at spectral norm 1.

    ``to_original(L2, t)`` maps a (L~^2, diagonal T~) of the balanced problem to the original
    one exactly: congruence with blkdiag(d_0 I, ..., d_l I), d_k = p_k / C, p_k = prod_{j<k} c_j,
    C = prod_k c_k, turns P~(L~^2, T~) into P(L~^2 / C^2, T) with T_k = p_k^2 T~_k / C^2.
    Computed in logarithms, so deep nets do not overflow."""
    log_c = np.array([-np.log(np.linalg.norm(w, 2)) for w in weights])
    balanced = [np.exp(lc) * w for lc, w in zip(log_c, weights)]
    log_C = float(log_c.sum())
    log_p = np.cumsum(log_c)[:-1]                       # p_{k} for hidden layers 1..l
    sizes = [w.shape[0] for w in weights[:-1]]
    log_d = np.repeat(2.0 * (log_p - log_C), sizes)

    def to_original(L2: float, t: np.ndarray) -> tuple[float, np.ndarray]:
        """(L^2, t) for the original weights; t is T's diagonal, or a full T (network coupling)."""
        d = np.exp(log_d)
        return float(L2 * np.exp(-2.0 * log_C)), t * (d if t.ndim == 1 else np.sqrt(np.outer(d, d)))
    return balanced, to_original
