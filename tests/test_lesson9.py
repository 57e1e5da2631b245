"""Lesson 9 (l2 against l-infinity steepest ascent): the theorems the lesson derives hold on the
numbers it draws, lipcore's PGD takes exactly the lesson's steps, each control changes what is
drawn, and every observation the text states about the MNIST net holds. The notebook itself runs
under nbval (notebooks/lessons/)."""
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from lipcore.attacks import pgd_l2  # noqa: E402
from lipcore.lessons import steepest  # noqa: E402

needs_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.environ.get("LIPCORE_DATA", ""), "mnist.npz")),
    reason="lesson 9's second half trains on MNIST: set LIPCORE_DATA to a folder with mnist.npz")


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


# ------------------------------------------------------------------ theorems 1-3

def test_each_step_has_the_length_the_lesson_states():
    g = torch.randn(3, steepest.D_MNIST, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    for step in (0.01, 0.25, 2.0):
        l2 = steepest.steepest_step(g, step, 2).norm(dim=1)
        sign = steepest.steepest_step(g, step, math.inf).norm(dim=1)
        assert torch.allclose(l2, torch.full_like(l2, step))                       # Theorem 2
        assert torch.allclose(sign, torch.full_like(sign, step * 28))              # sqrt(784)
    assert math.isclose(float(steepest.steepest_step(g[:1], 0.25, math.inf).norm()), 7.0)
    g[0, :84] = 0.0                                    # k = 700 nonzero entries: step * sqrt(k)
    assert math.isclose(float(steepest.steepest_step(g[:1], 0.25, math.inf).norm()),
                        0.25 * math.sqrt(700))
    with pytest.raises(ValueError, match="p must be 2 or math.inf"):
        steepest.steepest_step(g, 1.0, 1)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(g=arrays(np.float64, st.integers(1, 40), elements=finite),
       step=st.floats(0.01, 10.0), eps=st.floats(0.01, 10.0), seed=st.integers(0, 2 ** 16))
def test_no_step_in_the_ball_gains_more_than_the_l2_step(g, step, eps, seed):
    """Theorems 1 and 3 for any gradient: the l2 step reaching the sphere gains eps ||g||_2, the
    projected sign step and any other point of the ball at most that; Hoelder is attained."""
    g = torch.from_numpy(g)[None]
    if float(g.norm()) < 1e-6:
        return
    out = steepest.gains(g, step, eps)
    norm, tol = float(g.norm()), 1e-9 * (1 + float(g.abs().sum()) * max(step, eps))
    assert math.isclose(float(out["best"]), eps * norm, rel_tol=1e-12)
    assert math.isclose(float(out["l2"]), min(step, eps) * norm, rel_tol=1e-9)  # attains it
    assert float(out["sign"]) <= float(out["best"]) + tol
    if step >= eps:                                                     # both reach the sphere
        assert float(out["l2"]) >= float(out["sign"]) - tol
    k = int((g != 0).sum())
    if step * math.sqrt(k) >= eps:                        # projected: the share of Theorem 3
        share = float(g.abs().sum()) / (math.sqrt(k) * norm)
        assert math.isclose(float(out["sign"]) / float(out["best"]), share, rel_tol=1e-9)
        assert 1 / math.sqrt(k) - 1e-12 <= share <= 1 + 1e-12
    assert math.isclose(float(g @ steepest.steepest_step(g, 1.0, 2)[0]), norm, rel_tol=1e-9)
    assert math.isclose(float(g @ steepest.steepest_step(g, 1.0, math.inf)[0]),
                        float(g.abs().sum()), rel_tol=1e-9)
    rng = torch.Generator().manual_seed(seed)                 # random points of each ball
    d = torch.randn(64, g.shape[1], generator=rng, dtype=torch.float64)
    d = eps * d / d.norm(dim=1, keepdim=True) * torch.rand(64, 1, generator=rng, dtype=d.dtype)
    assert float((d @ g[0]).max()) <= eps * norm + tol
    box = eps * (2 * torch.rand(64, g.shape[1], generator=rng, dtype=torch.float64) - 1)
    assert float((box @ g[0]).max()) <= eps * float(g.abs().sum()) + tol


def test_one_iteration_of_lipcores_pgd_takes_the_lessons_steps():
    """From an interior image, one iteration of pgd_l2 moves by Pi_eps(steepest_step(grad CE))."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).double()
    x = torch.full((4, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xg), y), xg)
    g = g.flatten(1)
    for variant, p, step, eps in (("l2", 2, 0.1, 1.0), ("paper", math.inf, 0.01, 1.0),
                                  ("l2", 2, 0.4, 0.3), ("paper", math.inf, 0.1, 0.3)):
        delta = (pgd_l2(net, x, y, eps=eps, step=step, iterations=1, variant=variant) - x)
        expected = steepest.project_l2_ball(steepest.steepest_step(g, step, p), eps)
        assert torch.allclose(delta.flatten(1), expected, atol=1e-12), variant
        length = delta.flatten(1).norm(dim=1)
        inside = step * (1 if p == 2 else 4) <= eps                 # sqrt(16) = 4
        assert torch.allclose(length, torch.full_like(length, step * (1 if p == 2 else 4)
                                                      if inside else eps))


# ------------------------------------------------------------------ the plane

def test_the_plane_shows_where_the_steps_coincide_and_how_far_apart_they_get(ax):
    for angle in (45, 135, 225, 315, 0, 90, 180, 270):     # diagonals, and exactly the axes
        s = steepest.draw_steepest_2d(ax, angle, 1.0)
        assert s["angle_between"] < 1e-6 and math.isclose(s["sign_gain"], s["best_gain"])
        assert np.allclose(s["sign_point"], s["l2_point"])
    off_axis = steepest.draw_steepest_2d(ax, 5, 1.0)
    assert math.isclose(off_axis["angle_between"], 40.0, abs_tol=1e-6)
    assert math.isclose(off_axis["sign_gain"], math.cos(math.radians(40)), rel_tol=1e-9)
    assert round(off_axis["sign_gain"], 2) == 0.77                       # the text's number
    share = off_axis["share_curve"]
    assert math.isclose(share.max(), 1.0) and 1 / math.sqrt(2) <= share.min() < 0.72
    g = torch.stack([steepest.gradient_2d(a) for a in range(0, 360, 5)])   # Theorem 3, all angles
    out = steepest.gains(g, 1.0, steepest.EPS_2D)
    assert (out["sign"] <= out["best"] + 1e-12).all() and torch.allclose(out["l2"], out["best"])
    assert (share <= 1 + 1e-12).all()
    inside = steepest.draw_steepest_2d(ax, 100, 0.5)          # the nominal-step caveat
    assert not inside["sign_outside"] and math.isclose(inside["sign_length"], 0.5 * math.sqrt(2))
    assert round(inside["sign_gain"], 2) == 0.58 and inside["l2_gain"] == pytest.approx(0.5)
    assert inside["sign_gain"] > inside["l2_gain"] and inside["sign_gain"] < inside["best_gain"]


def test_each_control_of_the_plane_changes_what_is_drawn(ax):
    def drawn():
        plane, curve = ax.child_axes
        return ([tuple(np.round(line.get_xydata().ravel(), 9)) for line in plane.lines],
                [tuple(np.round(line.get_ydata(), 9)) for line in curve.lines], ax.get_title())
    base = steepest.draw_steepest_2d(ax, 30, 1.0)
    first = drawn()
    turned = steepest.draw_steepest_2d(ax, 60, 1.0)
    assert drawn()[0] != first[0] and drawn()[2] != first[2]
    assert np.array_equal(turned["share_curve"], base["share_curve"])    # the angle moves the dot
    shorter = steepest.draw_steepest_2d(ax, 30, 0.5)
    assert drawn()[1] != first[1] and not np.array_equal(shorter["share_curve"],
                                                         base["share_curve"])
    assert shorter["sign_length"] < base["sign_length"] and len(ax.child_axes) == 2


# ------------------------------------------------------------------ PGD on MNIST

@needs_mnist
def test_the_ensemble_is_strongest_and_l2_steps_beat_sign_steps_on_every_image():
    for step in steepest.STEPS:
        sweep = steepest.attack_sweep(step)
        strong, sign, l2, rs = (sweep[n] for n in ("strong", "sign PGD", "l2 PGD",
                                                   "l2 PGD, random start"))
        for pgd in (sign, l2, rs):                          # per image, on the same images
            assert (strong <= pgd).all(), step
        assert (l2 <= sign).all(), step
        for eps in steepest.EPS_GRID:                       # the accuracies, strictly ordered
            acc = [steepest.accuracy(sweep[n], eps) for n in ("strong", "l2 PGD, random start",
                                                              "l2 PGD", "sign PGD")]
            assert acc[0] < acc[1] < acc[2] < acc[3], (step, eps, acc)


@needs_mnist
def test_the_observations_the_lesson_states_about_pgd():
    acc = {s: {n: [steepest.accuracy(steepest.attack_sweep(s)[n], e) for e in steepest.EPS_GRID]
               for n in steepest.ATTACKS} for s in steepest.STEPS}
    long = (0.25, 1.0, 7.0)
    at = {e: i for i, e in enumerate(steepest.EPS_GRID)}
    for name in steepest.ATTACKS[:3]:             # the length hardly matters from 0.25 to 7
        for i in range(len(steepest.EPS_GRID)):
            values = [acc[s][name][i] for s in long]
            assert max(values) - min(values) <= 3, (name, i, values)
    for s in long:                                # the direction does: 6 to 13 points
        gaps = [acc[s]["sign PGD"][at[e]] - acc[s]["l2 PGD"][at[e]] for e in (1.0, 1.5, 2.0, 3.0)]
        assert 6 <= min(gaps) and max(gaps) <= 13, (s, gaps)
        assert 42 <= acc[s]["l2 PGD"][at[2.0]] <= 44
        assert acc[s]["strong"][at[2.0]] == pytest.approx(3.0)
    assert 10.5 <= min(acc[s]["l2 PGD, random start"][at[2.0]] for s in steepest.STEPS)
    assert max(acc[s]["l2 PGD, random start"][at[2.0]] for s in steepest.STEPS) <= 14.5
    short = acc[0.05]                             # too short to travel
    assert [short["sign PGD"][at[e]] for e in (1.0, 1.5, 2.0, 3.0)] == [80.0] * 4
    for e in (0.25, 0.5, 1.0, 1.5, 2.0):
        assert all(abs(short["l2 PGD"][at[e]] - acc[s]["l2 PGD"][at[e]]) <= 2 for s in long)
    assert all(short["l2 PGD"][at[3.0]] > acc[s]["l2 PGD"][at[3.0]] + 10 for s in long)
    sign_reach = steepest.distance_reached("paper", 0.05)
    l2_reach = steepest.distance_reached("l2", 0.05)
    assert round(float(sign_reach.mean()), 1) == 0.9 and float(sign_reach.max()) < 1.25
    assert float(l2_reach.min()) > 1.99 and float(l2_reach.max()) <= 2.0 + 1e-5   # the sphere


@needs_mnist
def test_the_first_step_on_mnist_as_the_lesson_states():
    f = steepest.first_steps(2.0)
    share = f["efficiency"]
    assert 0.65 < float(share.min()) and float(share.max()) < 0.8
    assert round(float(share.mean()), 2) == 0.73
    assert torch.allclose(f["l2"], f["best"], rtol=1e-4)                     # Theorem 1
    assert (f["sign"] <= f["best"] * (1 + 1e-5)).all()                      # Theorem 3
    assert torch.allclose(f["sign"] / f["best"], share.to(f["sign"].dtype), rtol=1e-4)
    for name in ("l2", "sign"):                                             # about a third
        assert 0.25 < float(f[f"{name}_clamped"].mean() / f[name].mean()) < 0.45
        assert (f[f"{name}_clamped"] <= f["best"] * (1 + 1e-5)).all()      # still in the ball
    assert (f["l2_clamped"] > f["sign_clamped"]).all()                      # every image
    x, _ = steepest._images()
    assert float((x == 0).double().mean()) > 0.5                         # most pixels are 0
    g = torch.randn(1, steepest.D_MNIST, generator=torch.Generator().manual_seed(0))
    best = steepest.gains(g, step=7.0, eps=2.0)                 # the notebook's Gaussian draw
    assert abs(float(best["sign"] / best["best"]) - math.sqrt(2 / math.pi)) < 0.02


@needs_mnist
def test_each_control_of_the_mnist_figure_changes_what_is_drawn(ax):
    base = steepest.draw_attacks_against_eps(ax, 1.0, 7.0)
    left, right = ax.child_axes
    dotted = left.lines[-1].get_xdata()[0]
    wider = steepest.draw_attacks_against_eps(ax, 2.0, 7.0)
    assert wider["accuracy"] != base["accuracy"] and wider["curves"] == base["curves"]
    assert ax.child_axes[0].lines[-1].get_xdata()[0] != dotted and "eps 2" in ax.get_title()
    shorter = steepest.draw_attacks_against_eps(ax, 2.0, 0.05)
    assert shorter["curves"]["sign PGD"] != wider["curves"]["sign PGD"]
    assert shorter["at_steps"] == wider["at_steps"]               # the step moves the marker
    assert ax.child_axes[1].lines[-1].get_xdata()[0] == 0.05 and len(ax.child_axes) == 2
    assert steepest.draw_attacks_against_eps(ax, 1.1, 7.0)["eps"] == 1.0   # snaps to the grid
    with pytest.raises(ValueError, match="step must be one of"):
        steepest.draw_attacks_against_eps(ax, 1.0, 0.5)


# ------------------------------------------------------------------ what every figure shows

def _inside(box, points) -> np.ndarray:
    """Which display-coordinate points lie inside a matplotlib Bbox."""
    p = np.asarray(points, dtype=float)
    return (p[:, 0] >= box.x0) & (p[:, 0] <= box.x1) & (p[:, 1] >= box.y0) & (p[:, 1] <= box.y1)


def _no_panel_overlaps(fig, ax) -> None:
    """No panel's frame, y axis (ticks and label) or legend overlaps another panel's."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    parts = []
    for k, panel in enumerate(ax.child_axes):
        parts += [(k, panel.get_window_extent()), (k, panel.yaxis.get_tightbbox(renderer))]
        if panel.get_legend() is not None:
            parts.append((k, panel.get_legend().get_window_extent()))
    for i, (k, a) in enumerate(parts):
        for m, b in parts[i + 1:]:
            assert k == m or not a.overlaps(b), (k, m)


def test_the_plane_figures_legends_cover_no_panel(figure_layouts):
    """Both legends sit beside their panels, so no angle can put a step or a curve under them,
    and nothing overlaps in the widget's layout or the static one."""
    for angle, step in ((45, 1.0), (225, 2.0), (30, 0.1), (100, 0.5)):
        for fig, ax in figure_layouts(steepest.draw_steepest_2d, (9.0, 4.2), angle=angle, step=step):
            _no_panel_overlaps(fig, ax)
            plane, curve = ax.child_axes
            for legend in (plane.get_legend(), curve.get_legend()):
                box = legend.get_window_extent()
                assert not box.overlaps(plane.get_window_extent())
                assert not box.overlaps(curve.get_window_extent())
            labels = [t.get_text() for t in curve.get_legend().get_texts()]
            assert labels[0] == "sign step, projected" and len(labels) == 3   # both reference lines


def test_explore_leaves_no_figure_for_a_later_plt_show():
    """The widget's figure is not among pyplot's open figures, which a later cell's plt.show()
    prints: before the fix, lesson 9's MNIST cell also printed the plane widget's figure."""
    widgets = pytest.importorskip("ipywidgets")
    from lipcore.lessons.show import explore
    before = set(plt.get_fignums())
    box = explore(steepest.draw_steepest_2d, figsize=(9.0, 4.2),
                  angle=widgets.IntSlider(value=30, min=0, max=360, step=5),
                  step=widgets.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.1))
    assert set(plt.get_fignums()) == before
    angle, step, busy = box.children[0].children
    angle.value = 60                                             # still redraws on a change
    assert busy.value.startswith("drawn in") and set(plt.get_fignums()) == before


@needs_mnist
def test_the_mnist_figure_shows_every_measured_accuracy_and_no_curve_under_its_legend(figure_layouts):
    for step in steepest.STEPS:
        sweep = steepest.attack_sweep(step)
        for fig, ax in figure_layouts(steepest.draw_attacks_against_eps, (10.0, 4.4), eps=2.0,
                                step=step):
            _no_panel_overlaps(fig, ax)
            left, right = ax.child_axes
            assert left.get_xlim()[1] > max(steepest.EPS_GRID)  # the value at eps 3 is visible
            assert right.get_legend() is None                      # one legend, on the left
            labels = [t.get_text() for t in left.get_legend().get_texts()]
            assert labels == list(steepest.ATTACKS)
            box = left.get_legend().get_window_extent()
            grid = np.linspace(0.0, max(steepest.EPS_GRID), 121)
            for name in steepest.ATTACKS:
                measured = [(e, steepest.accuracy(sweep[name], e))
                            for e in (0.0, *steepest.EPS_GRID)]
                assert any(line.get_xydata().shape == (len(measured), 2) and
                           np.allclose(line.get_xydata(), measured) for line in left.lines), name
                drawn = np.column_stack([grid, [steepest.accuracy(sweep[name], e) for e in grid]])
                assert not _inside(box, left.transData.transform(drawn)).any(), (step, name)
                assert not _inside(box, left.transData.transform(measured)).any(), (step, name)
