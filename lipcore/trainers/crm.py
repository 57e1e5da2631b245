"""Certified-radius maximisation (CRM, Fazlyab, Entesari et al. 2023, loss (8)) and the GloRo
baseline (Leino et al. 2021), both with Lipschitz constants of logit differences from LipLT
(:mod:`lipcore.estimators.liplt_ops`) estimated by warm-started power iteration during training.

CRM, as in the official code (configs.md 3.1): with R_j = (z_y - z_j) / L_yj for j != y
(:func:`lipcore.margins.margin_radii`, the same radii the certificates use),

    loss = CE + lam * (1 / batch) * sum over correctly classified samples with min_j R_j < R0
           of  (1/t) logsumexp_j(-t R_j)  (= -R_soft, a soft minimum of the radii),

so g(r) = -r while the hard minimum radius is below R0; the robust term is off for the first
``robust_start`` epochs. Adam (eps 1e-7); the learning rate is constant, then decays
exponentially from ``decay_epoch`` to reach ``smallest_lr`` at the last epoch.

GloRo: the logits get a bottom class z_bot = max_{j != c} (z_j + eps K_cj), c the predicted
class and K the pairwise bounds, and cross-entropy is taken on the augmented logits. A GloRo
net whose prediction is not bottom is certified at eps when K is sound.

``loss="standard"`` trains with cross-entropy alone, with the same optimiser and schedule.
``augment`` (for example the code's CIFAR-10 flip + random affine) transforms each minibatch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..augment import FlipAffine
from ..margins import margin_radii
from ..estimators.liplt_ops import OperatorChain, PowerIteration, liplt_bounds, operator_chain
from ..progress import bar
from ..trace import InputShapeMismatch

LOSSES = ("standard", "crm", "gloro")


@dataclass(frozen=True)
class CRMConfig:
    """Training settings; defaults are the official MNIST ones (configs.md 3.3)."""

    loss: str = "crm"
    epochs: int = 400
    batch_size: int = 512
    lr: float = 1e-3
    smallest_lr: float = 1e-6
    decay_epoch: int = 25
    t: float = 5.0                    # soft-min temperature
    R0: float = 2.2                   # radii at or above R0 are no longer pushed
    lam: float = 30.0                 # weight of the robust term
    robust_start: int = 10            # epochs of plain cross-entropy first
    power_iterations: int = 10        # per training step, warm-started
    eps: float = 1.58                 # GloRo's training radius
    augment: FlipAffine | None = None  # per-minibatch augmentation (None: the images as given)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.smallest_lr <= 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0, smallest_lr > 0: {self}")
        if not (self.t > 0 and self.R0 > 0 and self.lam >= 0 and self.eps > 0):
            raise ValueError(f"need t > 0, R0 > 0, lam >= 0 and eps > 0: {self}")
        if self.power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {self.power_iterations}")


def learning_rate(cfg: CRMConfig, epoch: int) -> float:
    """lr for ``epoch`` (0-based): constant until decay_epoch, then exponential to smallest_lr."""
    if epoch < cfg.decay_epoch or cfg.epochs <= cfg.decay_epoch + 1:
        return cfg.lr
    fraction = (epoch - cfg.decay_epoch) / (cfg.epochs - 1 - cfg.decay_epoch)
    return cfg.lr * (cfg.smallest_lr / cfg.lr) ** fraction


def crm_term(logits: torch.Tensor, labels: torch.Tensor, pairwise: torch.Tensor, t: float,
             R0: float) -> torch.Tensor:
    """The robust term of loss (8) (module docstring), summed over the penalised samples and
    divided by the batch size."""
    r = margin_radii(logits, labels, pairwise)
    penalised = (logits.argmax(1) == labels) & (r.min(1).values < R0)
    neg_soft_radius = torch.logsumexp(-t * r, dim=1) / t
    return torch.where(penalised, neg_soft_radius, torch.zeros_like(neg_soft_radius)).sum() / len(labels)


def soft_radius(logits: torch.Tensor, labels: torch.Tensor, pairwise: torch.Tensor, t: float
                ) -> torch.Tensor:
    """R_soft = -(1/t) logsumexp_j(-t R_j): never above the hard minimum radius."""
    return -torch.logsumexp(-t * margin_radii(logits, labels, pairwise), dim=1) / t


def gloro_logits(logits: torch.Tensor, pairwise: torch.Tensor, eps: float) -> torch.Tensor:
    """The logits with GloRo's bottom class appended: max_{j != c} z_j + eps K_cj, c = argmax."""
    predicted = logits.argmax(1)
    shifted = logits + eps * pairwise[predicted]
    shifted = shifted.scatter(1, predicted[:, None], -math.inf)
    return torch.cat([logits, shifted.max(1, keepdim=True).values], dim=1)


def crm_train(model: nn.Module, data: TensorDataset, cfg: CRMConfig, device: str = "cpu",
              seed: int = 0) -> dict:
    """Train ``model`` (a plain conv/dense ReLU net; see :func:`operator_chain`) with
    ``cfg.loss``. Returns the history (loss, accuracy, mean estimated L_ij per epoch) and the
    power-iteration state, whose vectors a certificate may start from."""
    model.to(device).train()
    x_all, y_all = (t.to(device) for t in data.tensors)
    try:
        chain = operator_chain(model, tuple(x_all.shape[1:]))
    except InputShapeMismatch as mismatch:
        raise ValueError(f"training images of shape {tuple(x_all.shape[1:])} do not fit this "
                         f"net ({mismatch}); 4C3F takes (1, 28, 28), 6C2F (3, 32, 32), 8C2F "
                         "(3, 64, 64)") from None
    model.train()
    power = PowerIteration(chain, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-7)
    gen = torch.Generator().manual_seed(seed)
    n = len(x_all)
    history, start = [], time.perf_counter()
    progress = bar(cfg.epochs, f"{cfg.loss} training epochs")
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        robust = cfg.loss == "gloro" or (cfg.loss == "crm" and epoch >= cfg.robust_start)
        order = torch.randperm(n, generator=gen).to(device)
        totals = torch.zeros(3, device=device)            # loss, correct, mean L_ij
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if cfg.augment is not None:
                x = cfg.augment(x, gen)
            logits = model(x)
            if robust:
                pairwise = _pairwise_estimate(chain, power, cfg.power_iterations)
                if cfg.loss == "crm":
                    loss = F.cross_entropy(logits, y) + cfg.lam * crm_term(logits, y, pairwise,
                                                                          cfg.t, cfg.R0)
                else:
                    loss = F.cross_entropy(gloro_logits(logits, pairwise, cfg.eps), y)
                mean_pairwise = pairwise.detach().sum() / (len(pairwise) ** 2 - len(pairwise))
            else:
                loss, mean_pairwise = F.cross_entropy(logits, y), torch.zeros((), device=device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += torch.stack([loss.detach() * len(y),
                                   (logits.argmax(1) == y).sum().float(), mean_pairwise * len(y)])
        loss_, correct, mean_l = (totals / n).tolist()        # one synchronisation per epoch
        if not math.isfinite(loss_):
            raise FloatingPointError(f"{cfg.loss} training diverged at epoch {epoch + 1} "
                                     f"(loss {loss_}); lower lr (now {cfg.lr}) or lam")
        history.append(dict(epoch=epoch + 1, loss=loss_, train_accuracy=100 * correct,
                            mean_pairwise_estimate=mean_l if robust else None,
                            lr=learning_rate(cfg, epoch)))
        progress.set_postfix(loss=f"{loss_:.3g}", acc=f"{100 * correct:.1f}", refresh=False)
        progress.update()
    progress.close()
    model.eval()
    return dict(history=history, seconds=time.perf_counter() - start, power=power)


def _pairwise_estimate(chain: OperatorChain, power: PowerIteration, iterations: int
                       ) -> torch.Tensor:
    """LipLT pairwise constants from warm-started power iteration (an estimate)."""
    return liplt_bounds(chain, power.norms(chain, iterations), sound=False).pairwise
