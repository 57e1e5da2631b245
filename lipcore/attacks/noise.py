"""Accuracy under random input noise (Pauli et al. Fig. 2, Bungert et al.'s noise column)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..data import gaussian_noise, uniform_noise
from ..trainers.standard import evaluate

NOISES = {"gaussian": gaussian_noise, "uniform": uniform_noise}


def noise_accuracy_curve(model: nn.Module, data: TensorDataset, kind: str,
                         levels: Sequence[float], clamp: bool = False, seed: int = 0,
                         device: str = "cpu") -> list[float]:
    """Test accuracy (%) with noise of each level added to the inputs: ``gaussian`` adds
    N(0, level^2), ``uniform`` adds U(-level, level), per pixel; ``clamp`` clips to [0, 1].
    The same noise seed is used for every level and model, so curves are comparable."""
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r}; choose one of {sorted(NOISES)}")
    accuracies = []
    for level in levels:
        gen = torch.Generator().manual_seed(seed)

        def corrupt(x: torch.Tensor, level=level, gen=gen) -> torch.Tensor:
            return NOISES[kind](x.cpu(), level, gen, clamp=clamp).to(x.device)
        accuracies.append(evaluate(model, data, device, transform=corrupt)[1])
    return accuracies
