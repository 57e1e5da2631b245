"""The first-order LipSDP solver (issue 21): the bound at a hand-made T is exactly the LMI's,
its gradient is the envelope formula, it stays within 1% of SCS and above the empirical lower
bound, and a time budget stops it cleanly with a sound (if looser) value."""
import numpy as np
import pytest

from lipcore.estimators import empirical_lower_bound, lipsdp, lmi_max_eig, naive_bound
from lipcore.estimators.lipsdp import exact_L2
from lipcore.estimators.chain import ChainLMI
from lipcore.estimators.compositional import start_multipliers
from lipcore.estimators.lipsdp_fo import minimise_T
from lipcore.models import fully_connected

NETS = [([6, 10, 4], "tanh", 0), ([12, 8, 8, 3], "relu", 1), ([5, 7, 6, 5, 2], "tanh", 2),
        ([9, 16, 3], "sigmoid", 3), ([20, 6, 6, 4], "softplus", 4), ([196, 50, 10], "tanh", 0)]


@pytest.mark.parametrize("widths,act,seed", NETS[:5])
@pytest.mark.parametrize("coupling", ["neuron", "layer"])
def test_first_order_is_never_below_the_interior_point_optimum(widths, act, seed, coupling):
    """The first-order bound is LipSDP's value at a feasible T, so it is at least the SDP's
    optimum; CLARABEL (interior point) finds that optimum to about 1e-8 on these small nets,
    where SCS's objective can sit 1e-5 above it."""
    net = fully_connected(widths, act, seed=seed)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    fo = lipsdp(W, alpha, beta, coupling, solver="first-order", progress=False)
    optimum = lipsdp(W, alpha, beta, coupling, solver="CLARABEL").solver_bound
    assert fo.bound >= optimum * (1 - 1e-7)


def test_a_hand_made_T_gives_exactly_the_bound_of_the_lmi_at_that_T():
    net = fully_connected([7, 9, 8, 3], "softplus", seed=3)
    W, (alpha, beta) = [np.asarray(w, dtype=np.float64) for w in net.weights()], net.slope_bounds
    rng = np.random.default_rng(0)
    t = 2.0 + rng.random(17) * 3.0
    g = ChainLMI(W, alpha, beta).value(t)
    assert np.isfinite(g)
    assert g == pytest.approx(exact_L2(W, np.diag(t), alpha, beta), rel=1e-10)
    assert lmi_max_eig(W, np.diag(t), g * (1 + 1e-8), alpha, beta) <= 1e-12
    assert lmi_max_eig(W, np.diag(t), g * (1 - 1e-6), alpha, beta) > 0
    assert ChainLMI(W, alpha, beta).value(np.full(17, 1e-9)) == np.inf     # H not < 0


def test_the_gradient_is_the_envelope_formula():
    W = [np.asarray(w, dtype=np.float64) for w in fully_connected([5, 6, 4, 2], "tanh",
                                                                      seed=7).weights()]
    lmi = ChainLMI(W, 0.2, 1.0)
    t = 3.0 + np.random.default_rng(1).random(10)
    S, factors = lmi.schur(t)
    lam, U = np.linalg.eigh(S)
    grad = lmi.neuron_gradients(lmi.chain(t, factors, U[:, -1:]))[:, 0]
    h = 1e-6
    for i in range(10):
        e = np.zeros(10)
        e[i] = h
        numeric = (lmi.value(t + e) - lmi.value(t - e)) / (2 * h)
        assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("widths,act,seed", NETS)
@pytest.mark.parametrize("coupling", ["neuron", "layer"])
def test_first_order_is_sound_and_within_one_percent_of_scs(widths, act, seed, coupling):
    net = fully_connected(widths, act, seed=seed)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    fo = lipsdp(W, alpha, beta, coupling, solver="first-order", progress=False)
    scs = lipsdp(W, alpha, beta, coupling, solver="SCS")
    assert fo.sound and fo.solver == "first-order" and fo.status == "converged"
    assert lmi_max_eig(W, fo.T, fo.L2, alpha, beta) <= 0.0          # certified on the full LMI
    assert fo.bound <= scs.bound * 1.01
    assert fo.bound >= scs.solver_bound * (1 - 1e-4)               # SCS's accuracy (lipsdp.py)
    assert fo.bound <= naive_bound(W, beta) * (1 + 1e-9)
    assert fo.bound >= empirical_lower_bound(net, widths[0], n_random=128, steps=30,
                                             seed=seed).value


def test_the_default_solver_is_first_order_and_network_coupling_refuses_it():
    W = fully_connected([6, 10, 4], "tanh", seed=0).weights()
    assert lipsdp(W).solver == "first-order"
    with pytest.raises(ValueError, match="diagonal T"):
        lipsdp(W, coupling="network", solver="first-order")


def test_a_budget_stops_cleanly_with_a_sound_looser_value():
    net = fully_connected([30, 40, 40, 40, 5], "relu", seed=5)
    W = net.weights()
    stopped = lipsdp(W, solver="first-order", time_budget=0.0, progress=False)
    full = lipsdp(W, solver="first-order", progress=False)
    assert stopped.status == "budget" and full.status == "converged"
    assert lmi_max_eig(W, stopped.T, stopped.L2) <= 0.0
    assert stopped.bound >= full.bound * (1 - 1e-9)
    assert stopped.bound <= naive_bound(W, 1.0) * 1.5
    balanced = [np.asarray(w) / np.linalg.norm(w, 2) for w in W]
    t0, g0, _ = start_multipliers(balanced, 0.0, 1.0)
    _, trace = minimise_T(balanced, 0.0, 1.0, "neuron", t0, time_budget=60.0)
    assert trace.values[0] == pytest.approx(g0, rel=1e-12)
    assert trace.values[-1] <= trace.values[0] and trace.iterations > 1
