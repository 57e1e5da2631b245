"""Usama & Chang's Lipschitz loss and residual nets: k(x) is the difference quotient it defines,
the hinge vanishes below L_n, training with it lowers k, and the nets have the paper's sizes."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lipcore.models import residual_net, usama_mnist_cnn
from lipcore.trainers import LipschitzLossConfig, TrainConfig, train, train_lipschitz_loss
from lipcore.trainers.lipschitz_loss import (difference_quotients, hinge, lipschitz_penalty,
                                             mean_quotient, noisy_copy)


def test_k_is_the_difference_quotient_of_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=gen)
    x = torch.rand(8, 5, generator=gen)
    x_bar = noisy_copy(x, 0.3, clamp=False, generator=gen)
    k = difference_quotients(x @ W.T, x_bar @ W.T, x, x_bar)
    expected = ((x_bar - x) @ W.T).norm(dim=1) / (x_bar - x).norm(dim=1)
    assert torch.allclose(k, expected)
    assert (k <= torch.linalg.matrix_norm(W, 2) + 1e-6).all()          # a quotient never exceeds L
    soft = difference_quotients(x @ W.T, x_bar @ W.T, x, x_bar, "softmax")
    assert torch.allclose(soft, ((x_bar @ W.T).softmax(1) - (x @ W.T).softmax(1)).norm(dim=1)
                          / (x_bar - x).norm(dim=1))
    clamped = noisy_copy(x, 5.0, clamp=True, generator=gen)
    assert clamped.min() >= 0.0 and clamped.max() <= 1.0


def test_the_hinge_is_zero_below_L_n_and_linear_above():
    cfg = LipschitzLossConfig(beta=5.0, L_n=0.5)
    assert hinge(torch.tensor([0.1, 0.5, 0.2]), cfg) == 0.0
    assert hinge(torch.tensor([1.5, 0.0]), cfg) == pytest.approx(5.0 * 1.0 / 2)     # per sample
    batch = LipschitzLossConfig(beta=5.0, L_n=0.5, reduce="batch")
    assert hinge(torch.tensor([1.5, 0.0]), batch) == pytest.approx(5.0 * 0.25)      # mean k first


def _toy(n=600, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=gen)
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).long()
    return TensorDataset(x, y)


def test_training_with_the_loss_lowers_the_mean_quotient_against_standard_training():
    data = _toy()
    cfg = TrainConfig(epochs=15, batch_size=50, lr=0.01, optimizer="adam", shuffle=True)
    nets = {}
    for beta in (0.0, 10.0):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 2))
        train_lipschitz_loss(net, data, cfg, LipschitzLossConfig(beta=beta, sigma=0.2, L_n=0.05))
        nets[beta] = mean_quotient(net, data, 0.2)
    assert nets[10.0] < 0.7 * nets[0.0]


def test_the_penalty_is_reproducible_and_zero_beta_is_standard_training():
    data = _toy(200)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=0.01, optimizer="sgd", momentum=0.9)
    outs = []
    for run in range(2):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 2))
        outs.append(train_lipschitz_loss(net, data, cfg, LipschitzLossConfig(beta=1.0))["losses"])
    assert outs[0] == outs[1]
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.manual_seed(0)
    zero = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 2))
    assert train(plain, data, cfg)["losses"] == \
        train_lipschitz_loss(zero, data, cfg, LipschitzLossConfig(beta=0.0))["losses"]
    penalty = lipschitz_penalty(LipschitzLossConfig(beta=2.0, L_n=1e9))
    x = data.tensors[0][:4]
    assert penalty(plain, x, None, plain(x)) == 0.0


def test_learning_rate_milestones_divide_by_ten():
    net = nn.Linear(36, 2)
    data = TensorDataset(torch.rand(20, 36), torch.randint(0, 2, (20,)))
    out = train(net, data, TrainConfig(epochs=4, batch_size=10, lr=0.1, optimizer="sgd",
                                       momentum=0.9, milestones=(1, 3)))
    assert out["optimizer"].param_groups[0]["lr"] == pytest.approx(0.001)


@pytest.mark.parametrize("name,paper_millions", [("resnet20", 0.26), ("preresnet20", 0.27),
                                                 ("preresnet32", 0.46)])
def test_residual_nets_have_the_papers_parameter_counts(name, paper_millions):
    net = residual_net(name, seed=0)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count / 1e6 - paper_millions) <= 0.01          # the paper rounds to 0.01M
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert net(torch.rand(2, 3, 96, 96)).shape == (2, 10)      # STL-10's size
    assert usama_mnist_cnn(seed=0)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=-0.1), "sigma"), (dict(sigma=0.0), "sigma"), (dict(beta=-1.0), "beta"),
    (dict(L_n=-0.01), "L_n"), (dict(outputs="probits"), "outputs"), (dict(reduce="max"), "reduce")])
def test_bad_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LipschitzLossConfig(**kwargs)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ValueError, match="preresnet32"):
        residual_net("resnet18")
