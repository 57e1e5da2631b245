"""ADMM training with LipSDP (Pauli et al. 2021, Section III).

Problem (8), Lipschitz regularisation:   min_{W, W-bar, L^2}  loss(W) + mu L^2 + 1_M(L^2, W-bar)
Problem (10), enforced bound L_des:      min_{W, W-bar}       loss(W) + 1_M(L_des^2, W-bar)
both subject to W = W-bar, where M is the LMI (7) with the multiplier T fixed and alpha = 0:

    M_l(L^2, W-bar) = [A; B]^T [[0, beta T], [beta T, -2T]] [A; B] + blkdiag(-L^2 I, 0, ..., 0)
                      bordered by the output row [0 ... W-bar^l  -I]                  <= 0  (7)

ADMM (9): (9a) W-step: ordinary training of loss(W) + <Y, W - W-bar> + rho/2 ||W - W-bar||^2;
(9b) Lipschitz step: the SDP above over (L^2, W-bar) with the same augmented terms;
(9c) Y <- Y + rho (W - W-bar). Only weight matrices are split; biases stay in the W-step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..estimators.lipsdp import LipSDPError, certified_L2, chordal_nsd, lipsdp
from ..progress import bar
from .standard import TrainConfig, evaluate, make_optimizer, train

ENFORCE_MARGIN = 1e-3     # solve the enforced LMI at (1 - margin) L_des, then certify
LOOSE_EPS = 1e-3          # accuracy of the first, cold solve of the Lipschitz step


@dataclass
class ADMMConfig:
    """Exactly one of ``mu`` (regularise, problem (8); the paper uses 1e-5 on 2D, 1e-2 on MNIST)
    and ``L_des`` (enforce, problem (10)): ``ADMMConfig(mu=1e-2)`` or ``ADMMConfig(L_des=5.0)``."""

    rho: float = 0.25
    mu: float | None = None
    L_des: float | None = None
    iterations: int = 5                 # ADMM iterations always done
    max_iterations: int = 5             # upper limit when the |dL| rule continues
    tol_L: float | None = None          # continue while |L_k - L_{k-1}| >= tol_L (original code)
    w_step: TrainConfig = field(default_factory=TrainConfig)
    beta: float = 1.0                   # slope bound of the activation (alpha = 0, Remark 3)
    update_T: bool = False              # Remark 5 variant: re-fit T on W-bar after each step
    solver: str = "SCS"
    eps: float = 1e-5

    def __post_init__(self):
        if (self.mu is None) == (self.L_des is None):
            raise ValueError("give exactly one of mu (Lipschitz regularisation, problem (8)) or "
                             "L_des (enforced bound, problem (10))")
        if self.rho <= 0 or (self.mu is not None and self.mu < 0) or \
                (self.L_des is not None and self.L_des <= 0):
            raise ValueError(f"need rho > 0, mu >= 0, L_des > 0; got {self}")
        if not 1 <= self.iterations <= self.max_iterations:
            raise ValueError("need 1 <= iterations <= max_iterations")

    @property
    def mode(self) -> str:
        return "regularise" if self.mu is not None else "enforce"


class LipschitzStep:
    """The SDP (9b), compiled once with cvxpy Parameters so each ADMM iteration re-solves it
    with new data and a warm start."""

    def __init__(self, shapes: list[tuple[int, int]], cfg: ADMMConfig):
        self.cfg = cfg
        l = len(shapes) - 1
        self.V = [cp.Parameter(s, name=f"V{k}") for k, s in enumerate(shapes)]  # W + Y / rho
        self.t = [cp.Parameter(s[0], nonneg=True, name=f"t{k + 1}") for k, s in
                  enumerate(shapes[:-1])]
        self.Wbar = [cp.Variable(s, name=f"Wbar{k}") for k, s in enumerate(shapes)]
        if cfg.mode == "regularise":
            self.L2 = cp.Variable(nonneg=True, name="L2")
            objective = cfg.mu * self.L2
        else:
            self.L2 = (cfg.L_des * (1 - ENFORCE_MARGIN)) ** 2
            objective = 0
        objective = objective + cfg.rho / 2 * sum(cp.sum_squares(Wb - V) for Wb, V in
                                                   zip(self.Wbar, self.V))
        dims = [shapes[0][1]] + [s[0] for s in shapes]           # x^0 .. x^l, output y
        blocks = [[np.zeros((dims[j], dims[k])) for k in range(l + 2)] for j in range(l + 2)]
        blocks[0][0] = -self.L2 * np.eye(dims[0])
        for k in range(1, l + 1):
            Tk = cp.diag(self.t[k - 1])
            blocks[k - 1][k] = cfg.beta * (self.Wbar[k - 1].T @ Tk)
            blocks[k][k - 1] = cfg.beta * (Tk @ self.Wbar[k - 1])
            blocks[k][k] = -2 * Tk
        blocks[l][l + 1] = self.Wbar[l].T
        blocks[l + 1][l] = self.Wbar[l]
        blocks[l + 1][l + 1] = -np.eye(dims[l + 1])
        self.problem = cp.Problem(cp.Minimize(objective), chordal_nsd(blocks))
        self.solved = False

    def solve(self, V: list[np.ndarray], t: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Returns (W-bar, solve seconds)."""
        for p, v in zip(self.V, V):
            p.value = v
        for p, v in zip(self.t, t):
            p.value = v
        start = time.perf_counter()
        # A cold SCS start at full accuracy needs ~20x more iterations than a warm one (MNIST:
        # 1475 vs 75), so the first solve goes loose-then-tight; later ones start warm.
        schedule = [self.cfg.eps] if self.solved else [max(LOOSE_EPS, self.cfg.eps), self.cfg.eps]
        try:
            for eps in schedule:
                self.problem.solve(solver=self.cfg.solver, warm_start=True, eps_abs=eps,
                                   eps_rel=eps, max_iters=100_000)
            self.solved = True
        except cp.SolverError as exc:
            raise LipSDPError(f"Lipschitz step (9b) failed: {exc}") from exc
        if self.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise LipSDPError(f"Lipschitz step (9b) returned status {self.problem.status!r}"
                              + ("; L_des may be too small for this T" if
                                 self.cfg.mode == "enforce" else ""))
        return [w.value.copy() for w in self.Wbar], time.perf_counter() - start


@dataclass
class ADMMResult:
    model: nn.Module                 # the reported net: W-step net (regularise), W-bar (enforce)
    history: list[dict]
    T: np.ndarray
    Wbar: list[np.ndarray]


def weight_layers(model: nn.Module) -> list[nn.Linear]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("ADMM training needs a model with nn.Linear layers")
    return layers


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [m.weight.detach().cpu().double().numpy() for m in weight_layers(model)]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    with torch.no_grad():
        for m, w in zip(weight_layers(model), weights):
            m.weight.copy_(torch.as_tensor(w, dtype=m.weight.dtype))


def admm_train(model: nn.Module, data: TensorDataset, cfg: ADMMConfig, T: np.ndarray | None = None,
               device: str = "cpu", seed: int = 0, log=None) -> ADMMResult:
    """Run ADMM (9a)-(9c) from ``model`` (typically the L2-regularised net). ``T`` defaults to
    LipSDP-neuron's multiplier on the initial net, as the paper suggests. ``log(dict)`` is called
    after each iteration with the record that also goes into ``history``."""
    W = get_weights(model)
    if T is None:
        T = lipsdp(W, 0.0, cfg.beta, "neuron").T
    t = np.diag(T)
    sizes = [w.shape[0] for w in W[:-1]]
    t_blocks = np.split(t, np.cumsum(sizes)[:-1])
    step = LipschitzStep([w.shape for w in W], cfg)
    Wbar = [w.copy() for w in W]
    Y = [np.zeros_like(w) for w in W]
    optimizer = make_optimizer(model, cfg.w_step)
    history: list[dict] = []
    L_prev = None
    pbar = bar(cfg.max_iterations, "ADMM iterations (at most)")
    for k in range(cfg.max_iterations):
        # (9a) W-step: training with the augmented Lagrangian terms.
        target = [torch.as_tensor(wb - y / cfg.rho, dtype=torch.float32, device=device)
                  for wb, y in zip(Wbar, Y)]

        def penalty(net: nn.Module) -> torch.Tensor:
            return cfg.rho / 2 * sum((m.weight - c).pow(2).sum()
                                     for m, c in zip(weight_layers(net), target))
        trained = train(model, data, cfg.w_step, device, penalty=penalty, optimizer=optimizer,
                        seed=seed + k)
        optimizer = trained["optimizer"]
        W = get_weights(model)
        # (9b) Lipschitz step with T fixed.
        Wbar, lip_seconds = step.solve([w + y / cfg.rho for w, y in zip(W, Y)], t_blocks)
        L_step = float(np.sqrt(step.L2.value if cfg.mode == "regularise" else step.L2))
        certificate = lipsdp(Wbar, 0.0, cfg.beta, "neuron")         # certified LipSDP(W-bar)
        L_bar = certificate.bound
        if cfg.mode == "enforce" and L_bar > cfg.L_des:
            # The certificate scales exactly with the last layer (W^l -> c W^l, T -> c^2 T),
            # which restores Theorem 6 if solver tolerance left W-bar marginally outside.
            c = cfg.L_des / L_bar * (1 - 1e-6)
            Wbar[-1] *= c
            L_bar = float(np.sqrt(certified_L2(Wbar, c ** 2 * certificate.T, 0.0, cfg.beta)[0]))
        if cfg.mode == "enforce" and L_bar > cfg.L_des:                  # Theorem 6
            raise LipSDPError(f"iteration {k + 1}: LipSDP(W-bar) = {L_bar:.6g} exceeds "
                              f"L_des = {cfg.L_des:.6g} after rescaling; this is a bug")
        # (9c) dual update.
        Y = [y + cfg.rho * (w - wb) for y, w, wb in zip(Y, W, Wbar)]
        if cfg.update_T:
            t_blocks = np.split(np.diag(lipsdp(Wbar, 0.0, cfg.beta, "neuron").T),
                                np.cumsum(sizes)[:-1])
        L_W = lipsdp(W, 0.0, cfg.beta, "neuron").bound
        loss, acc = evaluate(model, data, device)
        record = dict(iteration=k + 1, loss=loss, train_accuracy=acc, L_W=L_W, L_Wbar=L_bar,
                      L_step=L_step,
                      gap=float(np.sqrt(sum(((w - wb) ** 2).sum() for w, wb in zip(W, Wbar)))),
                      w_step_seconds=trained["seconds"], lip_step_seconds=lip_seconds)
        history.append(record)
        pbar.set_postfix(loss=f"{loss:.4g}", L_W=f"{L_W:.4g}", L_Wbar=f"{L_bar:.4g}",
                         refresh=False)
        pbar.update()
        if log is not None:
            log(record)
        converged = cfg.tol_L is None or (L_prev is not None and abs(L_W - L_prev) < cfg.tol_L)
        L_prev = L_W
        if k + 1 >= cfg.iterations and converged:
            break
    pbar.close()
    if cfg.mode == "enforce":
        set_weights(model, Wbar)
    return ADMMResult(model=model, history=history, T=np.diag(np.concatenate(t_blocks)),
                      Wbar=Wbar)
