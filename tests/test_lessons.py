"""The lessons' figures (lipcore.lessons): each control changes what is drawn the way it should,
what a figure claims holds (no point of another class inside a certified ball, the bound ladder
keeps its theorems, the coupled multiplier falls below the true constant), and the widgets
redraw on a change. The lesson notebooks themselves run under nbval (notebooks/lessons/)."""
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


def test_a_stronger_penalty_lowers_L_and_no_other_class_lies_in_a_certified_ball(ax):
    weak = lessons.draw_certified_balls(ax, "l2", 1e-4)
    strong = lessons.draw_certified_balls(ax, "l2", 3e-3)
    assert len(ax.patches) == strong["certified"]              # one ball per certified point
    assert strong["L"] < weak["L"]
    assert strong["mean_radius"] > weak["mean_radius"]
    for shown in (weak, strong, lessons.draw_certified_balls(ax, "clip", 0.01)):
        assert shown["broken_inside"] == 0 and shown["certified"] > 0       # a sound L
        assert 0 < shown["recovered"] < 1                      # radius <= distance to boundary
    # a smaller L alone does not make bigger balls: the margins move too (lesson 1's point)
    assert shown["L"] < strong["L"] and shown["mean_margin"] < strong["mean_margin"]


def test_the_bound_control_changes_only_L_and_the_radii(ax):
    sdp = lessons.draw_certified_balls(ax, "l2", 3e-3, bound="lipsdp")
    naive = lessons.draw_certified_balls(ax, "l2", 3e-3, bound="naive")
    assert naive["L"] > sdp["L"] and naive["mean_radius"] < sdp["mean_radius"]
    assert naive["mean_margin"] == pytest.approx(sdp["mean_margin"])         # same net
    # equal up to the proved rounding allowance, which grows with the ball (lipcore.rounding)
    assert naive["mean_radius"] * naive["L"] == pytest.approx(sdp["mean_radius"] * sdp["L"], rel=1e-4)
    assert "naive" in ax.get_title()
    # "none" ignores strength: the same cached net, not a retraining
    assert lessons.draw_certified_balls(ax, "none", 0.5) == lessons.draw_certified_balls(ax, "none")
    with pytest.raises(ValueError, match="method must be one of"):
        lessons.draw_certified_balls(ax, "dropout", 0.1)
    with pytest.raises(ValueError, match="bound must be one of"):
        lessons.draw_certified_balls(ax, "l2", 3e-3, bound="exact")


def test_the_bound_ladder_holds_its_theorems_and_follows_its_controls(ax):
    shallow = lessons.draw_bound_ladder(ax, depth=1, width=16)
    deep = lessons.draw_bound_ladder(ax, depth=3, width=16, activation="relu", scale=2.0)
    for rows in (shallow, deep):
        bound = {r["estimator"]: r["bound"] for r in rows}
        assert rows[0]["estimator"] == "empirical lower bound"
        assert all(r["bound"] >= bound["empirical lower bound"] * (1 - 1e-4) for r in rows)
        for smaller, larger in lessons.ladder.THEOREMS:
            assert bound[smaller] <= bound[larger] * (1 + 1e-4), (smaller, larger, bound)
    assert deep != shallow and len(ax.patches) == len(deep)
    assert "3 x 16 relu" in ax.get_title()


def test_the_coupled_multiplier_certifies_a_constant_below_the_truth(ax):
    diagonal = lessons.draw_counterexample(ax, 0.0)
    coupled = lessons.draw_counterexample(ax, 0.9)
    assert diagonal["bound"] >= diagonal["true"] and not diagonal["unsound"]
    assert coupled["bound"] < coupled["true"] and coupled["unsound"]
    assert "unsound" in ax.get_title()
    # the derivation: the LMI needs tau > 1 / (1 + c) (tau > 1/2 as c -> 1), then any L holds
    assert diagonal["least_tau"] >= 1.0 and 0.5 < coupled["least_tau"] < 0.6
    assert lessons.least_L(0.99, 0.6) < 0.1 < lessons.true_constant()
    assert lessons.least_L(0.5, 0.6) == float("inf")
    # the lesson's closed form: least L = sqrt(tau (1 - c)), at best tau sqrt((1 - c) / (1 + c))
    for c in (0.0, 0.3, 0.9):
        assert lessons.least_L(c, 2.0) == pytest.approx((2.0 * (1 - c)) ** 0.5, rel=1e-9)
        assert lessons.coupled_bound(c) == pytest.approx(((1 - c) / (1 + c)) ** 0.5, rel=1e-5)
    assert all(panel.get_ylabel() for panel in ax.child_axes)
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


def test_small_multiples_draw_one_panel_per_setting_on_shared_axes():
    fig = lessons.small_multiples(lessons.draw_bound_ladder,
                                  [dict(depth=1, width=8), dict(depth=3, width=8, scale=2.0)],
                                  ncols=3, share="x")
    first, second, empty = fig.axes[:3]
    assert first.get_title().startswith("1 x 8") and second.get_title().startswith("3 x 8")
    assert empty.get_title() == "" and first.get_xlim() == second.get_xlim()
    plt.close(fig)


needs_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("LIPCORE_DATA", ""), "mnist.npz")),
    reason="lessons 4, 6 and 7 train on MNIST: set LIPCORE_DATA to a folder with mnist.npz")


@needs_mnist
def test_the_weak_attack_misses_what_the_strong_attacks_break_and_never_a_certified_image(ax):
    at_1 = lessons.draw_weak_attack(ax, "standard", 1.0)
    assert at_1["paper"] > at_1["strong"] + 20 and at_1["missed"] > 10      # the lesson's point
    assert 1 / 28 < at_1["sign_efficiency"] < 0.9          # sign steps lose first-order gain
    small = lessons.draw_weak_attack(ax, "lipschitz loss", 0.6)             # snaps to eps 0.5
    assert "eps 0.5" in ax.get_title() and small["certified"] > 0
    legend = [t.get_text() for t in ax.child_axes[1].get_legend().get_texts()]
    assert any(t.startswith("certified (") for t in legend)             # only what is drawn
    assert not any("a bug" in t for t in legend)
    for shown in (at_1, small):
        assert shown["certified_yet_broken"] == 0
        assert shown["certified"] <= shown["strong"] <= shown["paper"] + 5
    assert lessons.image_status(lessons.weak_attack_sweep("standard"), 3.0).count("wrong") > 0


@needs_mnist
def test_the_shares_lesson_4_quotes_for_the_standard_net():
    from lipcore.lessons.steepest import accuracy
    sweep = lessons.weak_attack_sweep("standard")
    quoted = {0.25: (90, 85), 1.0: (79, 36), 2.0: (63, 3)}       # (eq. (13), strong) in %
    for eps, shares in quoted.items():
        assert (accuracy(sweep["paper"], eps), accuracy(sweep["strong"], eps)) == shares


def test_crm_shrinks_the_constant_and_pairwise_constants_certify_more(ax):
    plain = lessons.draw_margins(ax, 0.0)
    crm = lessons.draw_margins(ax, 10.0)
    for shown in (plain, crm):
        assert shown["violations"] == 0                          # no radius beyond the boundary
        assert shown["pairwise_certified"] >= shown["global_certified"]
        assert shown["max_pairwise_over_global"] <= 1.0 + 1e-9   # L_ij <= sqrt(2) L, a theorem
        assert shown["global_above_pairwise"] == 0               # so r_pair >= r_global per point
    assert crm["pairwise_certified"] > plain["pairwise_certified"]
    assert crm["L"] < plain["L"]                                 # through a smaller constant
    assert "CRM weight 10" in ax.get_title()
    wide = lessons.draw_margins(ax, 10.0, eps=0.2)                # the eps control
    assert wide["pairwise_certified"] < crm["pairwise_certified"] and "eps 0.2" in ax.get_title()
    with pytest.raises(ValueError, match="CRM strength must be >= 0"):
        lessons.crm_2d_net(-1.0)


@needs_mnist
def test_noise_lowers_accuracy_and_the_clamp_control_changes_image_and_curves_together(ax):
    clean = lessons.draw_noise(ax, 0.0, image=0)
    noisy = lessons.draw_noise(ax, 1.2, image=0)
    assert noisy["standard accuracy"] < clean["standard accuracy"] - 20
    assert noisy["lipschitz loss accuracy"] > noisy["standard accuracy"] + 5
    assert noisy["lipschitz loss k"] < noisy["standard k"]      # what the loss penalises
    assert lessons.draw_noise(ax, 1.2, image=1) != noisy                     # the image control
    picture = ax.child_axes[0].get_images()[0].get_array()
    assert picture.min() < 0 < 1 < picture.max()                # drawn as the nets see it
    clamped = lessons.draw_noise(ax, 1.2, image=0, clamp=True)
    picture = ax.child_axes[0].get_images()[0].get_array()
    assert 0 <= picture.min() and picture.max() <= 1
    assert clamped["standard accuracy"] != noisy["standard accuracy"]
    assert "clamped" in ax.child_axes[-1].get_title()
    other = lessons.draw_noise(ax, 1.2, image=0, sigma_train=0.05)          # retrains one net
    assert other["lipschitz loss k"] != noisy["lipschitz loss k"]
    assert other["standard k"] == noisy["standard k"]
    off = lessons.draw_noise(ax, 1.2, image=0, beta=0.0)        # the loss off: standard training
    assert off["lipschitz loss k"] == off["standard k"]
    assert off["lipschitz loss accuracy"] == off["standard accuracy"]
    heavy = lessons.draw_noise(ax, 1.2, image=0, beta=20.0)      # beta acts on k
    assert heavy["lipschitz loss k"] < noisy["lipschitz loss k"] < off["lipschitz loss k"]
    assert "beta 20" in ax.child_axes[-1].get_title()
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        lessons.draw_noise(ax, -0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        lessons.draw_noise(ax, 0.5, beta=-1.0)


def test_every_bound_of_a_users_net_is_ordered_or_says_why_it_does_not_apply():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))
    rows = lessons.every_bound(dense, (1, 3, 4))
    assert (rows.sound == "sound upper bound").sum() == 4     # LipSDP, compositional, LipLT, naive
    lower = rows.bound["empirical lower bound"]
    assert lower <= rows.bound["LipSDP-neuron"] * (1 + 1e-6) <= rows.bound["LipLT"] * (1 + 1e-6)
    assert rows.bound["LipSDP-neuron"] <= rows.bound["compositional (ECLipsE-Fast, scaled)"] * (1 + 1e-9)
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
