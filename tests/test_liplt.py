"""LipLT (Fazlyab, Entesari et al.): eq. (15) by hand, LipSDP <= LipLT <= naive above the
empirical lower bound, pairwise constants below their proxies, gradients for training."""
import math

import numpy as np
import pytest
import torch

from lipcore.estimators import empirical_lower_bound, lipsdp, naive_bound
from lipcore.estimators.liplt import liplt, naive_pairwise
from lipcore.models import fully_connected


def test_one_hidden_layer_is_eq_15_by_hand():
    rng = np.random.default_rng(0)
    W0, W1 = rng.normal(size=(5, 3)), rng.normal(size=(2, 5))
    for alpha, beta in ((0.0, 1.0), (0.0, 0.25), (0.1, 1.0)):
        by_hand = (np.linalg.norm((alpha + beta) / 2 * W1 @ W0, 2)
                   + (beta - alpha) / 2 * np.linalg.norm(W1, 2) * np.linalg.norm(W0, 2))
        assert float(liplt([W0, W1], alpha, beta).L) == pytest.approx(by_hand, rel=1e-12)


def test_two_hidden_layers_follow_the_recursion_19_by_hand():
    rng = np.random.default_rng(1)
    W0, W1, W2 = rng.normal(size=(4, 3)), rng.normal(size=(5, 4)), rng.normal(size=(2, 5))
    n = lambda a: np.linalg.norm(a, 2)                                   # noqa: E731
    m0 = n(W0)
    m1 = n(W1 @ (W0 / 2)) + 0.5 * n(W1) * m0
    m2 = n(W2 @ (W1 / 2) @ (W0 / 2)) + 0.5 * (n(W2 @ (W1 / 2)) * m0 + n(W2) * m1)
    assert float(liplt([W0, W1, W2]).L) == pytest.approx(m2, rel=1e-12)


@pytest.mark.parametrize("widths,act,seed", [([6, 8, 4], "relu", 0), ([5, 7, 7, 3], "relu", 1),
                                             ([6, 10, 10, 10, 4], "tanh", 2),
                                             ([4, 6, 6, 3], "sigmoid", 3)])
def test_lipsdp_le_liplt_le_naive_and_above_the_empirical_lower_bound(widths, act, seed):
    net = fully_connected(widths, act, seed=seed)
    W = net.weights()
    alpha, beta = net.slope_bounds
    bound = float(liplt(W, alpha, beta).L)
    assert lipsdp(W, alpha, beta, "neuron").bound <= bound * (1 + 1e-6)
    assert bound <= naive_bound(W, beta) * (1 + 1e-12)
    assert empirical_lower_bound(net, widths[0], seed=seed).value <= bound


def test_pairwise_constants_sit_below_their_proxies_and_above_pairwise_quotients():
    net = fully_connected([6, 12, 12, 5], "relu", seed=4)
    W = net.weights()
    r = liplt(W)
    pairwise, per_class, L = r.pairwise.numpy(), r.per_class.numpy(), float(r.L)
    assert np.allclose(np.diag(pairwise), 0.0) and np.allclose(pairwise, pairwise.T)
    off = ~np.eye(5, dtype=bool)
    assert (pairwise[off] <= math.sqrt(2) * L * (1 + 1e-12)).all()
    assert (pairwise <= per_class[:, None] + per_class[None, :] + 1e-12).all()
    assert (pairwise <= naive_pairwise(W).numpy() * (1 + 1e-12)).all()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 6, generator=gen), torch.randn(4000, 6, generator=gen)
    with torch.no_grad():
        dz = net(x.float()) - net(y.float())
    dist = (x - y).norm(dim=1)
    for i in range(5):
        for j in range(5):
            if i != j:
                assert ((dz[:, i] - dz[:, j]).abs() / dist).max() <= pairwise[i, j] * (1 + 1e-5)


def test_the_bound_is_differentiable_in_the_weights():
    net = fully_connected([4, 8, 3], "relu", seed=0)
    weights = [m.weight for m in net.linears]
    r = liplt(weights)
    (r.L + r.pairwise.sum()).backward()
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in weights)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="hidden layer"):
        liplt([np.eye(3)])
    with pytest.raises(ValueError, match="do not chain"):
        liplt([np.ones((4, 3)), np.ones((2, 5))])
    with pytest.raises(ValueError, match="alpha"):
        liplt([np.ones((4, 3)), np.ones((2, 4))], alpha=1.0, beta=0.5)
