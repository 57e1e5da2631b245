"""Noise evaluation: level 0 is the clean accuracy and strong noise hurts a trained net."""
import pytest
import torch
from torch.utils.data import TensorDataset

from lipcore.attacks import noise_accuracy_curve
from lipcore.trainers import evaluate


class Threshold(torch.nn.Module):
    """Class 1 when the mean pixel exceeds 0.5: a perfect classifier for the data below."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], dim=1) * 50


def test_noise_curve_starts_at_clean_accuracy_and_decreases():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = (0.45 + 0.1 * y.float()).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    data = TensorDataset(x, y)
    curve = noise_accuracy_curve(Threshold(), data, "gaussian", [0.0, 0.3, 1.0])
    assert curve[0] == evaluate(Threshold(), data)[1] == 100.0
    assert curve[2] < curve[0]
    with pytest.raises(ValueError, match="unknown noise"):
        noise_accuracy_curve(Threshold(), data, "salt", [0.1])
