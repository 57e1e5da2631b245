"""Lesson 8 (what LipSDP is): the map is lipcore's own LMI, every certified L is sound, a feasible
(L, T) is a negative semidefinite matrix and proves the bound on the net's own pairs, the least
feasible L over T is lipcore's LipSDP bound, each theorem and observation the lesson states holds
on the numbers it draws, and moving T or L changes what is drawn. The notebook runs under nbval
(notebooks/lessons/)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from lipcore.certify import lipschitz_bound  # noqa: E402
from lipcore.estimators import empirical_lower_bound, lipsdp, lmi_matrix, lmi_max_eig  # noqa: E402
from lipcore.estimators.lipsdp import exact_L2  # noqa: E402
from lipcore.lessons import lmi  # noqa: E402
from lipcore.models import from_weights  # noqa: E402

W = list(lmi.WEIGHTS)
TOL = lmi.FEASIBLE_TOL
# the static figure's settings (the notebook draws these)
ROWS = [dict(t1=5.0, t2=5.0, L=3.2), dict(t1=5.0, t2=5.0, L=2.2),
        dict(t1=4.0, t2=2.0, L=2.05), dict(t1=1.5, t2=6.0, L=1.0)]


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def P(L, t1, t2):
    return lmi_matrix(W, np.diag([t1, t2]), L * L, lmi.ALPHA, lmi.BETA)


def hidden_ok_closed_form(t1, t2):
    """Question 2: some L certifies diag(t1, t2) iff t1, t2 > 0 and 2/t1 + 1/(2 t2) < 1."""
    return t1 > 0 and t2 > 0 and 2 / t1 + 1 / (2 * t2) < 1


# ------------------------------------------------------------------ the map is lipcore's LMI

def test_the_map_is_lipcores_lmi_point_by_point():
    rng = np.random.default_rng(0)
    for L in (1.0, 2.05, 3.2):
        grid = lmi.eig_map(L)
        for i, j in rng.integers(0, len(lmi.T_GRID), size=(25, 2)):
            t1, t2 = lmi.T_GRID[j], lmi.T_GRID[i]                    # rows t2, columns t1
            assert math.isclose(grid[i, j], lmi_max_eig(W, np.diag([t1, t2]), L * L),
                                abs_tol=1e-10)
    # the LMI the lesson writes out for this net, entry by entry
    t1, t2, L = 3.0, 0.7, 1.3
    assert np.allclose(P(L, t1, t2), [[-L * L, t1, t2], [t1, 4 - 2 * t1, -2], [t2, -2, 1 - 2 * t2]])


def test_the_dotted_curve_is_the_closed_form_of_question_2():
    hidden = lmi.hidden_block_map()
    t1, t2 = np.meshgrid(lmi.T_GRID, lmi.T_GRID)
    with np.errstate(divide="ignore"):
        margin = 1 - 2 / t1 - 1 / (2 * t2)                           # > 0: some L works
    clear = np.abs(margin) > 1e-6
    assert np.array_equal((hidden < 0)[clear], (margin > 0)[clear])
    # the side where no L works is left of the curve and below it (the legend and text say both)
    assert lmi.least_certified_L(1.5, 9.0) == math.inf               # left: t1 < 2
    assert lmi.least_certified_L(9.0, 0.4) == math.inf               # below: t2 < 1/2
    assert math.isfinite(lmi.least_certified_L(9.0, 0.7))
    for a in (2.5, 3.0, 4.0, 8.0):                                   # on the curve: no L at all
        b = 1 / (2 * (1 - 2 / a))
        for L in (1.0, 10.0, 100.0):                                 # question 2's witness
            s = 1 / (2 * L * L)
            z = np.array([s, 1 / a, -1 / (2 * b)])
            assert z @ P(L, a, b) @ z == pytest.approx(s - L * L * s * s, rel=1e-6)
            assert s - L * L * s * s > 0
            assert lmi_max_eig(W, np.diag([a, b]), L * L) > TOL


# ------------------------------------------------------------------ soundness

def test_every_certified_L_is_at_least_the_true_constant(ax):
    true = lmi.true_constant()
    assert true == 1.0
    assert [p["slope"] for p in lmi.pieces()] == [0.0, -1.0, 1.0]
    assert [p["pattern"] for p in lmi.pieces()] == [(0, 0), (0, 1), (1, 1)]
    # the true constant checked on the net itself: difference quotients on a dense grid
    x = np.linspace(-3, 3, 6001)
    quotients = np.abs(np.diff(lmi.net_value(x)) / np.diff(x))
    assert quotients.max() <= true + 1e-9 and quotients.max() > true - 1e-9
    net = from_weights(W, [lmi.B0, lmi.B1], "relu")
    lower = empirical_lower_bound(net, 1, n_random=64, n_ascent=2, steps=10).value
    assert 0.99 <= lower <= true + 1e-9
    # every T of the map (coarsely), and every L any grid point certifies
    for t1 in lmi.T_GRID[::8]:
        for t2 in lmi.T_GRID[::8]:
            assert lmi.least_certified_L(t1, t2) >= lmi.lipsdp_optimum().bound - 1e-9 >= true
    for L in (0.5, 1.0, 1.5, 1.99, 2.0, 2.01, 2.5, 3.2, 4.0):
        feasible = lmi.eig_map(L) <= TOL
        if feasible.any():
            assert L >= 2.0 - 1e-12 and L >= true
    # lipcore's other routes to the same net agree: naive and LipSDP read off the torch net
    naive = lipschitz_bound(net, "naive").value                     # rounded up: sound in float
    assert math.sqrt(10) <= naive <= math.sqrt(10) * (1 + 1e-7)
    assert lipschitz_bound(net, "lipsdp").value >= true


def test_a_feasible_point_is_a_nsd_matrix_and_proves_the_bound_on_the_nets_pairs(ax):
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 2, 400), rng.normal(0, 2, 400)
    dv = np.outer(x - y, lmi.W0[:, 0])                              # biases cancel
    relu = lambda v: np.maximum(v, 0.0)                             # noqa: E731
    v_x, v_y = np.outer(x, lmi.W0[:, 0]) + lmi.B0, np.outer(y, lmi.W0[:, 0]) + lmi.B0
    dphi = relu(v_x) - relu(v_y)
    df = lmi.net_value(x) - lmi.net_value(y)
    for setting in ROWS + [dict(t1=4.0, t2=2.0, L=2.0), dict(t1=7.1, t2=3.3, L=2.55)]:
        shown = lmi.draw_lmi_feasibility(ax, **setting)
        t, L = np.array(shown["t"]), shown["L"]
        M = P(L, *t)
        assert shown["feasible"] == (np.linalg.eigvalsh(M)[-1] <= TOL)
        # the proof's identity: z^T P z = -L^2 |dx|^2 + |df|^2 + q_T, with q_T >= 0 (Step 1)
        z = np.column_stack([x - y, dphi])
        q = np.sum(2 * t * dphi * (dv - dphi), axis=1)               # alpha = 0, beta = 1
        assert (q >= -1e-12).all()
        assert np.allclose(np.einsum("ni,ij,nj->n", z, M, z), -L * L * (x - y) ** 2 + df ** 2 + q)
        if shown["feasible"]:
            assert (np.einsum("ni,ij,nj->n", z, M, z) <= 1e-9 * (1 + z[:, 0] ** 2)).all()
            assert (np.abs(df) <= L * np.abs(x - y) + 1e-9).all()
            assert L >= shown["least_L"] - 1e-9
        else:
            assert L < shown["least_L"] + 1e-9
    # every point the map calls feasible is NSD in lipcore's own check
    grid = lmi.eig_map(2.2)
    for i, j in np.argwhere(grid <= TOL)[::37]:
        assert lmi_max_eig(W, np.diag([lmi.T_GRID[j], lmi.T_GRID[i]]), 2.2 ** 2) <= TOL


# ------------------------------------------------------------------ LipSDP is the least feasible L

def test_the_least_feasible_L_over_T_is_lipcores_lipsdp_bound():
    best = lmi.lipsdp_optimum()
    assert best.sound and best.coupling == "neuron"
    res = min((minimize(lambda lt: min(lmi.least_certified_L(*np.exp(lt)), 1e3), x0,
                        method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-12, maxiter=4000))
               for x0 in ([0.0, 0.0], [2.0, 2.0], [1.0, -1.0])), key=lambda r: r.fun)
    assert abs(res.fun - best.bound) < 1e-6
    assert np.allclose(np.exp(res.x), [4.0, 2.0], atol=1e-3)
    # the lesson's observation: the solver finds L = 2 at diag(4, 2) within 1e-9
    assert abs(best.bound - 2.0) < 1e-9 and np.allclose(best.t, [4.0, 2.0], atol=1e-9)
    assert lmi.least_certified_L(4.0, 2.0) == pytest.approx(2.0, abs=1e-12)
    # an interior-point solve of the SDP (6) agrees
    clarabel = lipsdp(W, 0.0, 1.0, "neuron", solver="CLARABEL")
    assert abs(clarabel.bound - best.bound) < 1e-6
    # the grid's least L (no point below LipSDP; the nearest to it at diag(4, 2))
    least = np.array([[lmi.least_certified_L(a, b) for a in lmi.T_GRID[::10]]
                      for b in lmi.T_GRID[::10]])
    assert least.min() == pytest.approx(2.0, abs=1e-12)
    i, j = np.unravel_index(least.argmin(), least.shape)
    assert (lmi.T_GRID[::10][j], lmi.T_GRID[::10][i]) == (4.0, 2.0)


# ------------------------------------------------------------------ the theorems the lesson states

def test_larger_L_is_easier_and_the_feasible_region_is_convex():
    shares = []
    previous = None
    for L in (1.0, 2.0, 2.05, 2.2, 2.5, 3.2, 4.0):
        feasible = lmi.eig_map(L) <= TOL
        if previous is not None:
            assert (feasible | ~previous).all()                        # theorem 1: it only grows
        previous = feasible
        shares.append(feasible.mean())
        # theorem 2: midpoints of feasible pairs are feasible (checked on lipcore's matrix)
        rng = np.random.default_rng(int(10 * L))
        points = np.argwhere(feasible)
        if len(points) > 1:
            for a, b in rng.integers(0, len(points), size=(40, 2)):
                (i1, j1), (i2, j2) = points[a], points[b]
                t1 = (lmi.T_GRID[j1] + lmi.T_GRID[j2]) / 2
                t2 = (lmi.T_GRID[i1] + lmi.T_GRID[i2]) / 2
                assert lmi_max_eig(W, np.diag([t1, t2]), L * L) <= TOL
    assert shares[0] == 0 and shares[-1] > shares[-2] > shares[3] > shares[2] > 0
    # theorem 3: (L, T) is feasible exactly when L >= L(T), L(T) finite iff the closed form
    for t1 in (0.0, 1.5, 2.5, 4.0, 5.0, 9.0):
        for t2 in (0.0, 0.4, 1.0, 2.0, 6.0):
            least = lmi.least_certified_L(t1, t2)
            assert np.isfinite(least) == hidden_ok_closed_form(t1, t2)
            for L in (0.5, 1.0, 2.0, 2.3, 3.0, 4.0):
                if abs(L - least) > 1e-6:
                    assert (lmi_max_eig(W, np.diag([t1, t2]), L * L) <= TOL) == (L >= least)


def test_the_naive_point_and_the_optimum_of_theorems_4_and_5():
    naive = lmi.naive()
    assert naive == pytest.approx(math.sqrt(10), rel=1e-12)
    assert lmi.naive_point() == pytest.approx((5.0, 5.0))
    assert lmi_max_eig(W, 5.0 * np.eye(2), naive ** 2) <= 0                # certifies naive
    assert lmi.least_certified_L(5.0, 5.0) == pytest.approx(math.sqrt(5.5), rel=1e-12)
    # the same for random one-hidden-layer nets (question 4: a theorem for alpha = 0, beta = 1)
    rng = np.random.default_rng(2)
    for _ in range(20):
        W0, W1 = rng.normal(size=(5, 3)), rng.normal(size=(2, 5))
        t = np.linalg.norm(W1, 2) ** 2
        L2 = (np.linalg.norm(W1, 2) * np.linalg.norm(W0, 2)) ** 2
        assert exact_L2([W0, W1], t * np.eye(5), 0.0, 1.0) <= L2 * (1 + 1e-12)
    # theorem 5: z = (1, 1, 0) gives 4 - L^2 for every T; P(4, diag(4, 2)) = -(2u)(2u)^T - 2 e3 e3^T
    z = np.array([1.0, 1.0, 0.0])
    for t1, t2, L in ((0.3, 7.0, 1.5), (4.0, 2.0, 1.99), (9.0, 9.0, 0.5), (4.0, 2.0, 2.0)):
        assert z @ P(L, t1, t2) @ z == pytest.approx(4 - L * L, abs=1e-12)
    u = np.array([1.0, -1.0, -0.5])
    assert np.allclose(P(2.0, 4.0, 2.0), -4 * np.outer(u, u) - 2 * np.diag([0.0, 0.0, 1.0]))
    assert np.allclose(np.linalg.eigvalsh(P(2.0, 4.0, 2.0)), [-9.2749, -1.7251, 0.0], atol=1e-4)
    t1, t2 = 4.3, 1.8                                                   # P z = (t1-4, 4-t1, t2-2)
    assert np.allclose(P(2.0, t1, t2) @ z, [t1 - 4, 4 - t1, t2 - 2])
    # question 3: the biases (1, 0) make the pattern (1, 0) appear, with slope 2
    other = lmi.pieces([1.0, 0.0])
    assert [p["slope"] for p in other] == [0.0, 2.0, 1.0]
    assert (1, 0) in [p["pattern"] for p in other] and lmi.true_constant([1.0, 0.0]) == 2.0


# ------------------------------------------------------------------ what is drawn

def test_the_static_figure_shows_what_the_text_says(ax):
    rows = [lmi.draw_lmi_feasibility(ax, **s) for s in ROWS]
    # row 1: the naive point is feasible at L = 3.2 > sqrt(10), most of the map is
    assert rows[0]["feasible"] and rows[0]["feasible_share"] > 0.5
    assert rows[0]["least_L"] == pytest.approx(2.345, abs=5e-4)
    # row 2: 5I no longer works, a smaller region around the star does
    assert not rows[1]["feasible"] and 0 < rows[1]["feasible_share"] < rows[0]["feasible_share"]
    star = lmi.eig_map(2.2)[np.searchsorted(lmi.T_GRID, 2.0), np.searchsorted(lmi.T_GRID, 4.0)]
    assert star <= TOL
    # row 3: a small region around the star, whose least L is 2
    assert rows[2]["feasible"] and 0 < rows[2]["feasible_share"] < 0.05
    assert rows[2]["least_L"] == pytest.approx(2.0, abs=1e-9)
    # row 4: nowhere at the true constant; the panel's T certifies no L
    assert rows[3]["feasible_share"] == 0 and not rows[3]["hidden_ok"]
    assert (rows[3]["eig_curve"] > 0).all()
    assert np.all(np.diff(rows[0]["eig_curve"]) <= 1e-12)              # decreasing in L
    for row in rows:
        assert row["true"] == 1.0 and row["lipsdp"] == pytest.approx(2.0, abs=1e-9)
        assert row["true"] <= row["lipsdp"] <= row["naive"]


def test_moving_T_or_L_changes_what_is_drawn(ax):
    a = lmi.draw_lmi_feasibility(ax, 5.0, 5.0, 2.2)
    left, _, right = ax.child_axes
    ring_a = left.lines[-1].get_xydata().copy()
    curve_a = right.lines[1].get_ydata().copy()                       # lines[0]: the zero line
    title_a = ax.get_title()
    b = lmi.draw_lmi_feasibility(ax, 4.0, 2.0, 2.2)                   # T moves
    left, _, right = ax.child_axes
    assert len(ax.child_axes) == 3                                     # a redraw replaces
    assert not np.array_equal(left.lines[-1].get_xydata(), ring_a)
    assert np.allclose(left.lines[-1].get_xydata(), [[4.0, 2.0]])
    assert not np.allclose(right.lines[1].get_ydata(), curve_a)
    assert ax.get_title() != title_a
    assert not a["feasible"] and b["feasible"]                        # the ring turns green
    assert np.array_equal(a["eig_map"], b["eig_map"])                  # the map reads L only
    c = lmi.draw_lmi_feasibility(ax, 4.0, 2.0, 3.0)                   # L moves
    assert not np.array_equal(b["eig_map"], c["eig_map"])
    assert np.array_equal(b["eig_curve"], c["eig_curve"])              # the curve reads T only
    assert c["feasible_share"] > b["feasible_share"]
    with pytest.raises(ValueError, match=">= 0"):
        lmi.draw_lmi_feasibility(ax, -1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="L must lie"):
        lmi.draw_lmi_feasibility(ax, 1.0, 2.0, 5.0)
