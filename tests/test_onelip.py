"""Nets built from a 1-Lipschitz layer library (deel-torchlip, issue 31): bounded through their
checked export with lipcore's own norms, never trusted on their label; a layer that says it is
1-Lipschitz and is not is reported."""
import pytest
import torch
from torch import nn

from lipcore import onelip
from lipcore.audit import audit
from lipcore.certify import certified_radii, lipschitz_bound
from lipcore.trace import NotAnalysable, float64_copy

from test_soundness import attack_inside, largest_jacobian_norm

tl = pytest.importorskip("deel.torchlip")
SHAPE = (1, 8, 8)


def lipschitz_net(seed: int = 0, **conv) -> nn.Module:
    torch.manual_seed(seed)
    return tl.Sequential(tl.SpectralConv2d(1, 4, 3, padding=1, **conv), tl.GroupSort2(),
                         tl.ScaledAvgPool2d(2), nn.Flatten(), tl.SpectralLinear(64, 16),
                         tl.FullSort(), tl.FrobeniusLinear(16, 3)).eval()


def test_a_library_net_is_refused_until_exported_and_its_export_is_bounded_soundly():
    net = lipschitz_net()
    with pytest.raises(NotAnalysable, match="onelip.export"):
        lipschitz_bound(net, "naive", SHAPE)
    plain = onelip.export(net, SHAPE)
    bound = lipschitz_bound(plain, "naive", SHAPE).value
    assert bound >= largest_jacobian_norm(float64_copy(net), SHAPE, points=8, steps=5)
    with pytest.raises(ValueError, match="GroupSort"):               # sorting is not elementwise
        lipschitz_bound(plain, "liplt", SHAPE)
    x = torch.rand(64, *SHAPE)
    with torch.no_grad():
        y = net(x).argmax(1)
    radii = certified_radii(net, (x, y), lipschitz_bound(plain, "naive", SHAPE))  # it exports
    assert (radii > 0).any()
    assert not attack_inside(net, x[radii > 0], y[radii > 0], radii[radii > 0]).any()


def test_an_export_that_computes_something_else_is_refused():
    net = lipschitz_net()
    plain = onelip.export(net, SHAPE)
    with torch.no_grad():
        plain[0].weight.mul_(1.01)
    with pytest.raises(NotAnalysable, match="different outputs"):
        onelip.agreeing(net, plain, SHAPE)


def test_a_layer_that_is_not_the_librarys_is_never_replaced_by_its_export():
    """Third hostile review: deel-torchlip's vanilla_model replaces any module with a
    vanilla_export method. A user's Linear whose forward adds a steep step near one point and
    whose export is the plain Linear agreed with it at the random check points, and its bound
    (1) certified a point that moved class 0.009 away. The export now refuses any module it
    would replace that is not the library's own class."""
    class Stepped(nn.Linear):
        def forward(self, x):
            step = ((x[:, 1:4] - 0.505).abs().amax(1) < 2e-4).to(x.dtype)
            return super().forward(x) - 10 * step[:, None] * torch.tensor([1.0, -1.0])

        def vanilla_export(self):
            plain = nn.Linear(self.in_features, self.out_features)
            plain.load_state_dict(self.state_dict())
            return plain

    layer = Stepped(10, 2)
    net = nn.Sequential(tl.GroupSort2(), layer).eval()
    x = torch.full((4, 10), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(NotAnalysable, match="Stepped.*not a deel-torchlip class"):
        onelip.export(net, (10,))
    with pytest.raises(NotAnalysable, match="not a deel-torchlip class"):
        certified_radii(net, (x, y), 1.0)
    with pytest.raises(NotAnalysable, match="not a deel-torchlip class"):
        audit(net, (x, y), eps=[0.1], attacks=("apgd-ce",), iterations=2)


def test_every_claim_is_checked_and_a_false_one_is_reported():
    """deel-torchlip's defaults hold up; a conv whose normalisation stops at once (eps_spectral=1,
    no Bjorck step) says it is 1-Lipschitz and runs at about 2.4: violated, with a lower bound."""
    claims = onelip.claims(lipschitz_net(), SHAPE)
    assert len(claims) == 7 and (claims.lower <= claims.upper).all()
    sorts = claims[claims.layer.str.contains("Sort")]
    assert (sorts.verdict == "holds").all()
    conv = claims[claims.layer.str.contains("Conv")].iloc[0]
    assert conv.verdict == "holds" and conv.upper <= 1
    bad = onelip.claims(lipschitz_net(eps_spectral=1.0, eps_bjorck=None), SHAPE)
    conv = bad[bad.layer.str.contains("Conv")].iloc[0]
    assert conv.verdict.startswith("violated") and conv.lower > 2


def test_the_audit_of_a_library_net_shows_its_claims(tmp_path):
    net = lipschitz_net()
    x = torch.rand(24, *SHAPE)
    with torch.no_grad():
        y = net(x).argmax(1)
    report = audit(net, (x, y), [0.05], iterations=5)
    assert len(report.claims) == 7
    naive = report.bounds[report.bounds.method.str.startswith("naive")].value.iloc[0]
    assert naive <= 1.0 + 1e-6                               # the net is 1-Lipschitz, proved
    assert "Lipschitz claims" in report.save(tmp_path / "a.html").read_text()


def test_the_lower_bound_ascent_stops_where_sorting_makes_the_jacobian_constant():
    """GroupSort's Jacobian is a permutation: no gradient in x. The audit's lower bound used to
    crash there; it must stop the ascent and stay below the sound bound."""
    from lipcore.estimators import empirical_lower_bound
    torch.manual_seed(0)
    plain = onelip.export(tl.Sequential(tl.SpectralLinear(6, 8), tl.GroupSort2(),
                                        tl.SpectralLinear(8, 3)).eval(), (6,))
    lower = empirical_lower_bound(plain, 6, n_random=32, n_ascent=2, steps=5).value
    assert 0 < lower <= lipschitz_bound(plain, "naive", (6,)).value


def test_global_scaled_pooling_is_bounded_as_one_lipschitz_and_an_unknown_layer_is_named():
    """ScaledAdaptiveAvgPool2d multiplies the global mean of h w inputs by sqrt(h w): exactly
    1-Lipschitz, and bounded so on whatever grid it sees. A weightless deel-torchlip layer that
    lipcore does not know is refused as unknown, not sent to an export that cannot help."""
    from lipcore.estimators.layerwise import layer_bound
    pool = tl.ScaledAdaptiveAvgPool2d((1, 1))
    for grid in ((4, 8, 8), (2, 5, 3)):
        assert 1.0 <= layer_bound(pool, grid) <= 1.0 + 1e-12
    torch.manual_seed(0)
    net = tl.Sequential(tl.SpectralConv2d(1, 4, 3, padding=1), tl.GroupSort2(),
                        tl.ScaledAdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                        tl.SpectralLinear(4, 3)).eval()
    plain = onelip.export(net, SHAPE)
    bound = lipschitz_bound(plain, "naive", SHAPE).value
    assert bound >= largest_jacobian_norm(float64_copy(plain), SHAPE, points=8, steps=5)
    with pytest.raises(NotAnalysable, match="ScaledL2NormPool2d.*does not know.*ScaledAvgPool2d"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 2, 3), tl.ScaledL2NormPool2d(2)), "naive",
                        SHAPE)


def test_an_exactly_one_lipschitz_pool_holds_to_rounding_and_a_tensor_claim_is_named():
    """A scaled global average pool over 4 x 4 is exactly 1-Lipschitz; its sound bound rounds up
    past 1 by an ulp, which must not leave the claim 'unproved'. A per-channel coefficient is
    not one constant: the row names it instead of failing."""
    net = tl.Sequential(tl.ScaledAdaptiveAvgPool2d((1, 1)), nn.Flatten()).eval()
    pool = onelip.claims(net, (2, 4, 4)).iloc[0]
    assert pool.verdict.startswith("holds") and 1.0 <= pool.upper <= 1.0 + onelip.ROUNDING
    net = tl.Sequential(tl.GroupSort2()).eval()
    net[0]._coefficient_lip = torch.ones(4, 1, 1)           # deel's Sequential sets it at init
    row = onelip.claims(net, (4, 2, 2)).iloc[1]
    assert row.verdict == "unproved" and "not one finite positive number" in row.note


def test_a_tensor_or_nan_coefficient_is_refused_by_name():
    """The bounds read a layer's coefficient as one number: a per-channel or NaN coefficient is
    refused with its name, not a raw error or a blame on skip connections."""
    from lipcore.trace import LIBRARY_LEAVES, foreign_code
    for module, name in LIBRARY_LEAVES:                     # the library's own forwards pass
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert foreign_code(cls.__new__(cls)) is None, name
    for bad in (torch.ones(4, 1, 1), float("nan")):
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), tl.GroupSort2(), nn.Flatten()).eval()
        net[1]._coefficient_lip = bad
        with pytest.raises(NotAnalysable, match="_coefficient_lip"):
            lipschitz_bound(net, "naive", SHAPE)
