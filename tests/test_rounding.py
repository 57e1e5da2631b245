"""The rounding of a net in its own dtype, proved over a whole ball (lipcore.rounding): the bound
is at least every error the net makes at points of the ball, and a net built to round badly away
from x is no longer certified there (a hostile review's float32 and float16 nets were)."""
import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from lipcore.certify import certified_radii, lipschitz_bound
from lipcore.rounding import (BFLOAT16_UNIT, TF32_UNIT, gamma, product_unit, rounding_error,
                              unit_roundoff)
from lipcore.trace import float64_copy, trace
from test_soundness import lipcore_resnet, random_nets


def offset_net(dtype: torch.dtype, big: float) -> nn.Module:
    """h = 4u + big, g = h - big, logits (3.5 - g, g - 3.5): exact at u = 0.5, but a move of
    a quarter of a unit makes h round by a whole unit in ``dtype``."""
    l1, l2, l3 = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 2)
    with torch.no_grad():
        l1.weight.fill_(4.0)
        l1.bias.fill_(big)
        l2.weight.fill_(1.0)
        l2.bias.fill_(-big)
        l3.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        l3.bias.copy_(torch.tensor([3.5, -3.5]))
    return nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).to(dtype).eval()


@pytest.mark.parametrize("dtype, big", [(torch.float32, 2.0 ** 24), (torch.float16, 2048.0)])
def test_a_net_that_rounds_badly_away_from_x_is_not_certified_where_it_breaks(dtype, big):
    net = offset_net(dtype, big)
    x, y = torch.tensor([[0.5]]), torch.tensor([0])
    moved = torch.tensor([[0.7525]])                       # 0.2525 away
    with torch.no_grad():
        assert net(moved.to(dtype)).argmax(1).item() != 0           # broken as the user runs it
        assert float64_copy(net)(moved.double()).argmax(1).item() == 0     # not by the function
    for method in ("lipsdp", "naive"):
        radius = certified_radii(net, (x, y), lipschitz_bound(net, method).value).item()
        assert radius < 0.2525                 # 0.375 when only the error at x was allowed for


def observed_error(net: nn.Module, shape, x: torch.Tensor, radius: float, dtype) -> torch.Tensor:
    """The largest || net_dtype(x') - net_float64(x') ||_2 at random x' in the ball of each x."""
    exact, user = float64_copy(net), float64_copy(net).to(dtype)
    worst = torch.zeros(len(x), dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for scale in (0.0, 0.5, 0.99):          # 0.99: the rounding of x' stays in the ball
            for _ in range(8):
                step = torch.randn(x.shape, generator=generator, dtype=torch.float64)
                step = scale * radius * step / step.flatten(1).norm(dim=1).reshape(-1, *[1] * len(shape))
                point = (x + step).to(dtype)                  # a point the user can feed
                gap = (user(point).double() - exact(point.double())).flatten(1).norm(dim=1)
                worst = torch.maximum(worst, gap)
    return worst


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(spec=random_nets(), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       radius=st.sampled_from([0.0, 0.3, 2.0]))
def test_the_bound_is_at_least_the_error_at_every_point_tried(spec, dtype, radius):
    net, shape = spec
    chain = trace(net, shape)
    x = torch.rand(16, *shape).to(dtype).double()                 # points the user can feed
    bound = rounding_error(chain, x, radius, dtype)
    terms = [math.prod(m.weight.shape[1:]) + (m.bias is not None) for m in net.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    if math.isinf(gamma(max(terms), unit_roundoff(dtype))):    # too long for the a priori bound
        event("a layer too long for the precision: no bound")
        assert torch.isinf(bound).all()
        return
    assert torch.isfinite(bound).all() and (bound >= 0).all()
    assert (observed_error(net, shape, x, radius, dtype) <= bound).all()


def test_residual_nets_get_a_bound_through_their_skip_connections():
    torch.manual_seed(0)
    net = lipcore_resnet("resnet20")
    net.train()
    net(torch.rand(32, 1, 8, 8))
    net.eval()
    graph = trace(net, (1, 8, 8))
    x = torch.rand(4, 1, 8, 8).double()
    bound = rounding_error(graph, x, 0.5, torch.float32)
    assert torch.isfinite(bound).all()
    assert (observed_error(net, (1, 8, 8), x, 0.5, torch.float32) <= bound).all()
    assert (rounding_error(graph, x, 0.5, torch.float32, TF32_UNIT) > bound).all()


def test_the_backends_reduced_precision_counts():
    before = torch.get_float32_matmul_precision()
    try:
        assert product_unit(torch.float32, torch.device("cpu")) == 0.0
        torch.set_float32_matmul_precision("high")
        assert product_unit(torch.float32, torch.device("cpu")) == TF32_UNIT
        torch.set_float32_matmul_precision("medium")
        assert product_unit(torch.float32, torch.device("cpu")) == BFLOAT16_UNIT
        assert product_unit(torch.float64, torch.device("cpu")) == 0.0
    finally:
        torch.set_float32_matmul_precision(before)


def test_the_proof_costs_little_radius_on_an_ordinary_net():
    """On a random MLP the proof takes about 2e-5 off every radius: a tenth of a percent of
    the median one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 5)).eval()
    x = torch.rand(200, 20)
    with torch.no_grad():
        y = net(x).argmax(1)
    L = lipschitz_bound(net, "naive").value
    radii = certified_radii(net, (x, y), L)
    worst = rounding_error(trace(net), x, radii.double(), torch.float32)
    lost = math.sqrt(2) * worst / (math.sqrt(2) * L)      # the allowance, as radius
    assert (lost < 1e-4).all() and lost.median() < 1e-2 * radii.double().median()


def test_a_value_that_may_overflow_is_never_certified():
    """float16: a hidden unit of 256 * 256 * x reaches 65536 = inf at x = 1, 0.1 from x = 0.9,
    where the logits become [inf, inf] (class 0) while the function's class is 1 (a review's
    net); the proof now sees the overflow and certifies nothing there."""
    layers = [nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False), nn.ReLU(),
              nn.Linear(1, 2)]
    with torch.no_grad():
        layers[0].weight.fill_(256.0)
        layers[2].weight.fill_(256.0)
        layers[4].weight.fill_(2.0 ** -16)
        layers[4].bias.copy_(torch.tensor([0.0, 1.0]))
    net = nn.Sequential(*layers).half().eval()
    x, y = torch.tensor([[0.9]]), torch.tensor([1])
    with torch.no_grad():
        assert net(torch.tensor([[1.0]]).half()).argmax(1).item() == 0          # broken there
    with pytest.warns(UserWarning, match="overflow"):
        radius = certified_radii(net, (x, y), lipschitz_bound(net, "naive").value)
    assert radius.item() == 0.0


def test_every_setting_that_lowers_float32_products_counts(monkeypatch):
    assert product_unit(torch.float32, "cpu") == 0.0
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    assert product_unit(torch.float32, "cpu") == BFLOAT16_UNIT
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "TF32")
    assert product_unit(torch.float32, "cpu") == TF32_UNIT
    monkeypatch.delenv("ONEDNN_DEFAULT_FPMATH_MODE")
    before = torch.backends.mkldnn.conv.fp32_precision
    try:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        assert product_unit(torch.float32, "cpu") == BFLOAT16_UNIT
    finally:
        torch.backends.mkldnn.conv.fp32_precision = before
    assert product_unit(torch.float32, "cpu") == 0.0


@pytest.mark.parametrize("dtype, w", [(torch.bfloat16, 1 + 2 ** -7), (torch.float16, 1 + 2 ** -10)])
def test_float32_points_fed_to_a_narrower_model_are_rounded_first(dtype, w):
    """A review's example: x' rounded to the model's dtype before its one product errs 1.18x
    (bfloat16) the bound that assumed x' representable."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(w)
    net = net.to(dtype).eval()
    chain, x = trace(net), torch.tensor([[0.3]])
    points = torch.linspace(0.29, 0.31, 20001).reshape(-1, 1)       # float32 points in the ball
    with torch.no_grad():
        errors = (net(points.to(dtype)).double() - w * points.double()).abs()
    assert errors.max() > rounding_error(chain, x, 0.01, dtype).item()   # without: too small
    assert errors.max() <= rounding_error(chain, x, 0.01, dtype, rounds_input=True).item()


def test_certificates_are_refused_under_autocast():
    """Hostile review: under torch.autocast the model computes in bfloat16 while the proof
    counts float32 rounding."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
    bound = lipschitz_bound(net, "naive").value
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="autocast"):
            certified_radii(net, (x, y), bound)
        with pytest.raises(RuntimeError, match="autocast"):
            lipschitz_bound(net, "naive")
    assert certified_radii(net, (x, y), bound).shape == (5,)
