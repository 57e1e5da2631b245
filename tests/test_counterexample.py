"""Pauli et al. Section II-C: the counterexample facts."""
import numpy as np
import pytest

from lipcore import counterexample as cx
from lipcore.estimators import empirical_lower_bound, lipsdp


def test_network_fits_cos_with_the_papers_deviation():
    deviation, _ = cx.max_fit_deviation()
    assert deviation == pytest.approx(0.0843, abs=5e-5)


def test_torch_network_matches_the_closed_form():
    import torch
    x = np.linspace(-3, 3, 31)
    out = cx.paper_network()(torch.from_numpy(x).reshape(-1, 1)).detach().numpy().ravel()
    np.testing.assert_allclose(out, cx.net_value(x), atol=1e-12)


def test_true_constant_is_about_one_and_bracketed_by_lower_and_upper_bounds():
    true_L, _ = cx.exact_lipschitz()
    lower = empirical_lower_bound(cx.paper_network(), 1, n_random=256).value
    assert 0.9 < true_L < 1.0
    assert lower <= true_L <= lower * (1 + 1e-6)       # the search finds the exact constant
    W = cx.paper_network().weights()
    for coupling in ("neuron", "layer"):
        assert lipsdp(W, coupling=coupling).bound >= true_L


def test_coupled_T_makes_the_lmi_hold_for_arbitrarily_small_L():
    L = np.logspace(0, -6, 7)
    assert np.all(cx.coupled_lmi_sweep(L) <= 1e-12)
    true_L, _ = cx.exact_lipschitz()
    assert L.min() < true_L                              # so the "bound" is wrong
    # T is in T_n: nonpositive off-diagonal, nonnegative row sums, and it is not diagonal
    T = cx.T_COUPLED
    assert T[0, 1] < 0 and np.all(T @ np.ones(2) >= 0)


def test_lemma_1_fails_for_coupled_T_but_holds_for_diagonal_T():
    assert cx.quadratic_form(np.array([0.0, 1.0]), np.array([-1.0, 0.0])) == pytest.approx(-2.0)
    fraction, worst, _, _ = cx.negative_pairs(20_000)
    assert fraction > 0.05 and worst < -2.0
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20_000, 2)) * 2, rng.normal(size=(20_000, 2)) * 2
    for _ in range(5):                                   # diagonal T >= 0: (4) holds (Thm 1)
        T = np.diag(rng.uniform(0, 3, 2))
        assert np.all(cx.quadratic_form(x, y, T) >= -1e-12)
