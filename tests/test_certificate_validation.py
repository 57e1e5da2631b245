"""Certificates refuse what they cannot certify (issue 19): property-based tests (Hypothesis)
throw zeros, negatives, NaN, infinities, wrong shapes, ties and non-finite logits at every public
certificate entry point, and random small nets and points at the whole chain (sound bound ->
radii -> strong attacks), asserting that nothing bad is certified and no certified point breaks."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lipcore.attacks import robust_accuracy
from lipcore.certify import (certified_accuracy, certified_radii, check_certificates,
                             lipschitz_bound, validated_bound)
from lipcore.estimators.lipsdp import LipSDPError
from lipcore.models import fully_connected

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
bad_numbers = st.sampled_from([0.0, -0.0, -1.0, -1e-9, math.nan, math.inf, -math.inf])


def small_problem(classes=3, d=5, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Linear(d, classes)
    with torch.no_grad():
        net.weight.copy_(torch.randn(classes, d, generator=gen))
        net.bias.zero_()
    x = torch.rand(n, d, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


@FAST
@given(bad=bad_numbers)
def test_a_scalar_bound_that_is_not_finite_and_positive_is_refused(bad):
    net, x, y = small_problem()
    with pytest.raises(ValueError, match="finite positive"):
        certified_radii(net, (x, y), bad)


@FAST
@given(classes=st.integers(2, 6), i=st.integers(0, 5), j=st.integers(0, 5), bad=bad_numbers)
def test_a_pairwise_matrix_with_one_bad_entry_off_the_diagonal_is_refused(classes, i, j, bad):
    i, j = i % classes, j % classes
    if i == j:
        j = (i + 1) % classes
    net, x, y = small_problem(classes)
    L = torch.ones(classes, classes).fill_diagonal_(0.0)
    L[i, j] = bad
    with pytest.raises(ValueError, match=rf"L\[{i}, {j}\]"):
        certified_radii(net, (x, y), L)


@FAST
@given(classes=st.integers(2, 5), rows=st.integers(1, 7), cols=st.integers(1, 7))
def test_a_pairwise_matrix_of_the_wrong_shape_is_refused(classes, rows, cols):
    if rows == cols == classes:
        rows += 1
    net, x, y = small_problem(classes)
    with pytest.raises(ValueError, match=rf"\({classes}, {classes}\) matrix"):
        certified_radii(net, (x, y), torch.ones(rows, cols))
    with pytest.raises(ValueError, match="matrix"):
        certified_radii(net, (x, y), torch.ones(classes, classes, 2))


def test_zero_pairwise_matrix_reported_in_issue_19_is_refused():
    net, x, y = small_problem(10, d=20, n=64)
    for L in (torch.zeros(10, 10), -torch.ones(10, 10), torch.full((10, 10), math.nan)):
        with pytest.raises(ValueError, match="finite and positive off the diagonal"):
            certified_radii(net, (x, y), L)
    with pytest.raises(ValueError, match="number or a"):
        validated_bound("large", 10)


@FAST
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), row=st.integers(0, 15))
def test_non_finite_logits_never_certify(bad, row):
    net, x, y = small_problem()
    with torch.no_grad():
        net.bias[1] = bad if row % 2 else 0.0
        net.weight[2, 0] = bad
    with pytest.raises(ValueError, match="not finite|non-finite"):
        certified_radii(net, (x, y), 1.0)


@FAST
@given(classes=st.integers(2, 6), tied=st.integers(1, 5), scale=st.floats(0.1, 10.0),
       eps=st.floats(0.0, 1.0))
def test_tied_top_logits_never_certify(classes, tied, scale, eps):
    """Two classes share the top logit exactly: argmax picks one, but its margin is 0, so no
    bound may certify it at any radius (klasleino/gloro#9 is this trap)."""
    tied = 1 + (tied - 1) % (classes - 1)
    net = nn.Linear(4, classes)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.linspace(-1.0, 0.0, classes))
        net.bias[0] = scale
        net.bias[tied] = scale                    # class 0 and class `tied` tie at the top
    x = torch.rand(8, 4)
    y = net(x).argmax(1)                          # argmax's tie-break says class 0
    radii = certified_radii(net, (x, y), 1e-6)
    assert (radii == 0).all()
    assert certified_accuracy(radii, eps) == 0.0


def test_labels_outside_the_classes_are_refused():
    net, x, y = small_problem(3)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        certified_radii(net, (x, y + 3), 1.0)


@FAST
@given(radii=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8),
       eps=st.floats(allow_nan=True, allow_infinity=True))
def test_certified_accuracy_refuses_nan_or_negative_radii_and_bad_eps(radii, eps):
    r = torch.tensor(radii, dtype=torch.float64)
    bad_radii = bool(torch.isnan(r).any() or (r < 0).any())
    bad_eps = not (math.isfinite(eps) and eps >= 0)
    if bad_radii or bad_eps:
        with pytest.raises(ValueError):
            certified_accuracy(r, eps)
    else:
        assert certified_accuracy(r, eps) == 100.0 * int((r > eps).sum()) / len(r)


def test_a_radius_equal_to_eps_does_not_certify_and_check_certificates_validates():
    r = torch.tensor([0.5, 0.5000001, 0.0])
    assert certified_accuracy(r, 0.5) == pytest.approx(100 / 3)
    with pytest.raises(RuntimeError, match="broke 1 point"):
        check_certificates(r, torch.tensor([True, False, True]), 0.5, "demo")
    check_certificates(r, torch.tensor([True, True, False]), 0.5, "demo")   # nothing broken
    with pytest.raises(ValueError, match="bool"):
        check_certificates(r, torch.tensor([1.0, 1.0]), 0.5, "demo")
    with pytest.raises(ValueError, match="at most 3"):
        check_certificates(r, torch.ones(4, dtype=torch.bool), 0.5, "demo")
    with pytest.raises(ValueError, match="1-D"):
        certified_accuracy(torch.ones(2, 2), 0.1)


def test_lipschitz_bound_refuses_a_zero_bound():
    net = fully_connected([4, 8, 3], "relu", seed=0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    for method in ("liplt", "naive"):
        with pytest.raises(ValueError, match="not a finite positive number"):
            lipschitz_bound(net, method)
    # LipSDP certifies its least L^2 plus a positive back-off: tiny, positive and sound (the
    # zero net is constant), or no bound at all (an SDP solver may find no strict T), or the
    # exact 0, which lipschitz_bound refuses because it certifies nothing
    try:
        assert 0 < lipschitz_bound(net, "lipsdp").value < 1e-6
    except LipSDPError:
        pass
    except ValueError as zero:
        assert "not a finite positive number" in str(zero)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.integers(4, 24),
       activation=st.sampled_from(["relu", "tanh"]), method=st.sampled_from(["lipsdp", "liplt",
                                                                               "naive"]))
def test_random_nets_no_certified_point_is_broken_by_the_strong_attacks(seed, width, activation,
                                                                        method):
    """The whole chain on random small nets: a sound bound, certified radii, and the strong
    attacks at the median certified radius; every certified point must survive them."""
    torch.manual_seed(seed)
    net = fully_connected([6, width, width, 4], activation, seed=seed)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(3.0)          # sharper nets: attacks that can break something
    x = torch.rand(48, 6)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4                   # some wrong points, which must never certify
    radii = certified_radii(net, (x, y), lipschitz_bound(net, method).value)
    assert (radii[::5] == 0).all()
    eps = float(radii[radii > 0].median()) if (radii > 0).any() else 0.05
    result = robust_accuracy(net, (x, y), eps=eps, iterations=40, progress=False)
    assert result.robust[radii > eps].all()
    check_certificates(radii, result.robust, eps, "random net")
    assert certified_accuracy(radii, eps) <= result.accuracy


@FAST
@given(seed=st.integers(0, 10_000), classes=st.integers(2, 5), d=st.integers(1, 6))
def test_certified_radius_never_exceeds_the_exact_radius_of_a_linear_model(seed, classes, d):
    """For f(x) = Wx + b the exact robust radius is min_j (z_y - z_j) / ||w_y - w_j||, and any
    sound bound (spectral norm, or the exact pairwise norms) must give a radius no larger."""
    net, x, y = small_problem(classes, d, n=32, seed=seed)
    W = net.weight.detach().double()
    pairwise = torch.cdist(W, W)
    exact = certified_radii(net, (x, y), pairwise.clamp_min(1e-300).fill_diagonal_(0.0)
                            if classes > 1 else pairwise)
    spectral = torch.linalg.matrix_norm(W, 2)
    global_radii = certified_radii(net, (x, y), spectral)
    z = (x.double() @ W.T)
    gaps = z.gather(1, y[:, None]) - z
    ratio = gaps / pairwise[y].clamp_min(1e-300)
    ratio[torch.arange(len(y)), y] = math.inf
    true_radius = ratio.min(1).values.clamp_min(0.0)
    # never above the exact radius; below it only by the float32 logits' allowance on the margin
    assert (exact <= true_radius).all()
    nearest_pair = pairwise[~torch.eye(classes, dtype=torch.bool)].min()
    assert ((true_radius - exact) * nearest_pair <= 1e-4).all()
    assert (global_radii <= exact * (1 + 1e-9) + 1e-12).all()
    assert np.isfinite(global_radii.numpy()).all()


def test_a_bound_of_other_weights_is_refused():
    """A third reviewer: a bound computed before training went on (0.36 where the net is now
    7.2) certified a radius of 8.7 with a class change 0.99 away. A LipSDP bound now records
    the weights it read, and certified_radii refuses it for other weights, or another model."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.rand(16, 4)
    y = net(x).argmax(1)
    bound = lipschitz_bound(net, "lipsdp")
    assert (certified_radii(net, (x, y), bound) >= 0).all()
    twin = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with pytest.raises(ValueError, match="another net"):
        certified_radii(twin, (x, twin(x).argmax(1)), bound)
    with torch.no_grad():
        net[2].weight.mul_(20)                                   # training went on
    with pytest.raises(ValueError, match="another net"):
        certified_radii(net, (x, y), bound)


def test_an_in_place_first_layer_neither_changes_the_data_nor_fools_the_certificate():
    """LeakyReLU(inplace=True) first: the chain check, whose random inputs have negative
    entries, compared the chain on an input the model had overwritten, and refused the net as
    "more than its layers applied in order". Each side now gets its own copy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), nn.Linear(4, 2)).eval()
    x = torch.rand(32, 4)
    y = net(x.clone()).argmax(1)
    before = x.clone()
    radii = certified_radii(net, (x, y), lipschitz_bound(net, "naive"))
    assert torch.equal(x, before) and (radii > 0).any()


def test_a_bound_of_another_layer_or_buffer_and_data_of_a_tensor_subclass_are_refused():
    """A fourth review: a sigmoid swapped for a ReLU, or a non-persistent BatchNorm buffer
    changed, left the state dict (and the first digest) as it was; data whose
    __torch_function__ added 5 to the label's logit was certified at 5.4 for a true 0.2."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Sigmoid(), nn.Linear(3, 2)).eval()
    x = torch.rand(8, 4)
    y = net(x).argmax(1)
    bound = lipschitz_bound(net, "naive")
    net[2] = nn.ReLU()
    with pytest.raises(ValueError, match="another net"):
        certified_radii(net, (x, y), bound)
    net[2] = nn.Sigmoid()
    assert (certified_radii(net, (x, y), bound) >= 0).all()
    running_var = net[1].running_var
    del net[1].running_var
    net[1].register_buffer("running_var", running_var, persistent=False)
    bound = lipschitz_bound(net, "naive")
    with torch.no_grad():
        net[1].running_var.mul_(0.25)
    with pytest.raises(ValueError, match="another net"):
        certified_radii(net, (x, y), bound)

    class Lying(torch.Tensor):
        pass
    with pytest.raises(ValueError, match=r"inputs \(Lying\) must be plain torch.Tensor"):
        certified_radii(net, (x.as_subclass(Lying), y), 1.0)
