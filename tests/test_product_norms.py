"""Sound norms of operator products (issue 19): the probed Gram matrix of a conv product is its
Gram matrix, the sweeps give every product's exact norm wherever its narrowest point fits the
limit and an upper bound everywhere else, and a spent time budget falls back to splits soundly."""
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lipcore.estimators import liplt_ops as lo
from lipcore.estimators import liplt_sound as ls
from lipcore.estimators.product_norms import banded_gram, lambda_max_bound, sweep_norms
from lipcore.models import crm_net


def dense_matrix(ops):
    """The product ops[-1] ... ops[0] written down, column by column (the reference)."""
    n = ops[0].in_dim
    x = torch.eye(n, dtype=torch.float64).reshape(n, *ops[0].in_shape)
    for op in ops:
        x = op.apply(x)
    return x.flatten(1).T


def exact_norm(ops):
    return float(torch.linalg.matrix_norm(dense_matrix(ops), ord=2))


def conv_net(seed, convs, size, classes=3):
    """ReLU net of the given (c_in, c_out, (kh, kw), (sh, sw), (ph, pw)) convs, two dense layers."""
    torch.manual_seed(seed)
    layers = []
    for c_in, c_out, k, s, p in convs:
        layers += [nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU()]
    layers.append(nn.Flatten())
    with torch.no_grad():
        flat = nn.Sequential(*layers)(torch.zeros(1, convs[0][0], *size)).numel()
    return nn.Sequential(*layers, nn.Linear(flat, 6), nn.ReLU(), nn.Linear(6, classes))


conv_spec = st.tuples(st.integers(1, 3), st.sampled_from([(1, 1), (2, 2), (3, 2), (4, 4)]),
                      st.sampled_from([(1, 1), (2, 2), (1, 2)]), st.integers(0, 2))


@settings(max_examples=25, deadline=None)
@given(specs=st.lists(conv_spec, min_size=1, max_size=3), size=st.tuples(st.integers(7, 12),
       st.integers(7, 12)), seed=st.integers(0, 10**6))
def test_the_probed_gram_matrix_of_a_conv_product_is_its_gram_matrix(specs, size, seed):
    convs, channels, hw = [], 2, size
    for c_out, k, s, p in specs:
        pad = (min(p, k[0] - 1), min(p, k[1] - 1))
        hw = tuple((hw[i] + 2 * pad[i] - k[i]) // s[i] + 1 for i in range(2))
        assume(min(hw) >= 1)
        convs.append((channels, c_out, k, s, pad))
        channels = c_out
    chain = lo.operator_chain(conv_net(seed, convs, size), (2, *size))
    for ops in ([op.detached_double() for op in chain.ops[:len(convs)]],
                [op.detached_double() for op in chain.ops[:len(convs) + 1]]):   # dense: one pass
        A = dense_matrix(ops)
        for side, reference in (("out", A @ A.T), ("in", A.T @ A)):
            assert torch.allclose(banded_gram(ops, side), reference, rtol=0, atol=1e-12)


def test_every_product_is_exact_when_its_narrowest_point_fits_and_bounded_above_otherwise():
    convs = [(1, 4, (3, 3), (1, 1), (1, 1)), (4, 4, (4, 4), (2, 2), (1, 1)),
             (4, 3, (3, 3), (2, 2), (0, 0))]
    chain = lo.operator_chain(conv_net(0, convs, (15, 13)), (1, 15, 13))
    ops = [op.detached_double() for op in chain.ops]
    exact = {p: exact_norm(ops[p[1]:p[0] + 1]) for p in lo.hidden_pairs(chain)}
    alone = {(0, 0)}                  # 195 -> 780 -> 168: the sweep starts at the narrow side
    for gram_limit in (10**6, 30, 8):
        bound = ls.sound_norms(chain, gram_limit=gram_limit)
        for (K, s), value in bound.items():
            narrowest = min(op.in_dim for op in ops[s:K + 2])
            assert value >= exact[(K, s)] * (1 - 1e-12)
            if narrowest <= gram_limit and (K, s) not in alone:   # 195, 780, 168, 27, 6
                assert value == pytest.approx(exact[(K, s)], rel=1e-6)
    assert ls.sound_norms(chain, gram_limit=8)[(1, 0)] > 1.5 * exact[(1, 0)]   # a split


def test_a_sweep_applies_each_operator_once_for_all_its_ends(monkeypatch):
    chain = lo.operator_chain(conv_net(1, [(1, 3, (3, 3), (1, 1), (1, 1)),
                                           (3, 6, (4, 4), (2, 2), (1, 1))], (8, 8)), (1, 8, 8))
    ops = [op.detached_double() for op in chain.ops]          # 64 -> 192 -> 96: no narrowing
    calls = []
    monkeypatch.setattr(lo.LinearOp, "apply", lambda op, x, call=lo.LinearOp.apply:
                        calls.append(op.out_shape) or call(op, x))
    norms, cut = sweep_norms(ops, gram_limit=10**6)
    passes = list(calls)
    assert not cut and sorted(norms) == [0, 1, 2, 3]
    for K, value in norms.items():
        assert value == pytest.approx(exact_norm(ops[:K + 1]), rel=1e-6)
    assert [passes.count(op.out_shape) for op in ops[1:]] == [1, 1, 1]   # rows, in one batch


def test_a_start_that_widens_then_narrows_begins_at_the_narrow_side():
    """W_1 W_0 with W_0 widening 100 -> 400 and W_1 narrowing to 25 < 100: the first Gram matrix
    is taken on W_1's 36 outputs, so no row crosses the wide layer; ||W_0|| alone is left to the
    caller (sound_norms: its DFT bound), every longer product is still exact."""
    chain = lo.operator_chain(conv_net(3, [(1, 4, (3, 3), (1, 1), (1, 1)),
                                           (4, 1, (4, 4), (2, 2), (1, 1))], (10, 10)), (1, 10, 10))
    ops = [op.detached_double() for op in chain.ops]
    assert [(op.in_dim, op.out_dim) for op in ops[:2]] == [(100, 400), (400, 25)]
    norms, cut = sweep_norms(ops, gram_limit=10**6)
    assert not cut and 0 not in norms and sorted(norms) == list(range(1, len(ops)))
    for K, value in norms.items():
        assert value == pytest.approx(exact_norm(ops[:K + 1]), rel=1e-6)
    bound = ls.sound_norms(chain)
    assert bound[(0, 0)] >= exact_norm(ops[:1]) * (1 - 1e-12)


def test_a_spent_time_budget_falls_back_to_splits_soundly_and_says_so():
    chain = lo.operator_chain(conv_net(2, [(1, 4, (3, 3), (1, 1), (1, 1)),
                                           (4, 4, (4, 4), (2, 2), (1, 1))], (10, 10)), (1, 10, 10))
    tight = ls.sound_norms(chain)
    with pytest.warns(UserWarning, match="time budget"):
        rushed = ls.sound_norms(chain, time_budget_s=0.0)
    assert all(rushed[p] >= tight[p] * (1 - 1e-12) for p in tight)
    assert any(rushed[p] > tight[p] * 1.01 for p in tight)
    assert ls.sound_norms(chain, time_budget_s=600.0) == tight


def test_a_deadline_stops_a_sweep_before_the_next_batch_of_rows_even_inside_a_step(monkeypatch):
    """The clock is read before every batch of rows (BATCH is 4 here) and every factorisation,
    so none starts once the deadline has passed, wherever the sweep is; what it proved before is
    kept, exact."""
    from types import SimpleNamespace

    import lipcore.estimators.product_norms as pn
    chain = lo.operator_chain(conv_net(1, [(1, 3, (3, 3), (1, 1), (1, 1)),
                                           (3, 6, (4, 4), (2, 2), (1, 1))], (8, 8)), (1, 8, 8))
    ops = [op.detached_double() for op in chain.ops]
    monkeypatch.setattr(pn, "BATCH", 4)
    clock = SimpleNamespace(now=0, deadline=float("inf"), late_calls=0)

    def monotonic():
        clock.now += 1
        return clock.now
    monkeypatch.setattr(pn, "time", SimpleNamespace(monotonic=monotonic))
    def counted(call):
        def wrapper(*args):
            clock.late_calls += clock.now >= clock.deadline
            return call(*args)
        return wrapper
    for method in ("apply", "adjoint"):
        monkeypatch.setattr(lo.LinearOp, method, counted(getattr(lo.LinearOp, method)))
    for name in ("lambda_max_bound", "_compressed"):
        monkeypatch.setattr(pn, name, counted(getattr(pn, name)))
    full, cut = pn.sweep_norms(ops, gram_limit=10**6)
    reads = clock.now
    assert not cut and reads > 20
    for deadline in (2, reads // 3, reads // 2, reads - 1):
        clock.now, clock.deadline = 0, deadline
        norms, cut = pn.sweep_norms(ops, gram_limit=10**6, deadline=deadline)
        assert cut and clock.late_calls == 0 and clock.now == deadline
        assert set(norms) < set(full) and all(norms[K] == full[K] for K in norms)


def test_sweeps_run_cheapest_first_so_a_budget_cuts_the_dearest():
    chain = lo.operator_chain(crm_net("6C2F", 0), (3, 32, 32))
    order = ls.sweep_order(chain, 6)
    assert order == [6, 5, 0, 4, 3, 2, 1]        # the input's 3,072 rows before 8,192-row sweeps
    first_gram = [min(chain.ops[s].in_dim, chain.ops[s].out_dim) for s in order]
    assert first_gram == sorted(first_gram)


def test_the_cholesky_proved_top_eigenvalue_is_tight_and_never_below_eigvalsh():
    gen = torch.Generator().manual_seed(0)
    for n in (10, 300):
        X = torch.randn(n, n // 2, generator=gen, dtype=torch.float64)
        M = X @ X.T                                             # PSD and singular
        exact = float(torch.linalg.eigvalsh(M)[-1])
        assert exact <= lambda_max_bound(M) <= exact * (1 + 1e-5)
    assert lambda_max_bound(torch.zeros(100, 100, dtype=torch.float64)) == 0.0



def worst_rounding(G, terms):
    """G minus the largest error a Gram matrix of ``terms``-term dot products may carry
    (gamma_terms trace G), all of it along the top eigenvector: a computed G at its worst."""
    from lipcore.estimators.product_norms import UNIT
    gamma = terms * UNIT / (1 - terms * UNIT)
    v = torch.linalg.eigh(G).eigenvectors[:, -1:]
    error = gamma * float(torch.diagonal(G).sum())
    return G - error * (v @ v.T), error


def test_a_compression_covers_the_worst_rounding_of_its_gram_matrix():
    """Z^T Z >= the exact Gram matrix when the computed one is as far below it as the theorem
    allows; checked in extended precision (numpy's longdouble). The old fixed tau (1e-12 of the
    largest diagonal entry) is far smaller than that error here."""
    import numpy as np

    from lipcore.estimators import product_norms as pn
    torch.manual_seed(0)
    rows = 4000
    G = pn.row_gram(torch.randn(rows, 100, dtype=torch.float64), "columns")
    computed, error = worst_rounding(G, rows)
    assert error > 10 * 1e-12 * float(G.diagonal().max())
    Z = pn._compressed(computed, rows).numpy().astype(np.longdouble)
    gap = (Z.T @ Z - G.numpy().astype(np.longdouble)).astype(np.float64)
    assert np.linalg.eigvalsh(gap)[0] >= 0.0


@pytest.mark.parametrize("cols", [50, 100])      # eigvalsh (margin 1e-12) and Lanczos (1e-6)
def test_a_gram_norm_covers_the_worst_rounding_of_its_gram_matrix(cols):
    from lipcore.estimators import product_norms as pn
    torch.manual_seed(cols)
    rows = 20000
    G = pn.row_gram(torch.randn(rows, cols, dtype=torch.float64), "columns")
    top = float(torch.linalg.eigvalsh(G)[-1])
    computed, error = worst_rounding(G, rows)
    assert error > 10 * 1e-12 * top                       # more than the eigvalsh margin
    assert pn.gram_norm(computed, rows) ** 2 >= top


def test_without_a_proved_margin_the_eigenvalue_bound_is_the_trace(monkeypatch):
    from types import SimpleNamespace

    from lipcore.estimators import product_norms as pn
    torch.manual_seed(1)
    M = pn.row_gram(torch.randn(300, 80, dtype=torch.float64), "columns")
    failed = lambda A: SimpleNamespace(info=torch.tensor(1))   # noqa: E731
    monkeypatch.setattr(pn.torch.linalg, "cholesky_ex", failed)
    bound = pn.lambda_max_bound(M)
    assert bound >= float(M.diagonal().sum()) >= float(torch.linalg.eigvalsh(M)[-1])
