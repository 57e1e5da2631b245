"""lipcore.audit (issue 31): one call and one command give sound bounds beside estimates and a
lower bound, certified and robust accuracy against eps with no certified point broken, and an
offline page; a model lipcore cannot analyse still gets its attacks, with the refusal named."""
import math
import os

import pytest
import torch
from torch import nn

from lipcore.audit import audit, main
from lipcore.data import load_dataset
from lipcore.models import fully_connected
from lipcore.trainers import TrainConfig, train

DATA = os.environ.get("LIPCORE_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="LIPCORE_DATA not set")


@pytest.fixture(scope="module")
def mnist_net():
    mnist = load_dataset("mnist", DATA)
    net = fully_connected([784, 32, 10], "relu", seed=0)
    train(net, mnist.train, TrainConfig(epochs=1))
    return net, tuple(t[:120] for t in mnist.test.tensors)


def test_audit_reports_sound_bounds_above_the_lower_bound_and_ordered_curves(mnist_net, tmp_path):
    net, test = mnist_net
    report = audit(net, test, [0.1, 0.4, 1.0], iterations=10, name="mlp")
    b = report.bounds
    assert {"method", "value", "sound", "seconds", "kind"} <= set(b.columns)
    lower = float(b[b.kind == "lower bound"].value.iloc[0])
    sound = b[b.sound]
    assert len(sound) == 4 and (sound.value >= lower).all()          # lipsdp, compositional, liplt, naive
    assert float(sound.value.iloc[0]) <= float(sound.value.iloc[1]) * (1 + 1e-9)  # LipSDP <= its start
    assert not b[b.kind == "estimate"].sound.any()
    c = report.curves
    assert list(c.eps) == [0.1, 0.4, 1.0]
    assert (c.certified <= c.robust).all() and (c.certified_pairwise <= c.robust).all()
    assert (c.robust <= c.clean).all() and c.robust.is_monotonic_decreasing
    path = report.save(tmp_path / "audit.html")
    page = path.read_text()
    assert "data:image/png;base64," in page and "LipSDP-neuron" in page
    assert "http://" not in page and "https://" not in page          # opens offline


def test_the_audit_page_reads_offline_in_chromium(mnist_net, tmp_path, browser):
    net, test = mnist_net
    path = audit(net, tuple(t[:40] for t in test), [0.5], iterations=5).save(
        tmp_path / "audit.html")
    page = browser.new_context(offline=True).new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    assert page.evaluate("document.images[0].naturalWidth") > 100      # the figure loaded
    assert page.locator("table").count() == 2 and not errors


def test_a_model_lipcore_cannot_analyse_gets_attacks_and_named_refusals(mnist_net):
    net, test = mnist_net

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) + 0.1 * x.flatten(1)[:, :10]
    report = audit(Residual(), test, [0.5], iterations=5)
    upper = report.bounds[report.bounds.kind == "upper bound"]
    assert upper.value.isna().all() and upper.note.str.contains("Residual").all()
    assert math.isnan(report.curves.certified.iloc[0])
    assert 0 <= report.curves.robust.iloc[0] <= report.curves.clean.iloc[0]


def test_the_audit_command_reads_a_state_dict_safely_and_writes_the_page(mnist_net, tmp_path,
                                                                         capsys):
    net, _ = mnist_net
    torch.save(net.state_dict(), tmp_path / "net.pt")
    main([str(tmp_path / "net.pt"), "--arch", "784-32-10", "--data", "mnist", "--data-dir", DATA,
          "--eps", "0.5", "--samples", "40", "--out", str(tmp_path / "page.html")])
    assert (tmp_path / "page.html").exists() and "LipSDP-neuron" in capsys.readouterr().out


def test_the_audit_command_reads_a_residual_net_and_names_torchvision_classifiers(tmp_path,
                                                                                capsys):
    """On a labelled synthetic stand-in of CIFAR-10 (the real one is not on this machine): the
    state dict of lipcore's ResNet-20 is bounded through its skip connections, and LipSDP and
    LipLT say why they do not apply; torchvision's classifiers are built by name."""
    import numpy as np
    from torchvision.models.resnet import ResNet
    from lipcore.audit import architecture
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=np.arange(8), x_test=x,
             y_test=np.arange(8))
    torch.save(architecture("resnet20", 3, 10).state_dict(), tmp_path / "net.pt")
    main([str(tmp_path / "net.pt"), "--arch", "resnet20", "--data", "cifar10", "--data-dir",
          str(tmp_path), "--eps", "0.1", "--samples", "4", "--iterations", "2",
          "--out", str(tmp_path / "page.html")])
    out = capsys.readouterr().out
    assert (tmp_path / "page.html").exists() and "skip connections" in out
    assert type(architecture("torchvision:resnet18", 3, 7)) is ResNet
    with pytest.raises(ValueError, match="torchvision has no classifier"):
        architecture("torchvision:resnet-9000")


def test_a_sampled_audit_certifies_every_point_and_attacks_a_seeded_sample(mnist_net, monkeypatch):
    """``attack_samples`` leaves the certificates on every point and attacks n points drawn at
    random, with an exact 95% interval around the sample's robust accuracy; the run-time check
    still covers the sample (radii made deliberately unsound must raise)."""
    import lipcore.audit as audit_module
    from lipcore.audit import attack_sample, robust_interval
    net, test = mnist_net
    full = audit(net, test, [0.3, 1.0], iterations=5)
    sampled = audit(net, test, [0.3, 1.0], iterations=5, attack_samples=30, seed=1)
    assert full.attacked is None and sampled.attacked == 30 and sampled.samples == len(test[0])
    assert list(sampled.curves.certified) == list(full.curves.certified)
    c = sampled.curves
    assert ((c.certified <= c.robust_low) & (c.robust_low <= c.robust_high)
            & (c.robust_high <= c.clean)).all() and (c.robust_high - c.robust_low > 5).all()
    assert (full.curves.robust_low == full.curves.robust).all()
    assert (full.curves.robust_high == full.curves.robust).all()
    assert torch.equal(attack_sample(120, 30, 1), attack_sample(120, 30, 1))
    assert not torch.equal(attack_sample(120, 30, 1), attack_sample(120, 30, 2))
    assert len(attack_sample(120, 30, 1).unique()) == 30
    assert robust_interval(30, 30, 120)[0] > 88 and robust_interval(0, 30, 120)[1] < 12
    assert robust_interval(80, 120, 121)[1] - robust_interval(80, 120, 121)[0] < 1  # one unknown
    with pytest.raises(ValueError, match="attack_samples"):
        attack_sample(120, 0, 0)
    for option in ("--samples", "--attack-samples"):
        with pytest.raises(SystemExit):
            main(["net.pt", "--arch", "4C3F", option, "0"])
    unsound = lambda model, data, bound, **_: torch.full((len(data[0]),), 1e9, dtype=torch.float64)
    monkeypatch.setattr(audit_module, "certified_radii", unsound)
    with pytest.raises(RuntimeError, match="not sound"):
        audit(net, test, [3.0], iterations=5, attack_samples=30)


def test_the_attack_interval_covers_the_population_at_its_stated_level():
    """Drawing 30 of 200 points (120 of which survive the attacks) again and again, the 95%
    interval holds the population's 60% at least 95% of the time."""
    from lipcore.audit import robust_interval
    survives = torch.zeros(200, dtype=torch.bool)
    survives[:120] = True
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(400):
        k = int(survives[torch.randperm(200, generator=generator)[:30]].sum())
        low, high = robust_interval(k, 30, 200)
        covered += low <= 60.0 <= high
    assert covered >= 0.95 * 400


def test_an_input_shape_other_than_the_datas_is_refused():
    """A net that runs at two shapes (flatten then dense) must not be bounded at one and
    certified at the other (a hostile review found the audit did)."""
    model = nn.Sequential(nn.Conv2d(1, 1, (1, 3), padding=(0, 1)), nn.Flatten(), nn.Linear(16, 2))
    x, y = torch.rand(1, 1, 4, 4), torch.tensor([0])
    with pytest.raises(ValueError, match="not the data's shape"):
        audit(model, (x, y), eps=[0.2], input_shape=(1, 16, 1))


@pytest.mark.parametrize("eps", [[], [0.0], [-0.1], [float("nan")], ["0.1"], 0.1])
def test_radii_that_are_not_positive_numbers_are_refused_before_any_work(eps, monkeypatch):
    import lipcore.audit as audit_module
    monkeypatch.setattr(audit_module, "_bound_rows", lambda *a: pytest.fail("bounds computed"))
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="eps must be a non-empty list of finite radii > 0"):
        audit(model, (torch.rand(3, 2), torch.tensor([0, 1, 0])), eps=eps)


def test_the_audit_leaves_the_models_train_and_eval_modes_as_it_found_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4, 2))
    model.train()
    model[2].eval()                                   # a mixed state, as a user may leave it
    before = [m.training for m in model.modules()]
    report = audit(model, (torch.rand(8, 2), torch.randint(0, 2, (8,))), eps=[0.05, 0.05],
                   attacks=("apgd-ce",), iterations=5)
    assert [m.training for m in model.modules()] == before
    assert list(report.curves.eps) == [0.05]          # a repeated radius is one row
