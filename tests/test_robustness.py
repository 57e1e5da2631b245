"""Strong attacks (lipcore.attacks.robust_accuracy) and certificates (lipcore.certify): exact
radii on linear models, hand-computed certified radii, sound conv bounds, and the invariant that
no certified point is ever broken by an attack."""
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lipcore.attacks import (AUTOATTACK, DEFAULT_ATTACKS, breaking_radii, pgd_accuracy,
                             robust_accuracy)
from lipcore.attacks.ensemble import APGD, describe_attacks
from lipcore.certify import (LOGIT_ERROR_ULPS, certified_accuracy, certified_fraction_curve, certified_radii,
                             lipschitz_bound)
from lipcore.data import load_dataset
from lipcore.estimators import empirical_lower_bound, lipsdp
from lipcore.estimators.layerwise import conv2d_norm_bound, layer_bound, layerwise_bound
from lipcore.models import fully_connected, madry_cnn, pauli_mnist_net
from lipcore.trainers import TrainConfig, train


def linear_problem(n=300, d=20, classes=3, seed=0):
    """A linear classifier and points near the centre of the box, labelled by the classifier,
    with each point's exact l2 robust radius and the point just beyond it."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, d, generator=gen))
        model.bias.zero_()
    x = (0.5 + 0.05 * torch.randn(n, d, generator=gen)).clamp(0.3, 0.7)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model.weight.detach()
    diff = w[y][:, None, :] - w[None, :, :]                    # (n, C, d): w_y - w_j
    norms = diff.norm(dim=2)
    ratio = (z.gather(1, y[:, None]) - z) / norms.clamp_min(1e-12)
    ratio[torch.arange(n), y] = math.inf
    radius, nearest = ratio.min(1)
    direction = diff[torch.arange(n), nearest] / norms[torch.arange(n), nearest][:, None]
    return model, x, y, radius, direction


def test_attack_never_succeeds_inside_the_exact_radius_and_does_just_beyond():
    model, x, y, radius, direction = linear_problem()
    eps = float(radius.median())
    result = robust_accuracy(model, (x, y), eps=eps, iterations=50, progress=False)
    assert result.clean_accuracy == 100.0
    inside = radius > eps
    assert result.robust[inside].all(), "an attack 'succeeded' where no adversarial exists"
    beyond = x - 1.02 * radius[:, None] * direction          # misclassified, within eps if ...
    reachable = (radius * 1.05 < eps) & ((beyond >= 0) & (beyond <= 1)).all(1)
    assert reachable.sum() > 50
    assert not result.robust[reachable].any(), "the attack missed an adversarial that exists"
    assert result.accuracy == pytest.approx(100.0 * result.robust.float().mean().item())
    counts = result.counts()
    assert counts["clean"] == 0 and sum(counts.values()) == int((~result.robust).sum())


def test_autoattack_with_fab_t_respects_the_exact_radius_and_leaves_the_callers_rng_alone():
    """Issue 31: AutoAttack's standard protocol (reference implementation, FAB-T included)
    never breaks a point inside its exact radius, breaks those an adversarial exists for, and
    forks torch's generator (its attacks reseed it); Square runs on images, is skipped on flat
    inputs, and says so."""
    model, x, y, radius, direction = linear_problem(n=120, d=25, classes=5)
    eps = float(radius.median())
    inside = radius > eps
    beyond = x - 1.02 * radius[:, None] * direction
    reachable = (radius * 1.05 < eps) & ((beyond >= 0) & (beyond <= 1)).all(1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    result = robust_accuracy(model, (x, y), eps=eps, attacks=AUTOATTACK, iterations=20,
                             progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert result.robust[inside].all() and not result.robust[reachable].any()
    assert result.attacks == ("apgd-ce", "apgd-t", "fab-t") and "square" in result.settings["skipped"]
    fab = robust_accuracy(model, (x, y), eps=eps, attacks=("fab-t",), iterations=20,
                          progress=False)
    assert fab.robust[inside].all() and not fab.robust[reachable].any()
    images = nn.Sequential(nn.Flatten(), model)
    square = robust_accuracy(images, (x.reshape(-1, 1, 5, 5), y), eps=eps, attacks=("square",),
                             iterations=20, progress=False)
    assert square.settings["skipped"] == {} and square.robust[inside].all()
    assert not square.robust[reachable].all()


def test_linf_attack_stays_consistent_with_the_exact_radius():
    """For l-infinity the exact radius of a linear model is gap / ||w_y - w_j||_1."""
    model, x, y, _, _ = linear_problem(n=200, seed=1)
    w = model.weight.detach()
    with torch.no_grad():
        z = model(x)
    ratio = (z.gather(1, y[:, None]) - z) / (w[y][:, None, :] - w[None]).abs().sum(2).clamp_min(1e-12)
    ratio[torch.arange(len(y)), y] = math.inf
    radius = ratio.min(1).values
    eps = float(radius.median())
    result = robust_accuracy(model, (x, y), norm="linf", eps=eps, iterations=50, progress=False)
    assert result.robust[radius > eps].all()
    assert not result.robust[radius < eps / 1.05].any()    # corners stay in the box: x in [0.3, 0.7]


@pytest.mark.parametrize("kwargs,message", [
    (dict(attacks=("apgd-ce", "fgsm")), "unknown attack"),
    (dict(attacks="apgd-ce"), "non-empty sequence"),
    (dict(eps=0.0), "positive radius"),
    (dict(eps=-1.0), "positive radius"),
    (dict(norm="l1"), "unknown norm"),
    (dict(norm="linf", attacks=("deepfool",)), "l2 attack"),
])
def test_bad_attack_arguments_are_rejected(kwargs, message):
    model, x, y, _, _ = linear_problem(n=10)
    with pytest.raises(ValueError, match=message):
        robust_accuracy(model, (x, y), progress=False, **kwargs)


def test_inputs_outside_the_box_and_two_class_dlr_are_rejected():
    model, x, y, _, _ = linear_problem(n=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robust_accuracy(model, (x - 0.5, y), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        certified_radii(model, (x + 1, y), 1.0)
    binary, xb, yb, _, _ = linear_problem(n=10, classes=2)
    with pytest.raises(ValueError, match="at least 3 classes"):
        robust_accuracy(binary, (xb, yb), attacks=("apgd-ce", "apgd-dlr"), progress=False)
    with pytest.raises(ValueError, match="none of the attacks applies"):
        robust_accuracy(binary, (xb, yb), attacks=("apgd-t",), progress=False)
    # the default protocol runs what applies and says why the rest did not
    protocol = robust_accuracy(binary, (xb, yb), eps=0.01, iterations=5, progress=False)
    assert protocol.attacks == ("apgd-ce", "fab-t")
    assert "4 classes" in protocol.settings["skipped"]["apgd-t"]
    assert "images" in protocol.settings["skipped"]["square"]
    result = robust_accuracy(binary, (xb, yb), attacks=("apgd-ce", "deepfool"), eps=0.01,
                             progress=False)
    assert result.attacks == ("apgd-ce", "deepfool")


def test_certified_radius_equals_margin_over_sqrt2_L_by_hand():
    net = fully_connected([4, 3, 3], "relu", seed=3).double()
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = net(x.double())
    y = torch.tensor([0, 1, 2] * 16 + [0, 1])
    L = lipsdp(net.weights(), 0.0, 1.0, "neuron").bound
    radii = certified_radii(net, (x, y), L)
    for i in range(len(y)):
        others = [z[i, j] for j in range(3) if j != y[i]]
        margin = float(z[i, y[i]] - max(others))
        # the stated allowance for the float error of float64 logits (certify.certified_radii)
        allowance = 2 * LOGIT_ERROR_ULPS * torch.finfo(torch.float64).eps * max(1.0, float(z[i].abs().max()))
        expected = max(0.0, (margin - allowance) / (math.sqrt(2) * L)) if margin > 0 else 0.0
        # less the proved rounding of float64 over the ball (lipcore.rounding): about 1e-12
        assert radii[i].item() <= expected
        assert radii[i].item() == pytest.approx(expected, rel=1e-10, abs=1e-15)
    # pairwise bounds sqrt(2) L everywhere give the same radii; smaller ones larger radii
    pairwise = torch.full((3, 3), math.sqrt(2) * L)
    assert torch.allclose(certified_radii(net, (x, y), pairwise), radii)
    assert (certified_radii(net, (x, y), pairwise / 2) >= radii).all()
    assert certified_accuracy(radii, 0.0) == 100.0 * int((radii > 0).sum()) / len(y)
    curve = certified_fraction_curve(radii, [0.0, 0.01, 1e9])
    assert curve[0] >= curve[1] >= curve[2] == 0.0
    with pytest.raises(ValueError, match="positive"):
        certified_radii(net, (x, y), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        certified_accuracy(radii, -1.0)


@pytest.mark.parametrize("c_in,c_out,k,stride,pad,size", [
    (1, 4, 3, 1, 1, 6), (3, 5, 3, 2, 1, 7), (2, 3, 5, 1, 2, 8), (4, 2, 4, 2, 1, 8), (3, 3, 3, 1, 0, 5),
    (3, 8, 4, 2, 1, 12), (16, 32, 4, 2, 1, 14), (2, 3, 3, 3, 1, 9), (2, 4, 3, (2, 1), (1, 0), 10)])
def test_conv_bound_is_at_least_the_materialised_norm(c_in, c_out, k, stride, pad, size):
    """Sound for every stride and padding, and, with the stride folded in (polyphase), within
    25% of the materialised norm on these small images (a stride-2 conv bounded as if it had
    stride 1 came out 1.4-1.8x)."""
    torch.manual_seed(c_in * 100 + k)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad).double()
    jac = torch.autograd.functional.jacobian(
        lambda v: conv(v.view(1, c_in, size, size)).flatten(),
        torch.zeros(c_in * size * size, dtype=torch.float64))
    exact = torch.linalg.matrix_norm(jac, 2).item()
    bound = conv2d_norm_bound(conv.weight, (size, size), stride, pad)
    assert exact <= bound <= 1.25 * exact
    assert layer_bound(conv, (c_in, size, size)) == bound


def test_circular_padding_makes_the_dft_bound_exact():
    """With circular padding the conv is the circular operator itself: the bound is its norm."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False)
    size = 6
    jac = torch.autograd.functional.jacobian(
        lambda v: conv(v.view(1, 2, size, size)).flatten(), torch.zeros(2 * size * size))
    exact = torch.linalg.matrix_norm(jac.double(), 2).item()
    padded = torch.zeros(3, 2, size, size, dtype=torch.float64)
    padded[:, :, :3, :3] = conv.weight.detach().double()
    spectrum = torch.fft.fft2(padded).permute(2, 3, 0, 1).reshape(-1, 3, 2)
    assert torch.linalg.matrix_norm(spectrum, ord=2).max().item() == pytest.approx(exact, rel=1e-9)
    with pytest.raises(ValueError, match="only zero padding is bounded"):
        layer_bound(conv, (2, size, size))


def test_pooling_and_activation_bounds():
    assert layer_bound(nn.AvgPool2d(2), (1, 28, 28)) == pytest.approx(0.5)
    assert layer_bound(nn.MaxPool2d(2), (1, 28, 28)) == 1.0
    assert layer_bound(nn.MaxPool2d(3, stride=1), (1, 8, 8)) == pytest.approx(3.0)
    assert layer_bound(nn.Sigmoid(), (5,)) == 0.25
    with pytest.raises(ValueError, match="not a layer lipcore can bound"):
        layer_bound(nn.LayerNorm(3), (3,))
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    assert layer_bound(bn, (3,)) == pytest.approx(1 / math.sqrt(0.25 + bn.eps), rel=1e-8)


def test_layerwise_bounds_are_upper_bounds_and_lipsdp_is_tighter():
    def lower(net):      # the empirical search works on flat inputs
        flat = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), net)
        return empirical_lower_bound(flat, 784, n_random=64, n_ascent=2, steps=20).value

    cnn = madry_cnn(seed=0)
    assert lower(cnn) <= layerwise_bound(cnn, (1, 28, 28))
    pooled = pauli_mnist_net(seed=0)
    sdp, layerwise = lipschitz_bound(pooled, "lipsdp"), lipschitz_bound(pooled, "naive", (1, 28, 28))
    assert lower(pooled) <= sdp.value <= layerwise.value
    assert sdp.value <= lipschitz_bound(pooled, "liplt").value * (1 + 1e-6) <= layerwise.value * (1 + 1e-6)
    with pytest.raises(ValueError, match="method='liplt' with input_shape, or 'naive'"):
        lipschitz_bound(cnn, "lipsdp", (1, 28, 28))
    with pytest.raises(ValueError, match="give input_shape"):
        lipschitz_bound(cnn, "lipsdp")
    with pytest.raises(ValueError, match="unknown bound method"):
        lipschitz_bound(pooled, "power-iteration")


@pytest.fixture(scope="module")
def trained_mnist():
    if not os.environ.get("LIPCORE_DATA"):
        pytest.skip("LIPCORE_DATA not set")
    mnist = load_dataset("mnist")
    data = TensorDataset(*(t[:3000] for t in mnist.train.tensors))
    test = TensorDataset(*(t[:300] for t in mnist.test.tensors))
    nets = {}
    for name, l2 in (("plain", 0.0), ("l2", 1e-2)):
        net = fully_connected([784, 32, 10], "relu", seed=0)
        train(net, data, TrainConfig(epochs=5, batch_size=64, lr=1e-3, l2=l2, shuffle=True))
        nets[name] = net
    return test, nets


def test_no_certified_point_is_ever_broken_and_attacks_order_as_expected(trained_mnist):
    test, nets = trained_mnist
    for net in nets.values():
        for method in ("lipsdp", "naive"):
            radii = certified_radii(net, test, lipschitz_bound(net, method).value)
            certified = radii > 0
            assert certified.any()
            for eps in (float(radii[certified].median()), 0.5):     # the protocol, shorter
                result = robust_accuracy(net, test, eps=eps, iterations=25, progress=False)
                assert result.robust[radii > eps].all(), f"{method}: a certified point was broken"
                assert certified_accuracy(radii, eps) <= result.accuracy
        strong = robust_accuracy(net, test, eps=2.0, progress=False)
        paper = pgd_accuracy(net, test, eps=2.0, step=0.25, iterations=100)
        assert strong.accuracy <= paper <= strong.clean_accuracy


def test_breaking_radii_bracket_the_exact_radius_on_a_linear_model():
    model, x, y, radius, _ = linear_problem(n=60)
    grid = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    for attack in ("strong", "paper pgd"):
        found = breaking_radii(model, (x, y), grid, attack, iterations=30)
        assert set(found.tolist()) <= set(grid) | {math.inf}
        assert (found >= radius.double()).all()          # nothing is broken inside its radius
    strong = breaking_radii(model, (x, y), grid, iterations=30)
    beyond = torch.tensor([min([e for e in grid if e >= 1.1 * r] or [math.inf])
                           for r in radius.tolist()], dtype=torch.float64)
    assert (strong <= beyond).all() and strong.isfinite().any()     # and just beyond, it is
    with pytest.raises(ValueError, match="attack must be one of"):
        breaking_radii(model, (x, y), grid, "fgsm")
    with pytest.raises(ValueError, match="eps_grid must hold"):
        breaking_radii(model, (x, y), [0.0, 1.0])


def test_a_plain_dense_sequential_gets_the_bounds_of_its_fully_connected_twin():
    twin = fully_connected([6, 8, 8, 3], "tanh", seed=0)
    plain = nn.Sequential(*twin.net)                           # Flatten, Linear, Tanh, ...
    for method in ("lipsdp", "liplt", "naive"):
        assert lipschitz_bound(plain, method).value == pytest.approx(
            lipschitz_bound(twin, method).value, rel=1e-6)
    # mixed activations: the hull of their slope bounds, [0, 1] here, so the all-ReLU twin's bound
    mixed = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    relu = nn.Sequential(mixed[0], nn.ReLU(), mixed[2], nn.ReLU(), mixed[4])
    for method in ("lipsdp", "liplt"):
        assert lipschitz_bound(mixed, method).value == pytest.approx(
            lipschitz_bound(relu, method).value, rel=1e-6)
    # the layer-wise product reads each activation's own slope (1/4 for the sigmoid)
    assert lipschitz_bound(mixed, "naive").value == pytest.approx(
        lipschitz_bound(relu, "naive").value / 4, rel=1e-9)


def test_the_default_is_autoattacks_standard_protocol_and_columns_name_it():
    assert DEFAULT_ATTACKS == AUTOATTACK == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert describe_attacks() == ("AutoAttack (APGD-CE, APGD-T, FAB-T, Square; reference "
                                  "implementation)")
    assert describe_attacks(APGD) == "worst of APGD-CE, APGD-DLR"
