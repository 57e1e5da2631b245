"""ADMM with LipSDP (Pauli et al.): it lowers L, enforce mode keeps Theorem 6, the Lipschitz step
is sound, and the 2D data match the original code."""
import copy

import numpy as np
import pytest
import torch

from lipcore.data import pauli_2d, ring_label
from lipcore.estimators import empirical_lower_bound, lipsdp
from lipcore.models import fully_connected
from lipcore.trainers import ADMMConfig, LipschitzStep, TrainConfig, admm_train, evaluate, train

FAST_SGD = dict(batch_size=None, lr=0.1, optimizer="sgd")


@pytest.fixture(scope="module")
def toy():
    """A 2-8-8-3 tanh net trained briefly on the Pauli 2D data (the ADMM starting point)."""
    data = pauli_2d()
    net = fully_connected([2, 8, 8, 3], "tanh", seed=0)
    train(net, data.train, TrainConfig(epochs=1500, **FAST_SGD))
    return data, net


def _bound(net):
    return lipsdp([m.weight.detach().double().numpy() for m in net.linears]).bound


def test_2d_data_reproduce_the_original_code_stream():
    data = pauli_2d()
    state = np.random.RandomState(1612111977)
    x, y = state.rand(50, 1), state.rand(50, 1)
    np.testing.assert_allclose(data.train.tensors[0].numpy(), np.hstack([x, y]).astype(np.float32))
    state.rand(100, 2)
    np.testing.assert_allclose(data.test.tensors[0].numpy()[:5], state.rand(5, 2).astype(np.float32))
    assert len(data.test) == 5000
    assert ring_label(np.array([[0.5, 0.5], [0.5, 0.8], [0.0, 0.0]])).tolist() == [2, 1, 0]
    counts = torch.bincount(data.train.tensors[1], minlength=3)
    assert counts.sum() == 50 and (counts > 0).all()


def test_admm_regularisation_lowers_the_bound(toy):
    data, net = toy
    start = _bound(net)
    cfg = ADMMConfig(rho=0.25, mu=5e-2, iterations=3, max_iterations=3,
                     w_step=TrainConfig(epochs=100, **FAST_SGD))
    result = admm_train(copy.deepcopy(net), data.train, cfg)
    assert len(result.history) == 3
    assert result.history[-1]["L_Wbar"] < 0.9 * start
    assert _bound(result.model) < start


@pytest.mark.parametrize("L_des", [0.5, 2.0])
def test_enforce_mode_never_lets_lipsdp_of_wbar_exceed_L_des(toy, L_des):
    data, net = toy
    assert _bound(net) > L_des                      # the constraint is active
    cfg = ADMMConfig(rho=0.25, mu=None, L_des=L_des, iterations=3, max_iterations=3,
                     w_step=TrainConfig(epochs=100, **FAST_SGD))
    result = admm_train(copy.deepcopy(net), data.train, cfg)
    assert all(h["L_Wbar"] <= L_des for h in result.history)
    assert lipsdp(result.Wbar).bound <= L_des * (1 + 1e-4)       # an independent re-solve
    assert _bound(result.model) <= L_des * (1 + 1e-4)            # the reported net is W-bar
    lower = empirical_lower_bound(result.model, 2, n_random=256).value
    assert lower <= L_des


def test_lipschitz_step_returns_a_sound_bound_for_its_wbar():
    net = fully_connected([6, 10, 8, 3], "tanh", seed=3)
    W = net.weights()
    T = lipsdp(W).T
    t = np.split(np.diag(T), [10])
    step = LipschitzStep([w.shape for w in W], ADMMConfig(rho=0.25, mu=0.1))
    rng = np.random.default_rng(0)
    Wbar, _ = step.solve([w + 0.1 * rng.normal(size=w.shape) for w in W], t)
    L_step = float(np.sqrt(step.L2.value))
    # the step's L is a LipSDP bound with T fixed, so it is >= the optimum over T (up to tolerance)
    assert lipsdp(Wbar).bound <= L_step * (1 + 1e-3)
    probe = fully_connected([6, 10, 8, 3], "tanh")
    with torch.no_grad():
        for m, w in zip(probe.linears, Wbar):
            m.weight.copy_(torch.from_numpy(w))
    assert empirical_lower_bound(probe, 6, n_random=256).value <= L_step


def test_bad_admm_configs_are_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        ADMMConfig(mu=1e-3, L_des=5.0)
    with pytest.raises(ValueError, match="exactly one"):
        ADMMConfig(mu=None)
    with pytest.raises(ValueError, match="exactly one"):
        ADMMConfig()
    with pytest.raises(ValueError, match="rho > 0"):
        ADMMConfig(rho=0.0, mu=1e-3)
    assert ADMMConfig(L_des=5.0).mode == "enforce" and ADMMConfig(mu=0.01).mode == "regularise"
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_l2_training_lowers_the_weight_norm_and_evaluate_reports_accuracy(toy):
    data, _ = toy
    plain = fully_connected([2, 8, 8, 3], "tanh", seed=1)
    shrunk = fully_connected([2, 8, 8, 3], "tanh", seed=1)
    train(plain, data.train, TrainConfig(epochs=300, **FAST_SGD))
    train(shrunk, data.train, TrainConfig(epochs=300, l2=5e-2, **FAST_SGD))
    norm = lambda n: sum(p.pow(2).sum().item() for p in n.parameters())  # noqa: E731
    assert norm(shrunk) < norm(plain)
    loss, acc = evaluate(plain, data.test)
    assert 0 <= acc <= 100 and loss > 0


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_profile_builds_valid_settings(profile):
    from lipcore.experiments.pauli_admm import settings
    S = settings(profile, activation="relu", l2_source="code")
    assert set(S) == {"2D", "MNIST"}
    assert S["MNIST"].activation == "relu" and S["2D"].l2 == S["MNIST"].l2 == 5e-4
    assert S["2D"].admm.rho == S["MNIST"].admm.rho == 0.25
    assert (S["2D"].admm.mu, S["MNIST"].admm.mu) == (1e-5, 1e-2)
    if profile == "paper":                       # the original code's stopping rules
        assert (S["2D"].admm.iterations, S["2D"].admm.tol_L) == (5, 1.0)
        assert (S["MNIST"].admm.iterations, S["MNIST"].admm.tol_L) == (2, 0.5)
    model = S["MNIST"].model(0)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="l2_source"):
        settings(profile, l2_source="matlab")


def test_claims_are_evaluated_on_the_numbers():
    from lipcore.experiments.pauli_admm import claims
    rows = [dict(setting=s, net=n, L=L, test_accuracy=a) for s in ("2D", "MNIST")
            for n, L, a in [("Nom-NN", 100, 96), ("L2-NN", 10, 90), ("Lip-NN", 8, 95.5)]]
    noise = {"gaussian": {"levels": [0, 0.1, 0.2, 0.3],
                          "accuracy": {"Nom-NN": [96, 90, 80, 60], "Lip-NN": [95.5, 93, 85, 55]}}}
    verdicts = claims(rows, noise)
    assert all(verdicts.values())
    rows[2]["L"] = 11                                      # 2D Lip-NN no longer lowest
    assert not claims(rows, noise)["2D: Lip-NN has the lowest L of the three"]
