"""The lessons' figures (lipcore.lessons): each control changes what is drawn the way it should,
what a figure claims holds (no adversarial inside a certified ball, the bound ladder is ordered,
the coupled multiplier falls below the true constant), and the widgets redraw on a change. The
lesson notebooks themselves run under nbval (notebooks/lessons/)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lipcore import lessons  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_a_stronger_penalty_lowers_L_and_no_adversarial_lies_in_a_certified_ball(ax):
    weak = lessons.draw_certified_balls(ax, "l2", 1e-4)
    strong = lessons.draw_certified_balls(ax, "l2", 3e-3)
    assert len(ax.patches) == strong["certified"]              # one ball per certified point
    assert strong["L"] < weak["L"]
    assert strong["mean_radius"] > weak["mean_radius"]
    for shown in (weak, strong, lessons.draw_certified_balls(ax, "clip", 0.01)):
        assert shown["broken_inside"] == 0 and shown["certified"] > 0
    with pytest.raises(ValueError, match="method must be one of"):
        lessons.draw_certified_balls(ax, "dropout", 0.1)


def test_the_bound_ladder_is_ordered_and_follows_its_controls(ax):
    shallow = lessons.draw_bound_ladder(ax, depth=1, width=16)
    deep = lessons.draw_bound_ladder(ax, depth=3, width=16, activation="relu", scale=2.0)
    for rows in (shallow, deep):
        values = [r["bound"] for r in rows]
        assert [r["estimator"] for r in rows][0] == "empirical lower bound"
        assert all(a <= b * (1 + 1e-4) for a, b in zip(values, values[1:])), values
    assert deep != shallow and len(ax.patches) == len(deep)
    assert "3 x 16 relu" in ax.get_title()


def test_the_coupled_multiplier_certifies_a_constant_below_the_truth(ax):
    diagonal = lessons.draw_counterexample(ax, 0.0)
    coupled = lessons.draw_counterexample(ax, 0.9)
    assert diagonal["bound"] >= diagonal["true"] and not diagonal["unsound"]
    assert coupled["bound"] < coupled["true"] and coupled["unsound"]
    assert "unsound" in ax.get_title()
    with pytest.raises(ValueError, match="coupling must be in"):
        lessons.coupled_bound(1.0)


def test_moving_a_control_redraws_the_figure():
    widgets = pytest.importorskip("ipywidgets")
    calls = []

    def draw(ax, value=1.0):
        calls.append(value)
        ax.clear()
        ax.plot([0, 1], [0, value])
        return value
    box = lessons.explore(draw, value=widgets.FloatSlider(value=1.0, min=0.0, max=5.0))
    slider, busy = box.children[0].children
    assert calls == [1.0] and not slider.continuous_update      # drawn once, on release only
    slider.value = 3.0
    assert calls == [1.0, 3.0] and busy.value.startswith("drawn in")


def test_small_multiples_draw_one_panel_per_setting():
    fig = lessons.small_multiples(lessons.draw_counterexample, [dict(coupling=c) for c in (0.0, 0.5)],
                                  ncols=3)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("c = 0.00") and titles[1].startswith("c = 0.50") and titles[2] == ""
    plt.close(fig)


needs_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("LIPCORE_DATA", ""), "mnist.npz")),
    reason="lessons 4, 6 and 7 train on MNIST: set LIPCORE_DATA to a folder with mnist.npz")


@needs_mnist
def test_the_weak_attack_misses_what_the_strong_attacks_break_and_never_a_certified_image(ax):
    at_2 = lessons.draw_weak_attack(ax, "standard", 2.0)
    assert at_2["paper"] > at_2["strong"] + 20 and at_2["missed"] > 10      # the lesson's point
    small = lessons.draw_weak_attack(ax, "lipschitz loss", 0.3)             # snaps to eps 0.25
    assert "eps 0.25" in ax.get_title() and small["certified"] > 0
    for shown in (at_2, small):
        assert shown["certified_yet_broken"] == 0
        assert shown["certified"] <= shown["strong"] <= shown["paper"] + 5
    assert lessons.image_status(lessons.weak_attack_sweep("standard"), 3.0).count("wrong") > 0


def test_crm_raises_certified_radii_and_pairwise_constants_certify_more(ax):
    plain = lessons.draw_margins(ax, 0.0)
    crm = lessons.draw_margins(ax, 10.0)
    for shown in (plain, crm):
        assert shown["violations"] == 0                          # no radius beyond the attack's
        assert shown["pairwise_certified"] >= shown["global_certified"]
        assert shown["pairwise_over_global"] < 1.0
    assert crm["pairwise_certified"] > plain["pairwise_certified"]
    assert "CRM strength 10" in ax.get_title()
    with pytest.raises(ValueError, match="CRM strength must be >= 0"):
        lessons.crm_2d_net(-1.0)


@needs_mnist
def test_noise_lowers_confidence_and_the_lipschitz_loss_keeps_accuracy_longer(ax):
    clean = lessons.draw_noise(ax, 0.0, image=0)
    noisy = lessons.draw_noise(ax, 1.2, image=0)
    assert noisy["standard accuracy"] < clean["standard accuracy"] - 20
    assert noisy["lipschitz loss accuracy"] > noisy["standard accuracy"] + 5
    assert noisy["standard p(label)"] < clean["standard p(label)"]
    assert lessons.draw_noise(ax, 1.2, image=1) != noisy                     # the image control
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        lessons.draw_noise(ax, -0.1)


def test_every_bound_of_a_users_net_is_ordered_or_says_why_it_does_not_apply():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))
    rows = lessons.every_bound(dense, (1, 3, 4))
    assert (rows.sound == "sound upper bound").sum() == 3
    lower = rows.bound["empirical lower bound"]
    assert lower <= rows.bound["LipSDP-neuron"] * (1 + 1e-6) <= rows.bound["LipLT"] * (1 + 1e-6)
    assert rows.bound["LipLT"] <= rows.bound["naive (layer-wise product)"] * (1 + 1e-6)
    rows = lessons.every_bound(conv, (1, 8, 8))
    assert rows.sound["LipSDP-neuron"] == "does not apply"
    assert "fully connected" in rows.note["LipSDP-neuron"]
    assert rows.bound["empirical lower bound"] <= rows.bound["LipLT"] <= \
        rows.bound["naive (layer-wise product)"] * (1 + 1e-6)


def test_the_accuracy_curves_follow_the_radii_and_the_eps_control(ax):
    radii = {"strong": torch.tensor([0.0, 0.5, 1.0, float("inf")]),
             "certified": torch.tensor([0.0, 0.2, 0.4, 0.6])}
    lessons.draw_accuracy_against_eps(ax, radii, eps=0.3, max_eps=2.0)
    strong, certified = ax.get_lines()[:2]
    assert strong.get_ydata()[0] == 75.0 and certified.get_ydata()[-1] == 0.0   # % above eps
    assert (strong.get_ydata() >= certified.get_ydata()).all()
    first = ax.get_lines()[-1].get_xdata()[0]
    ax.clear()
    lessons.draw_accuracy_against_eps(ax, radii, eps=1.5, max_eps=2.0)
    assert first == 0.3 and ax.get_lines()[-1].get_xdata()[0] == 1.5           # the eps marker
