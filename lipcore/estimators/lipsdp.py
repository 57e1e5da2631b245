"""LipSDP: SDP upper bounds on the l2 Lipschitz constant of a fully connected net.

Read side by side with Pauli et al. (2021), Section II-B, and Fazlyab et al. (2019).
Net (eq. (3)): x^{i+1} = phi(W^i x^i + b^i), i = 0..l-1,  f(x) = W^l x^l + b^l, with every
activation slope-restricted in [alpha, beta] (eq. (2)). With z = (x^0, x^1, ..., x^l),
A z = (W^0 x^0, ..., W^{l-1} x^{l-1}) (all pre-activations) and B z = (x^1, ..., x^l):

    P(L^2, T) = [A; B]^T [[-2 alpha beta T, (alpha+beta) T], [(alpha+beta) T, -2T]] [A; B]
                + blkdiag(-L^2 I, 0, ..., 0, W^l^T W^l)   <=  0                   (eq. (5))

Theorem 1 (Pauli et al.): feasibility with a *diagonal* T >= 0 ("neuron" coupling, D_n) proves
||f(x) - f(y)|| <= L ||x - y||. "layer" coupling (one scalar per layer) is a subset of D_n and
also sound. "network" coupling (the set T_n of Fazlyab et al.) is NOT sound: Pauli et al.,
Section II-C, give a counterexample (notebooks/lipsdp_counterexample.ipynb). It is kept only to
show that counterexample.

Two implementation choices make the solve fast and the answer trustworthy:

1. Input-block reduction. P depends on W^0 only through W^0 x^0 and -L^2 ||x^0||^2. Split
   x^0 = R s + N t with R, N orthonormal bases of row(W^0) and null(W^0): then W^0 x^0 = (W^0 R) s
   and ||x^0||^2 = ||s||^2 + ||t||^2, so z^T P z = z~^T P~ z~ - L^2 ||t||^2, where P~ is P with
   W^0 replaced by any W~^0 having the same Gram matrix W^0 W^0^T (all are W^0 R up to an
   orthogonal factor). Hence P <= 0  <=>  P~ <= 0, for every alpha, beta and every coupling.
   With W~^0 = U Lambda^{1/2} from W^0 W^0^T = U Lambda U^T the LMI shrinks from
   n_0 + sum(n_i) to n_1 + sum(n_i) rows (for 784-64-64-10: 912 -> 192) with the same optimum.
   ``tests/test_lipsdp.py`` checks it against the full form.

2. Certification. The solver's T (projected back onto its cone) is kept and the smallest L^2 with
   P(L^2, T) <= 0 is computed exactly by a Schur complement on the input block:
   with P(0, T) = [[C, D], [D^T, H]] and H < 0,  L^2 = lambda_max(C - D H^{-1} D^T), by the
   block-tridiagonal recursion of :mod:`lipcore.estimators.chain` (linear in depth). The full,
   unreduced LMI is then proven negative definite in float64 by a shifted block Cholesky with a
   stated allowance (:func:`lipcore.estimators.chain.lmi_holds`), backing L^2 off until it holds.
   The returned bound therefore does not rely on solver tolerance.

3. Never above the compositional start. Every solve starts from, and is compared with, the
   certified compositional bound (ECLipsE-Fast's multipliers at their best common scale,
   :mod:`lipcore.estimators.compositional`): the returned bound is the smaller of the two, and a
   solve that fails or cannot be certified falls back to the start instead of raising.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import cvxpy as cp
import numpy as np
from threadpoolctl import threadpool_limits

from .chain import LipSDPError, balance, check_weights, reduce_input_layer
from .compositional import certify_t, start_multipliers

COUPLINGS = ("neuron", "layer", "network")
SOLVERS = ("auto", "SCS", "CLARABEL", "MOSEK", "first-order")
CVXPY_SOLVERS = ("SCS", "CLARABEL", "MOSEK")
# Relative accuracy of the default SCS solve; the certified bound is within 1e-4 (relative)
# of a tightly converged solve on the nets in benchmarks/ (see tests/test_lipsdp.py).
SCS_DEFAULT_EPS = 1e-6
# Below this many rows (hidden neurons) the LMI's factorisations are small, and a second BLAS
# thread only waits on the first (100x slower when another process holds the other core).
SINGLE_THREAD_BELOW = 1024


def small_lmi_threads(hidden: int) -> threadpool_limits:
    """One BLAS thread for LMIs with fewer than SINGLE_THREAD_BELOW hidden rows (a context)."""
    return threadpool_limits(limits=1 if hidden < SINGLE_THREAD_BELOW else None, user_api="blas")


class UnsoundCouplingWarning(UserWarning):
    """LipSDP with coupling="network" (the set T_n) does not give a valid upper bound."""


@dataclass
class LipSDPResult:
    """Outcome of :func:`lipsdp`. ``bound`` is a certified upper bound when ``sound`` is True.
    ``t`` is T's diagonal (``T`` the dense matrix; for network coupling ``t`` is the full T).
    ``start_bound`` is the certified compositional start (never below ``bound``);
    ``lmi_max_eig`` the largest eigenvalue of the full LMI at (L^2, T) where it has at most
    DENSE_CHECK_ROWS rows (a cross-check of the certificate), else nan."""

    bound: float
    L2: float
    t: np.ndarray
    coupling: str
    solver: str
    status: str
    solve_time: float
    lmi_max_eig: float
    sound: bool
    solver_bound: float
    start_bound: float = np.nan

    @property
    def T(self) -> np.ndarray:
        return np.diag(self.t) if self.t.ndim == 1 else self.t


# ----------------------------------------------------------------------------------------------
# The LMI, written once for numpy (checking) and cvxpy (solving)
# ----------------------------------------------------------------------------------------------

def lmi_blocks(weights: Sequence, T_block: Callable[[int, int], object], L2, alpha: float,
               beta: float, zeros: Callable[[int, int], object]) -> list[list]:
    """Block (j, k) of P(L^2, T) over z = (x^0, ..., x^l), eq. (5).

    ``T_block(k, m)`` returns the (k, m) block of T between hidden layers k, m = 1..l, or None
    where T is zero. ``weights`` are W^0..W^l (numpy arrays); works for numpy and cvxpy T/L2.
    """
    l = len(weights) - 1
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]  # sizes of x^0..x^l
    terms: list[list[list]] = [[[] for _ in range(l + 1)] for _ in range(l + 1)]
    for k in range(1, l + 1):
        for m in range(1, l + 1):
            Tkm = T_block(k, m)
            if Tkm is None:
                continue
            Wk, Wm = weights[k - 1], weights[m - 1]     # v_k = W^{k-1} x^{k-1}
            if alpha * beta != 0.0:
                terms[k - 1][m - 1].append(-2.0 * alpha * beta * (Wk.T @ Tkm @ Wm))   # A^T T A
            terms[k - 1][m].append((alpha + beta) * (Wk.T @ Tkm))                      # A^T T B
            terms[k][m - 1].append((alpha + beta) * (Tkm @ Wm))                        # B^T T A
            terms[k][m].append(-2.0 * Tkm)                                             # B^T T B
    terms[0][0].append(-L2 * np.eye(dims[0]))
    terms[l][l].append(weights[l].T @ weights[l])
    return [[sum(t[1:], t[0]) if t else zeros(dims[j], dims[k])
             for k, t in enumerate(row)] for j, row in enumerate(terms)]


def _hidden_slices(weights: Sequence[np.ndarray]) -> list[slice]:
    sizes = [w.shape[0] for w in weights[:-1]]
    starts = np.cumsum([0] + sizes)
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def _numpy_T_block(T: np.ndarray, weights: Sequence[np.ndarray]):
    sl = _hidden_slices(weights)

    def block(k: int, m: int):
        Tkm = T[sl[k - 1], sl[m - 1]]
        return Tkm if np.any(Tkm) else None
    return block


def lmi_matrix(weights: Sequence[np.ndarray], T: np.ndarray, L2: float,
               alpha: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """P(L^2, T) of eq. (5) as a dense symmetric numpy matrix (T: n x n over all hidden neurons)."""
    blocks = lmi_blocks(weights, _numpy_T_block(T, weights), L2, alpha, beta,
                        lambda r, c: np.zeros((r, c)))
    P = np.block(blocks)
    return (P + P.T) / 2.0


def lmi_max_eig(weights: Sequence[np.ndarray], T: np.ndarray, L2: float,
                alpha: float = 0.0, beta: float = 1.0) -> float:
    """Largest eigenvalue of P(L^2, T); the LMI holds iff it is <= 0."""
    return float(np.linalg.eigvalsh(lmi_matrix(weights, T, L2, alpha, beta))[-1])


# ----------------------------------------------------------------------------------------------
# Certification: the exact L^2 for a fixed T, then an eigenvalue check of the full LMI
# ----------------------------------------------------------------------------------------------

def project_T(T: np.ndarray, coupling: str, weights: Sequence[np.ndarray]) -> np.ndarray:
    """Nearest-by-construction member of the coupling's cone (solvers return slightly outside)."""
    if coupling in ("neuron", "layer"):
        t = np.clip(np.diag(T), 0.0, None)
        if coupling == "layer":
            t = np.concatenate([np.full(s.stop - s.start, t[s].mean()) for s in
                                _hidden_slices(weights)])
        return np.diag(t)
    T = (T + T.T) / 2.0
    off = np.minimum(T - np.diag(np.diag(T)), 0.0)
    diag = np.maximum(np.diag(T), -off.sum(axis=1))          # T 1 >= 0: diagonally dominant
    return off + np.diag(diag)


def exact_L2(weights: Sequence[np.ndarray], T: np.ndarray, alpha: float, beta: float) -> float:
    """Smallest L^2 with P(L^2, T) <= 0 for fixed T, by the Schur complement on the input block:
    with P(0, T) = [[C, D], [D^T, H]] and H < 0, L^2 = lambda_max(C - D H^{-1} D^T).
    Returns inf when H is not negative definite (then no L certifies this T)."""
    P0 = lmi_matrix(weights, T, 0.0, alpha, beta)
    r = weights[0].shape[1]
    C, D, H = P0[:r, :r], P0[:r, r:], P0[r:, r:]
    try:
        if not np.linalg.eigvalsh(H)[-1] < 0.0:
            return np.inf
        S = C - D @ np.linalg.solve(H, D.T)
        return max(float(np.linalg.eigvalsh((S + S.T) / 2.0)[-1]), 0.0)
    except np.linalg.LinAlgError:                   # singular H or no eigen-convergence
        return np.inf


# From this many hidden layers on, LipSDP-neuron first solves LipSDP-layer from the start
# (a deep net's per-layer scales are what L-BFGS finds slowest; 2.3x faster on 20-20x20-10).
LAYER_FIRST_DEPTH = 5
# The dense eigenvalue cross-check of the result (lmi_max_eig) runs up to this many rows.
DENSE_CHECK_ROWS = 600


def certified_L2(weights: Sequence[np.ndarray], T: np.ndarray, alpha: float = 0.0,
                 beta: float = 1.0) -> tuple[float, np.ndarray, float]:
    """A certified L^2 for ``weights`` with a fixed diagonal multiplier T (Theorem 1).

    The exact least L^2 of T, or of c T for the first c in T_SCALINGS where T itself does not
    certify, proven on the full LMI (:func:`lipcore.estimators.compositional.certify_t`).
    Returns (L^2, the diagonal of the T actually used, lambda_max of the full LMI there or nan: see
    :class:`LipSDPResult`). Raises :class:`LipSDPError` when no scaling certifies.
    Used by :func:`lipsdp` and by the ADMM trainer to certify W-bar for its fixed T.
    """
    weights = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    t = np.clip(np.diag(T) if np.ndim(T) == 2 else np.asarray(T, dtype=np.float64), 0.0, None)
    certified = certify_t(weights, t, alpha, beta)
    if certified is not None:
        L2, t = certified
        return L2, t, _dense_check(weights, t, L2, alpha, beta)
    raise LipSDPError(
        "the hidden block of the LMI is not negative definite at this T (or the LMI holds only "
        "up to rounding), even after scaling T by up to 1.001, so no L certifies it; use the "
        "certified start (compositional_bound) or naive_bound, or retry with a tighter solver "
        "tolerance (eps=...) or solver='CLARABEL'")


def _dense_check(weights: Sequence[np.ndarray], t: np.ndarray, L2: float, alpha: float,
                 beta: float) -> float:
    rows = weights[0].shape[1] + len(t)
    return lmi_max_eig(weights, np.diag(t), L2, alpha, beta) if rows <= DENSE_CHECK_ROWS else np.nan


# ----------------------------------------------------------------------------------------------
# The SDP (eq. (6)): minimise L^2 over (L^2, T)
# ----------------------------------------------------------------------------------------------

def _solve(weights: Sequence[np.ndarray], alpha: float, beta: float, coupling: str, solver: str,
           eps: float | None, verbose: bool, chordal: bool = True):
    """Solve eq. (6) for ``weights`` as given; returns (L^2, T, status) without certification."""
    sizes = [w.shape[0] for w in weights[:-1]]
    n = sum(sizes)
    L2 = cp.Variable(nonneg=True, name="L2")
    constraints = []
    if coupling == "neuron":
        t = [cp.Variable(s, nonneg=True, name=f"t{k + 1}") for k, s in enumerate(sizes)]
        T_block = lambda k, m: cp.diag(t[k - 1]) if k == m else None            # noqa: E731
    elif coupling == "layer":
        lam = cp.Variable(len(sizes), nonneg=True, name="lambda")
        T_block = lambda k, m: lam[k - 1] * np.eye(sizes[k - 1]) if k == m else None  # noqa: E731
    else:
        Tn = cp.Variable((n, n), symmetric=True, name="T")
        off_diag = np.ones((n, n)) - np.eye(n)
        constraints += [cp.multiply(off_diag, Tn) <= 0, Tn @ np.ones(n) >= 0]  # T in T_n
        sl = _hidden_slices(weights)
        T_block = lambda k, m: Tn[sl[k - 1], sl[m - 1]]                          # noqa: E731
    blocks = lmi_blocks(weights, T_block, L2, alpha, beta, lambda r, c: np.zeros((r, c)))
    if coupling == "network" or not chordal:
        P = cp.bmat(blocks)
        constraints.append((P + P.T) / 2 << 0)
    else:
        constraints += chordal_nsd(blocks)
    problem = cp.Problem(cp.Minimize(L2), constraints)
    options: dict = {}
    if solver == "SCS":
        e = SCS_DEFAULT_EPS if eps is None else eps
        options = dict(eps_abs=e, eps_rel=e, max_iters=200_000)
    elif solver == "CLARABEL" and eps is not None:
        options = dict(tol_gap_abs=eps, tol_gap_rel=eps, tol_feas=eps)
    try:
        problem.solve(solver=solver, verbose=verbose, **options)
    except cp.SolverError as exc:
        raise LipSDPError(f"solver {solver} failed on LipSDP-{coupling}: {exc}") from exc
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE, cp.UNBOUNDED,
                          cp.UNBOUNDED_INACCURATE) or L2.value is None:
        raise LipSDPError(f"LipSDP-{coupling} returned status {problem.status!r} with {solver}; "
                          f"check the weights for NaN/inf and the slope bounds alpha < beta")
    if coupling == "neuron":
        T = np.diag(np.concatenate([v.value for v in t]))
    elif coupling == "layer":
        T = np.diag(np.concatenate([np.full(s, v) for s, v in zip(sizes, lam.value)]))
    else:
        T = Tn.value
    return float(L2.value), T, problem.status


def chordal_nsd(blocks: list[list]) -> list:
    """P <= 0 for a block-tridiagonal P (neuron and layer coupling: z-blocks x^k, x^{k+1} only).

    A chain of blocks is a chordal pattern whose cliques are the consecutive pairs (k, k+1), so
    P <= 0 iff each diagonal block can be split, P_kk = A_k + B_k, with every clique matrix
    [[B_k, P_{k,k+1}], [P_{k+1,k}, A_{k+1}]] <= 0 (B_0 = P_00, A_l = P_ll; Agler et al. 1988).
    This replaces one PSD cone of size n_1 + sum(n_i) by l cones of two blocks each.
    """
    l = len(blocks) - 1
    A = [None] + [cp.Variable(blocks[k][k].shape, symmetric=True) for k in range(1, l)] + \
        [blocks[l][l]]
    constraints = []
    for k in range(l):
        B_k = blocks[k][k] - A[k] if k > 0 else blocks[0][0]
        Q = cp.bmat([[B_k, blocks[k][k + 1]], [blocks[k + 1][k], A[k + 1]]])
        constraints.append((Q + Q.T) / 2 << 0)
    return constraints


def lipsdp(weights: Sequence[np.ndarray], alpha: float = 0.0, beta: float = 1.0,
           coupling: str = "neuron", solver: str = "auto", eps: float | None = None,
           verbose: bool = False, time_budget: float = 300.0, tol: float = 1e-4,
           progress: bool | None = None) -> LipSDPResult:
    """Upper bound on the l2 Lipschitz constant of f by LipSDP (eq. (6)).

    ``weights``: W^0..W^l (W^i of shape n_{i+1} x n_i; biases do not matter). ``alpha``, ``beta``:
    slope bounds of the activation, 0 <= alpha < beta. ``coupling``: "neuron" (diagonal T,
    Theorem 1), "layer" (one multiplier per layer) or "network" (T_n: UNSOUND, kept only for the
    counterexample). ``solver``: "SCS" (the SDP's optimum), "CLARABEL" (interior point, small
    LMIs), "MOSEK" (if licensed), "first-order" (:mod:`lipcore.estimators.lipsdp_fo`: minimises
    the exact bound over T by smoothed L-BFGS within ``time_budget`` seconds, stopping at relative
    progress ``tol``; neuron and layer coupling; scales to deep and wide nets), or "auto"
    (first-order for neuron and layer coupling; SCS for network).
    A sound coupling's bound is certified on the full LMI and is never above the certified
    compositional start (module doc, step 3); a solve that fails or cannot be certified returns
    the start (``status`` says why). Raises :class:`LipSDPError` only when not even the start
    certifies (the message names what to use instead).
    """
    weights = check_weights(weights, alpha, beta)
    _check_options(weights, coupling, solver)
    if coupling == "network":
        warnings.warn("LipSDP with coupling='network' (the set T_n) is not a valid upper bound "
                      "(Pauli et al. 2021, Section II-C); use 'neuron' or 'layer'",
                      UnsoundCouplingWarning, stacklevel=2)
    if solver == "auto":            # the fastest sound solver at every size (docs/benchmarks.md)
        solver = "SCS" if coupling == "network" else "first-order"
    start = time.perf_counter()
    sizes = [w.shape[0] for w in weights[:-1]]
    if any(not np.any(w) for w in weights):           # a zero layer: f is constant, L = 0
        return LipSDPResult(0.0, 0.0, np.ones(sum(sizes)), coupling, solver, "constant net",
                            time.perf_counter() - start, np.nan, True, 0.0, 0.0)
    # Solve on the reduced, balanced problem; certify on the original one.
    balanced, to_original = balance([reduce_input_layer(weights[0]), *weights[1:]])
    if coupling == "network":
        L2_bal, T_bal, status = _solve_cvxpy(balanced, alpha, beta, coupling, solver, eps, verbose)
        L2, T = to_original(L2_bal, project_T(T_bal, coupling, weights))
        return LipSDPResult(float(np.sqrt(L2)), L2, T, coupling, solver, status,
                            time.perf_counter() - start, lmi_max_eig(weights, T, L2, alpha, beta),
                            False, float(np.sqrt(L2)))
    with small_lmi_threads(sum(sizes)):
        certifying = time.perf_counter()
        t0_bal, start_L2, start_t = _start(weights, balanced, to_original, alpha, beta)
        # the budget ends where the final certificate (about as costly as the start) must begin
        deadline = start + time_budget - (time.perf_counter() - certifying) / 2.0
        try:
            if solver == "first-order":
                from .lipsdp_fo import minimise_T
                if coupling == "neuron" and len(sizes) >= LAYER_FIRST_DEPTH:
                    # deep nets: the layer problem first (few variables, fast), then per neuron
                    budget = (deadline - time.perf_counter()) / 2.0
                    t0_bal, _ = minimise_T(balanced, alpha, beta, "layer", t0_bal, budget, tol,
                                           progress=progress)
                budget = deadline - time.perf_counter()
                t_bal, trace = minimise_T(balanced, alpha, beta, coupling, t0_bal, budget, tol,
                                          progress=progress)
                L2_bal, status = trace.best, trace.stopped
            else:
                L2_bal, T_bal, status = _solve_cvxpy(balanced, alpha, beta, coupling, solver, eps,
                                                     verbose)
                t_bal = np.diag(project_T(T_bal, coupling, balanced))
            L2_solver, t = to_original(L2_bal, t_bal)
            L2, t, top = certified_L2(weights, t, alpha, beta)
        except (LipSDPError, np.linalg.LinAlgError) as exc:
            if not np.isfinite(start_L2):
                raise LipSDPError(f"LipSDP-{coupling} failed ({exc}) and the compositional start "
                                  f"could not be certified either; use naive_bound(weights, "
                                  f"beta), which is always sound") from exc
            L2 = L2_solver = np.inf
            status = f"start ({solver} failed: {exc})"
        if start_L2 < L2:                         # bound == start_bound says so
            L2, t = start_L2, start_t
            top = _dense_check(weights, start_t, L2, alpha, beta)
    return LipSDPResult(bound=float(np.sqrt(L2)), L2=float(L2), t=t, coupling=coupling,
                        solver=solver, status=status, solve_time=time.perf_counter() - start,
                        lmi_max_eig=top, sound=True,
                        solver_bound=float(np.sqrt(min(L2_solver, L2))),
                        start_bound=float(np.sqrt(start_L2)))


def _start(weights: Sequence[np.ndarray], balanced: Sequence[np.ndarray], to_original,
           alpha: float, beta: float) -> tuple[np.ndarray | None, float, np.ndarray | None]:
    """(t of the start for the balanced problem, its certified L^2 for the original weights
    (inf if it does not certify), its t for the original weights)."""
    try:
        t_bal, L2_bal, _ = start_multipliers(balanced, alpha, beta)
    except (np.linalg.LinAlgError, ValueError):
        return None, np.inf, None
    certified = certify_t(weights, to_original(L2_bal, t_bal)[1], alpha, beta)
    if certified is None:
        return t_bal, np.inf, None
    return t_bal, certified[0], certified[1]


def _solve_cvxpy(balanced, alpha, beta, coupling, solver, eps, verbose):
    """:func:`_solve`, retried once with a tighter eps when SCS reports an inaccurate optimum."""
    L2, T, status = _solve(balanced, alpha, beta, coupling, solver, eps, verbose)
    if status == cp.OPTIMAL_INACCURATE and solver == "SCS":
        tighter = (SCS_DEFAULT_EPS if eps is None else eps) / 10.0
        L2, T, status = _solve(balanced, alpha, beta, coupling, solver, tighter, verbose)
    if status != cp.OPTIMAL:
        raise LipSDPError(f"LipSDP-{coupling} did not converge with {solver} (status "
                          f"{status!r}); try a looser eps, more iterations or another solver")
    return L2, T, status


def _check_options(weights: Sequence[np.ndarray], coupling: str, solver: str) -> None:
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {COUPLINGS}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "first-order" and coupling == "network":
        raise ValueError("the first-order solver handles diagonal T (coupling 'neuron' or "
                         "'layer'); 'network' needs an SDP solver such as 'SCS'")
    if solver in CVXPY_SOLVERS and solver not in cp.installed_solvers():
        raise ValueError(f"solver {solver} is not installed (installed: {cp.installed_solvers()})")
