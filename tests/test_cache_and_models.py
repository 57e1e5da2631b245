"""Model cache keys and loading; architectures and their weight order."""
import numpy as np
import pytest
import torch

from lipcore.cache import cache_key, cached
from lipcore.run import machine
from lipcore.models import (ACTIVATIONS, activation, fully_connected, from_weights,
                            madry_cnn, pauli_mnist_net)


def trainer_a(config):
    return config


def trainer_b(config):
    return {"different": config}


def test_cache_key_changes_with_everything_that_determines_a_model():
    base = cache_key({"lr": 0.1, "epochs": 5}, "data1", 0, trainer_a)
    assert base == cache_key({"epochs": 5, "lr": 0.1}, "data1", 0, trainer_a)   # order-free
    assert base != cache_key({"lr": 0.01, "epochs": 5}, "data1", 0, trainer_a)
    assert base != cache_key({"lr": 0.1, "epochs": 5}, "data2", 0, trainer_a)
    assert base != cache_key({"lr": 0.1, "epochs": 5}, "data1", 1, trainer_a)
    assert base != cache_key({"lr": 0.1, "epochs": 5}, "data1", 0, trainer_b)
    with pytest.raises(TypeError, match="JSON"):
        cache_key({"fn": object()}, "d", 0, trainer_a)


def test_cached_builds_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(3.0)}
    first = cached("k1", build)
    second = cached("k1", build)
    assert len(calls) == 1 and torch.equal(first["w"], second["w"])
    assert (tmp_path / "k1.pt").is_file() and not list(tmp_path.glob(".*tmp"))
    made = torch.load(tmp_path / "k1.pt", weights_only=True)["_made"]   # the machine changes nets
    assert made["made_on"] == machine() and f"{torch.get_num_threads()} threads" in machine()


def test_fully_connected_exposes_weights_in_lipsdp_order():
    net = fully_connected([5, 4, 3, 2], "tanh", seed=0)
    shapes = [w.shape for w in net.weights()]
    assert shapes == [(4, 5), (3, 4), (2, 3)] and net.slope_bounds == (0.0, 1.0)
    assert torch.equal(fully_connected([5, 4, 2], "relu", seed=1).linears[0].weight,
                       fully_connected([5, 4, 2], "relu", seed=1).linears[0].weight)


def test_from_weights_computes_eq_3():
    rng = np.random.default_rng(0)
    W = [rng.normal(size=(4, 3)), rng.normal(size=(2, 4))]
    b = [rng.normal(size=4), rng.normal(size=2)]
    net = from_weights(W, b, "sigmoid")
    x = rng.normal(size=(5, 3))
    expected = (1 / (1 + np.exp(-(x @ W[0].T + b[0])))) @ W[1].T + b[1]
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-12)
    with pytest.raises(ValueError, match="layer 1"):
        from_weights(W, [b[0], np.zeros(3)], "relu")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_slope_bounds_hold_numerically(name):
    act = activation(name)
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    y = act.module()(x)
    slopes = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    assert slopes.min() >= act.alpha - 1e-9 and slopes.max() <= act.beta + 1e-9


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        fully_connected([2, 2], "swish")


def test_parameter_counts_are_pinned():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pauli_mnist_net("tanh")) == 196 * 50 + 50 + 50 * 10 + 10          # 10,360
    assert count(fully_connected([2, 10, 10, 3], "tanh")) == 30 + 110 + 33          # Pauli 2D
    assert count(fully_connected([784, 64, 64, 10], "sigmoid")) == 55_050           # CLIP MLP
    cnn = madry_cnn(seed=0)
    assert count(cnn) == 3_274_634 and cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="side"):
        pauli_mnist_net("tanh", widths=(100, 10))
