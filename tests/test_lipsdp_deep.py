"""LipSDP on deep nets and odd weights (issues 33 and 27): the block-tridiagonal recursion agrees
with the dense LMI, the compositional start matches ECLipsE-Fast's closed form and never exceeds
it, and every bound LipSDP returns, on random depths, widths, scales and activations, is certified
on the full LMI, at least an empirical lower bound and never above the start."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore.estimators import (LipSDPError, compositional_bound, empirical_lower_bound, lipsdp,
                                lmi_matrix, lmi_max_eig, naive_bound)
from lipcore.estimators.chain import ChainLMI, float_allowance, lmi_holds
from lipcore.estimators.compositional import closed_form
from lipcore.estimators.lipsdp import exact_L2
from lipcore.models import ACTIVATIONS, fully_connected, from_weights

eclipse_nn = pytest.importorskip("eclipse_nn")


def eclipse_fast(W, alpha, beta):
    est = eclipse_nn.LipConstEstimator(weights=[torch.tensor(w) for w in W],
                                       alphas=[alpha] * (len(W) - 1), betas=[beta] * (len(W) - 1))
    return float(est.estimate("ECLipsE_Fast"))


def dense_check(W, t, L2, alpha=0.0, beta=1.0):
    """The eigenvalue oracle on P scaled to a unit diagonal (a congruence, so P <= 0 iff the
    scaled one is): plain eigvalsh would judge weights of scale 1e-8 by rounding alone."""
    P = lmi_matrix(W, np.diag(t), L2, alpha, beta)
    d = np.sqrt(np.abs(np.diag(P)))
    return float(np.linalg.eigvalsh(P / np.outer(d, d))[-1])


def lower_bound(W, activation):
    """An empirical lower bound, less 1e-6 relative: its difference quotients of nearby points
    carry rounding error (1.4e-9 relative seen on a 1-1-1 sigmoid net whose bound is exact)."""
    net = from_weights(W, [np.zeros(w.shape[0]) for w in W], activation)
    return empirical_lower_bound(net, W[0].shape[1], n_random=64, steps=15,
                                n_ascent=4).value * (1 - 1e-6)


@pytest.mark.parametrize("alpha,beta", [(0.0, 1.0), (0.2, 1.0), (0.0, 0.25)])
def test_the_chain_recursion_agrees_with_the_dense_lmi(alpha, beta):
    W = fully_connected([7, 6, 5, 8, 4, 3], "tanh", seed=1).weights()
    lmi, rng = ChainLMI(W, alpha, beta), np.random.default_rng(0)
    for scale in (0.05, 1.0, 20.0):                  # infeasible, borderline and feasible T
        t = scale * rng.uniform(0.5, 2.0, lmi.n)
        dense = exact_L2(W, np.diag(t), alpha, beta)
        assert lmi.value(t) == pytest.approx(dense, rel=1e-9) if np.isfinite(dense) else \
            lmi.value(t) == np.inf
        if np.isfinite(dense) and dense > 0:         # the float certificate agrees with eigvalsh
            assert lmi_holds(W, t, dense * (1 + 1e-6), alpha, beta)
            assert not lmi_holds(W, t, dense * (1 - 1e-6), alpha, beta)
            assert lmi_max_eig(W, np.diag(t), dense * (1 + 1e-6), alpha, beta) < 0


def test_the_float_allowance_is_stated_and_small():
    assert 0 < float_allowance(100) < 1e-10
    assert float_allowance(3000) < 1e-8


@pytest.mark.parametrize("widths,act", [([5, 7, 6, 5, 2], "tanh"), ([9, 16, 3], "sigmoid"),
                                        ([20] + [20] * 20 + [10], "relu"),
                                        ([12] + [15] * 40 + [4], "relu"),
                                        ([30] + [30] * 100 + [5], "relu")])
def test_closed_form_is_eclipse_fast_and_the_start_is_below_it(widths, act):
    """(The 100-deep net's start needs T scaled by 1 + 1e-6 to certify: a regression test.)"""
    net = fully_connected(widths, act, seed=0)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    reference = eclipse_fast(W, alpha, beta)
    assert np.sqrt(closed_form(W, alpha, beta)[0]) == pytest.approx(reference, rel=1e-9)
    start = compositional_bound(W, alpha, beta)
    assert start.fast_bound == pytest.approx(reference, rel=1e-9)
    assert start.bound <= reference * (1 + 1e-9)
    assert lmi_holds(W, start.t, start.L2, alpha, beta)
    if sum(widths) < 400:
        assert dense_check(W, start.t, start.L2, alpha, beta) <= 0.0


def test_lipsdp_is_below_the_start_on_a_deep_net():
    W = fully_connected([10] + [10] * 30 + [3], "relu", seed=2).weights()
    r = lipsdp(W, progress=False, time_budget=5.0)
    assert r.bound <= r.start_bound <= eclipse_fast(W, 0.0, 1.0) * (1 + 1e-9)
    assert r.bound < 0.5 * r.start_bound           # the optimiser does tighten deep nets
    assert lmi_holds(W, r.t, r.L2)


# The nets issue 27 found failing with a raw LinAlgError or an uncertifiable LMI.
ISSUE_27 = [([4, 3, 3, 2], "tanh", 1.0), ([1, 7, 8, 2, 3], "relu", 1.0),
            ([3, 5, 4, 2], "sigmoid", 1e-4), ([2, 6, 6, 6, 2], "sigmoid", 1e-8)]


@pytest.mark.parametrize("widths,act,scale", ISSUE_27)
@pytest.mark.parametrize("seed", range(4))
def test_issue_27_nets_get_a_certified_bound(widths, act, scale, seed):
    net = fully_connected(widths, act, seed=seed)
    W = [scale * w for w in net.weights()]
    alpha, beta = net.slope_bounds
    r = lipsdp(W, alpha, beta, progress=False)
    assert r.sound and dense_check(W, r.t, r.L2, alpha, beta) <= 0.0
    assert r.bound <= naive_bound(W, beta) * (1 + 1e-9)
    assert r.bound >= lower_bound(W, act)


def test_a_constant_net_has_bound_zero_and_degenerate_layers_do_not_crash():
    W = [np.ones((3, 2)), np.zeros((4, 3)), np.ones((1, 4))]
    assert lipsdp(W).bound == 0.0 and compositional_bound(W).bound == 0.0
    W = [np.ones((3, 2)), np.ones((3, 3)), np.ones((1, 3))]          # rank-one layers
    r = lipsdp(W, progress=False)
    assert dense_check(W, r.t, r.L2) <= 0.0 and r.bound <= naive_bound(W) * (1 + 1e-9)


@st.composite
def nets(draw):
    depth = draw(st.integers(1, 5))
    widths = [draw(st.integers(1, 7)) for _ in range(depth + 2)]
    act = draw(st.sampled_from(sorted(ACTIVATIONS)))
    log_scales = draw(st.lists(st.floats(-6, 6), min_size=depth + 1, max_size=depth + 1))
    seed = draw(st.integers(0, 2 ** 16))
    net = fully_connected(widths, act, seed=seed)
    return [10.0 ** s * w for s, w in zip(log_scales, net.weights())], act


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets())
def test_every_returned_bound_is_certified_above_the_truth_and_below_the_start(case):
    W, act = case
    alpha, beta = ACTIVATIONS[act].alpha, ACTIVATIONS[act].beta
    try:
        r = lipsdp(W, alpha, beta, progress=False, time_budget=10.0)
    except LipSDPError as exc:                     # allowed, but only with a reason and a remedy
        assert "naive_bound" in str(exc)
        return
    if r.bound == 0.0:
        assert naive_bound(W, beta) == 0.0
        return
    assert lmi_holds(W, r.t, r.L2, alpha, beta)
    assert dense_check(W, r.t, r.L2, alpha, beta) <= 0.0
    assert r.bound <= r.start_bound
    assert r.bound <= naive_bound(W, beta) * (1 + 1e-9)
    assert r.bound >= lower_bound(W, act)


def test_the_side_by_side_benchmark_on_two_small_nets(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "lipsdp_deep", Path(__file__).resolve().parents[1] / "benchmarks" / "lipsdp_deep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "deep.json"
    bench.main(["--depths", "2", "6", "--widths", "8", "--wide", "--budget", "5",
                "--eclipse-cap", "10", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["widths"] for r in rows] == ["8-8x2-10", "8-8x6-10"]
    for r in rows:
        assert r["lipsdp"]["certified"] and r["compositional"]["certified"]
        assert r["lipsdp"]["bound"] <= r["compositional"]["bound"]
        assert r["compositional"]["bound"] <= r["eclipse_fast"]["bound"] * (1 + 1e-9)
        assert r["eclipse"]["outcome"]                      # solved, failed or stopped: said
    assert out.with_suffix(".png").stat().st_size > 0
    bench.main(["--markdown", "--out", str(out)])
    assert "| 8-8x6-10 |" in capsys.readouterr().out
