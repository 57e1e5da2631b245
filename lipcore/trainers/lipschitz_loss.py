"""Usama & Chang's noise-based Lipschitz loss (Section 5, eqs. (3)-(5)):

    L = CE(f(x), y) + beta * max(0, k(x) - L_n),   k(x) = ||f(x_bar) - f(x)||_2 / ||x_bar - x||_2,
    x_bar = x + N(0, sigma_train^2) per pixel, one draw per step.

The paper leaves open (configs.md section 4), each a named option with our default:
* ``outputs``: k on the ``"logits"`` (default: Theorem 1 bounds the label map, but softmax
  saturates and would make k vanish on confident samples) or on ``"softmax"`` outputs;
* ``reduce``: the hinge per ``"sample"`` and then averaged (default: the loss is written per
  input x), or on the ``"batch"`` mean of k;
* ``clamp``: x_bar clamped to [0, 1] or not (default False: the paper adds noise and says
  nothing about clipping);
* sigma_train on the [0, 1] pixel scale (the scale is unknown; inputs in [0, 1] are lipcore's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .standard import TrainConfig, train

OUTPUTS = ("logits", "softmax")
REDUCTIONS = ("sample", "batch")


@dataclass(frozen=True)
class LipschitzLossConfig:
    """beta, sigma_train and L_n of the paper, and the options of the module docstring."""

    beta: float = 5.0
    sigma: float = 0.25
    L_n: float = 0.01
    outputs: str = "logits"
    reduce: str = "sample"
    clamp: bool = False

    def __post_init__(self):
        if self.beta < 0 or self.L_n < 0:
            raise ValueError(f"beta and L_n must be >= 0, got beta={self.beta}, L_n={self.L_n}")
        if not self.sigma > 0:
            raise ValueError(f"sigma_train must be > 0 (k(x) divides by ||x_bar - x||), "
                             f"got {self.sigma}")
        if self.outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {self.outputs!r}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}")


def noisy_copy(x: torch.Tensor, sigma: float, clamp: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2) per pixel (clamped to [0, 1] if asked), drawn on the generator's
    device (x's device when no generator is given)."""
    where = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
    noisy = x + sigma * noise
    return noisy.clamp(0.0, 1.0) if clamp else noisy


def difference_quotients(fx: torch.Tensor, fx_bar: torch.Tensor, x: torch.Tensor,
                         x_bar: torch.Tensor, outputs: str = "logits") -> torch.Tensor:
    """k(x) = ||f(x_bar) - f(x)|| / ||x_bar - x|| per sample, from the outputs ``fx``, ``fx_bar``
    (logits; softmax applied here when ``outputs="softmax"``)."""
    if outputs == "softmax":
        fx, fx_bar = fx.softmax(1), fx_bar.softmax(1)
    return (fx_bar - fx).flatten(1).norm(dim=1) / (x_bar - x).flatten(1).norm(dim=1).clamp_min(1e-12)


def hinge(k: torch.Tensor, cfg: LipschitzLossConfig) -> torch.Tensor:
    """beta * max(0, k - L_n), averaged over samples or taken on the mean k (``cfg.reduce``)."""
    if cfg.reduce == "batch":
        return cfg.beta * (k.mean() - cfg.L_n).clamp_min(0.0)
    return cfg.beta * (k - cfg.L_n).clamp_min(0.0).mean()


def lipschitz_penalty(cfg: LipschitzLossConfig, seed: int = 0):
    """The loss's second term as a ``batch_penalty`` for :func:`lipcore.trainers.train`, with its
    own noise stream (``seed``) so runs are reproducible. The stream lives on the data's device,
    so a GPU step needs no host-to-device copy of the noise."""
    generators: dict[torch.device, torch.Generator] = {}

    def penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
                ) -> torch.Tensor:
        if x.device not in generators:
            generators[x.device] = torch.Generator(x.device).manual_seed(seed)
        x_bar = noisy_copy(x, cfg.sigma, cfg.clamp, generators[x.device])
        return hinge(difference_quotients(logits, model(x_bar), x, x_bar, cfg.outputs), cfg)
    return penalty


def train_lipschitz_loss(model: nn.Module, data: TensorDataset, train_cfg: TrainConfig,
                         loss_cfg: LipschitzLossConfig, device: str = "cpu", seed: int = 0
                         ) -> dict:
    """Minimise the Lipschitz loss (module docstring) with the optimiser and schedule of
    ``train_cfg``; ``loss_cfg.beta = 0`` is standard training."""
    return train(model, data, train_cfg, device, seed=seed,
                 batch_penalty=lipschitz_penalty(loss_cfg, seed) if loss_cfg.beta > 0 else None)


@torch.no_grad()
def mean_quotient(model: nn.Module, data: TensorDataset, sigma: float, outputs: str = "logits",
                  seed: int = 0, device: str = "cpu", batch_size: int = 1000) -> float:
    """Mean k(x) over ``data`` with fresh noise of level ``sigma`` (an evaluation of what the
    loss penalises)."""
    model.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    x_all = data.tensors[0]
    total = 0.0
    for i in range(0, len(x_all), batch_size):
        x = x_all[i:i + batch_size].to(device)
        x_bar = noisy_copy(x, sigma, False, gen)
        total += difference_quotients(model(x), model(x_bar), x, x_bar, outputs).sum().item()
    return total / len(x_all)
