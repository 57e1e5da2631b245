"""Plain supervised training (cross-entropy), optionally with L2 weight regularisation, an extra
penalty on the weights (the ADMM W-step adds its augmented-Lagrangian term this way) or on each
minibatch (Usama & Chang's Lipschitz loss), a step learning-rate schedule and the standard CIFAR
augmentation. The loop never synchronises with the device inside an epoch (losses accumulate on
it), so a GPU is not stalled once per step."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..augment import crop_flip
from ..progress import bar


AUGMENTATIONS = ("none", "crop_flip")


@dataclass
class TrainConfig:
    """``epochs`` passes over the data in minibatches of ``batch_size`` (None: full batch)."""

    epochs: int = 5
    batch_size: int | None = 100
    lr: float = 0.01
    optimizer: str = "adam"          # "adam" or "sgd"
    l2: float = 0.0                  # lambda in lambda/2 * sum ||theta||^2 over all parameters
    shuffle: bool = False            # the original Pauli et al. code did not shuffle
    momentum: float = 0.0            # SGD only
    milestones: tuple[int, ...] = ()  # epochs after which the learning rate is divided by 10
    augment: str = "none"            # "none" or "crop_flip" (lipcore.augment.crop_flip)

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 0 or self.lr <= 0 or self.l2 < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need epochs >= 0, lr > 0, l2 >= 0, 0 <= momentum < 1; got {self}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """1/2 sum ||theta||^2 over all parameters, biases included (as in the original code)."""
    return 0.5 * sum(p.pow(2).sum() for p in model.parameters())


BatchPenalty = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train(model: nn.Module, data: TensorDataset, cfg: TrainConfig, device: str = "cpu",
          penalty: Callable[[nn.Module], torch.Tensor] | None = None,
          optimizer: torch.optim.Optimizer | None = None, seed: int = 0,
          batch_penalty: BatchPenalty | None = None) -> dict:
    """Minimise CE + l2 * l2_penalty + penalty(model) + batch_penalty(model, x, y, logits) per
    minibatch, dividing the learning rate by 10 after each epoch in ``cfg.milestones``. Returns
    the history and the optimizer (so that callers can keep its state across calls, as the ADMM
    code did)."""
    model.to(device).train()
    optimizer = optimizer or make_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones)) \
        if cfg.milestones else None
    x_all, y_all = (t.to(device) for t in data.tensors)
    n = len(x_all)
    batch = n if cfg.batch_size is None else cfg.batch_size
    gen = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    pbar = bar(cfg.epochs, "training epochs")
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
        total = torch.zeros((), device=device)
        for i in range(0, n, batch):
            idx = order[i:i + batch].to(device)
            x, y = x_all[idx], y_all[idx]
            if cfg.augment == "crop_flip":
                x = crop_flip(x, gen)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            objective = loss
            if cfg.l2:
                objective = objective + cfg.l2 * l2_penalty(model)
            if penalty is not None:
                objective = objective + penalty(model)
            if batch_penalty is not None:
                objective = objective + batch_penalty(model, x, y, logits)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        losses.append(total.item() / n)                # one synchronisation per epoch
        if schedule is not None:
            schedule.step()
        pbar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
        pbar.update()
        if not torch.isfinite(torch.tensor(losses[-1])):
            raise FloatingPointError(f"training diverged (loss {losses[-1]}); lower the "
                                     f"learning rate (lr={cfg.lr})")
    pbar.close()
    model.eval()
    return dict(losses=losses, seconds=time.perf_counter() - start, optimizer=optimizer)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: str = "cpu",
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
             batch_size: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of ``model`` on ``data``, inputs passed through
    ``transform`` first if given (e.g. noise)."""
    model.to(device).eval()
    x_all, y_all = data.tensors
    loss, correct = 0.0, 0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)
        if transform is not None:
            x = transform(x)
        logits = model(x)
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss / len(x_all), 100.0 * correct / len(x_all)
