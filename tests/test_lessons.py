"""The lessons' figures (lipcore.lessons): each control changes what is drawn the way it should,
what a figure claims holds (no adversarial inside a certified ball, the bound ladder is ordered,
the coupled multiplier falls below the true constant), and the widgets redraw on a change. The
lesson notebooks themselves run under nbval (notebooks/lessons/)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

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
