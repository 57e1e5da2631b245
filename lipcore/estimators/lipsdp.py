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
   with P(0, T) = [[C, D], [D^T, H]] and H < 0,  L^2 = lambda_max(C - D H^{-1} D^T).
   The full, unreduced LMI is then checked with an eigenvalue solver and L^2 is backed off until
   lambda_max(P) <= 0 holds. The returned bound therefore does not rely on solver tolerance.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import cvxpy as cp
import numpy as np
from threadpoolctl import threadpool_limits

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


class LipSDPError(RuntimeError):
    """LipSDP could not produce a certified bound (infeasible, inaccurate or failed solve)."""


class UnsoundCouplingWarning(UserWarning):
    """LipSDP with coupling="network" (the set T_n) does not give a valid upper bound."""


@dataclass
class LipSDPResult:
    """Outcome of :func:`lipsdp`. ``bound`` is a certified upper bound when ``sound`` is True."""

    bound: float
    L2: float
    T: np.ndarray
    coupling: str
    solver: str
    status: str
    solve_time: float
    lmi_max_eig: float
    sound: bool
    solver_bound: float


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


def reduce_input_layer(W0: np.ndarray) -> np.ndarray:
    """W~^0 (n_1 x min(n_0, n_1)) with W~^0 W~^0^T = W^0 W^0^T: same LipSDP optimum (module doc)."""
    n1, n0 = W0.shape
    if n0 <= n1:
        return W0
    lam, U = np.linalg.eigh(W0 @ W0.T)
    return U * np.sqrt(np.clip(lam, 0.0, None))


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
    if not np.linalg.eigvalsh(H)[-1] < 0.0:
        return np.inf
    S = C - D @ np.linalg.solve(H, D.T)
    return max(float(np.linalg.eigvalsh((S + S.T) / 2.0)[-1]), 0.0)


# At the optimum the hidden block H is often singular (e.g. the layer bound of the counterexample
# net), so the solver's T sits on or just outside the boundary. Scaling T by c > 1 gives
# H(cT) = c H(T) + (1 - c) W^l^T W^l, which moves such directions strictly inside.
T_SCALINGS = (1.0, 1 + 1e-9, 1 + 1e-8, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3)


def best_exact_L2(weights: Sequence[np.ndarray], T: np.ndarray, alpha: float, beta: float
                  ) -> tuple[float, np.ndarray]:
    """The smallest exact L^2 over the slightly scaled multipliers c T, c in T_SCALINGS."""
    L2, c = min((exact_L2(weights, c * T, alpha, beta), c) for c in T_SCALINGS)
    if not np.isfinite(L2):
        raise LipSDPError(
            "the hidden block of the LMI is not negative definite at the solver's T, even after "
            "scaling T by up to 1.001, so no L certifies it; retry with a tighter solver "
            "tolerance (eps=...) or solver='CLARABEL'")
    return L2, c * T


def certify(weights: Sequence[np.ndarray], T: np.ndarray, L2: float, alpha: float, beta: float,
            max_backoffs: int = 12) -> tuple[float, float]:
    """Back L^2 off from ``L2`` until the full LMI provably holds; returns (L2, lambda_max)."""
    scale = max(L2, 1e-300)
    for k in range(max_backoffs):
        candidate = L2 + scale * 10.0 ** (k - 10)           # +1e-10, 1e-9, ... relative
        top = lmi_max_eig(weights, T, candidate, alpha, beta)
        if top <= 0.0:
            return candidate, top
    raise LipSDPError(
        f"could not certify the LMI at L^2={L2:.6g}: the largest eigenvalue stays at {top:.3e} > 0 "
        f"after backing L^2 off by {10.0 ** (max_backoffs - 11):.0e} (relative); the solve is too "
        f"inaccurate: tighten eps or change solver")


def certified_L2(weights: Sequence[np.ndarray], T: np.ndarray, alpha: float = 0.0,
                 beta: float = 1.0) -> tuple[float, np.ndarray, float]:
    """A certified L^2 for ``weights`` with a fixed diagonal multiplier T (Theorem 1).

    Returns (L^2, the T actually used, lambda_max of the full LMI at that point, <= 0).
    Used by :func:`lipsdp` and by the ADMM trainer to certify W-bar for its fixed T.
    """
    weights = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    reduced = [reduce_input_layer(weights[0]), *weights[1:]]
    L2_exact, T = best_exact_L2(reduced, T, alpha, beta)
    L2, top = certify(weights, T, L2_exact, alpha, beta)
    return L2, T, top


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
    progress ``tol``; neuron and layer coupling; scales to wide nets), or "auto" (first-order
    for neuron and layer coupling, faster than SCS at every size measured; SCS for network).
    Whatever the solver, a sound coupling's bound is certified exactly on the full LMI. Raises :class:`LipSDPError` on
    infeasible or inaccurate solves.
    """
    weights = [np.atleast_2d(np.asarray(w, dtype=np.float64)) for w in weights]
    _check_inputs(weights, alpha, beta, coupling, solver)
    if coupling == "network":
        warnings.warn("LipSDP with coupling='network' (the set T_n) is not a valid upper bound "
                      "(Pauli et al. 2021, Section II-C); use 'neuron' or 'layer'",
                      UnsoundCouplingWarning, stacklevel=2)
    if solver == "auto":            # the fastest sound solver at every size (docs/benchmarks.md)
        solver = "SCS" if coupling == "network" else "first-order"
    start = time.perf_counter()
    # Solve on the reduced, balanced problem; certify on the original one.
    W0 = reduce_input_layer(weights[0])
    reduced = [W0, *weights[1:]]
    c = np.array([1.0 / max(np.linalg.norm(w, 2), 1e-12) for w in reduced])
    balanced = [ck * w for ck, w in zip(c, reduced)]
    if solver == "first-order":
        from .lipsdp_fo import minimise_T
        T_bal, trace = minimise_T(balanced, alpha, beta, coupling, time_budget, tol,
                                  progress=progress)
        L2_bal, status = trace.best, trace.stopped
    else:
        L2_bal, T_bal, status = _solve(balanced, alpha, beta, coupling, solver, eps, verbose)
        if status == cp.OPTIMAL_INACCURATE and solver == "SCS":
            tighter = (SCS_DEFAULT_EPS if eps is None else eps) / 10.0
            L2_bal, T_bal, status = _solve(balanced, alpha, beta, coupling, solver, tighter,
                                           verbose)
        if status != cp.OPTIMAL:
            raise LipSDPError(f"LipSDP-{coupling} did not converge with {solver} (status "
                              f"{status!r}); try a looser eps, more iterations or another solver")
    with small_lmi_threads(sum(w.shape[0] for w in weights[:-1])):
        L2_solver, T = unbalance(L2_bal, T_bal, c, weights)
        T = project_T(T, coupling, weights)
        if coupling == "network":
            L2_final = L2_solver
            top = lmi_max_eig(weights, T, L2_final, alpha, beta)
            sound = False
        else:
            L2_final, T, top = certified_L2(weights, T, alpha, beta)
            sound = True
    return LipSDPResult(bound=float(np.sqrt(L2_final)), L2=float(L2_final), T=T, coupling=coupling,
                        solver=solver, status=status, solve_time=time.perf_counter() - start,
                        lmi_max_eig=top, sound=sound, solver_bound=float(np.sqrt(L2_solver)))


def unbalance(L2: float, T: np.ndarray, c: np.ndarray, weights: Sequence[np.ndarray]
              ) -> tuple[float, np.ndarray]:
    """Map a solution for the balanced weights c_k W^k back to the original weights.

    Congruence with blkdiag(d_0 I, ..., d_l I), d_k = p_k / C, p_k = prod_{j<k} c_j and
    C = prod_k c_k, turns P~(L~^2, T~) into P(L~^2 / C^2, T) with T_k = p_k^2 T~_k / C^2.
    """
    C = float(np.prod(c))
    p = np.cumprod(np.concatenate([[1.0], c[:-1]]))        # p_0 = 1, p_k = c_0 ... c_{k-1}
    d = np.concatenate([np.full(s.stop - s.start, (p[k + 1] / C) ** 2)
                        for k, s in enumerate(_hidden_slices(weights))])
    return L2 / C ** 2, T * np.sqrt(np.outer(d, d))


def _check_inputs(weights: Sequence[np.ndarray], alpha: float, beta: float, coupling: str,
                  solver: str) -> None:
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
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {COUPLINGS}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if solver == "first-order" and coupling == "network":
        raise ValueError("the first-order solver handles diagonal T (coupling 'neuron' or "
                         "'layer'); 'network' needs an SDP solver such as 'SCS'")
    if solver in CVXPY_SOLVERS and solver not in cp.installed_solvers():
        raise ValueError(f"solver {solver} is not installed (installed: {cp.installed_solvers()})")
