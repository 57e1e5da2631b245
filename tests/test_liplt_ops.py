"""LipLT on conv and dense operators: adjoints are adjoints, power iteration agrees with the norm
of the materialised matrix, the sound bounds sit above it and above the empirical lower bound
and below the naive bound, dense chains reproduce the dense LipLT, and the CRM and GloRo losses
do what they promise."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import TensorDataset

from lipcore.attacks import robust_accuracy
from lipcore.certify import certified_radii, margin_radii
from lipcore.estimators import empirical_lower_bound, liplt
from lipcore.estimators import liplt_ops as lo
from lipcore.estimators import liplt_sound as ls
from lipcore.models import crm_net
from lipcore.trainers.crm import (CRMConfig, crm_term, crm_train, gloro_logits, learning_rate,
                                  soft_radius)


def small_conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 4, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5))


def materialised_norm(ops):
    """||ops[-1] ... ops[0]||_2 of the product written down as a matrix (the reference)."""
    ops = [op.detached_double() for op in ops]
    n = ops[0].in_dim
    x = torch.eye(n, dtype=torch.float64).reshape(n, *ops[0].in_shape)
    for op in ops:
        x = op.apply(x)
    return float(torch.linalg.matrix_norm(x.flatten(1), ord=2))


def test_each_operator_adjoint_is_its_transpose():
    chain = lo.operator_chain(small_conv(), (1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    for op in chain.ops:
        x = torch.randn(3, *op.in_shape, generator=gen, dtype=torch.float64)
        y = torch.randn(3, *op.out_shape, generator=gen, dtype=torch.float64)
        d = op.detached_double()
        assert (d.apply(x).flatten(1) * y.flatten(1)).sum() == pytest.approx(
            (x.flatten(1) * d.adjoint(y).flatten(1)).sum().item(), rel=1e-10)


def test_power_iteration_agrees_with_the_exact_norm_and_the_sound_bound_is_above_it():
    chain = lo.operator_chain(small_conv(), (1, 8, 8))
    estimate = lo.PowerIteration(chain).norms(chain, 200)
    exact = ls.sound_norms(chain, gram_limit=10**6)          # exact (tests/test_product_norms.py)
    split = ls.sound_norms(chain, gram_limit=20)             # splits and DFT bounds where wide
    for p in lo.hidden_pairs(chain):
        true = materialised_norm(chain.ops[p[1]:p[0] + 1])
        assert float(estimate[p].detach()) == pytest.approx(true, rel=1e-4)
        assert float(estimate[p].detach()) <= true * (1 + 1e-6)
        assert split[p] >= true and true <= exact[p] <= true * (1 + 1e-7)
    with pytest.raises(ValueError, match="iterations"):
        lo.PowerIteration(chain).norms(chain, -1)


def test_all_products_cost_as_many_operator_calls_as_the_naive_bound(monkeypatch):
    """The paper's O(L) claim: the O(L^2) products travel batched, so one power-iteration step
    calls each hidden operator once forward and once adjoint, like the naive bound's L norms."""
    chain = lo.operator_chain(crm_net("4C3F", 0), (1, 28, 28))
    calls = []
    for name in ("apply", "adjoint"):
        counted = lambda op, x, call=getattr(lo.LinearOp, name): calls.append(1) or call(op, x)
        monkeypatch.setattr(lo.LinearOp, name, counted)
    liplt_power = lo.PowerIteration(chain)
    naive_power = lo.PowerIteration(chain, pairs=[(k, k) for k in range(chain.depth)])
    assert len(liplt_power.vectors) == chain.depth * (chain.depth + 1) // 2 == 21
    counts = []
    for power in (liplt_power, naive_power):
        calls.clear()
        power.norms(chain, 3)
        counts.append(len(calls))
    assert counts == [(2 * 3 + 1) * chain.depth] * 2


class KernelCount(TorchDispatchMode):
    """Counts the ATen operations that compute (views, splits and detaches launch no kernel)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not (func.is_view or "split" in str(func) or "detach" in str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch, shape, iterations", [("4C3F", (1, 28, 28), 10),
                                                     ("6C2F", (3, 32, 32), 5)])
def test_a_liplt_training_step_launches_at_most_1_4x_the_naive_steps_kernels(arch, shape,
                                                                             iterations):
    """On a GPU, batches this small leave the device idle, so a step's time follows its kernel
    launches: the pairwise bound's extra work must stay a few batched operations."""
    chain = lo.operator_chain(crm_net(arch, 0), shape)
    liplt_power = lo.PowerIteration(chain)
    naive_power = lo.PowerIteration(chain, pairs=[(k, k) for k in range(chain.depth)])
    steps = [lambda: lo.liplt_bounds(chain, liplt_power.norms(chain, iterations), False).pairwise,
             lambda: lo.naive_pairwise_estimate(chain, naive_power, iterations)]
    counts = []
    for step in steps:
        with KernelCount() as kernels:
            step().sum().backward()
        counts.append(kernels.count)
    assert counts[0] <= 1.4 * counts[1]


def test_warm_started_vectors_survive_a_round_trip_through_their_dict():
    chain = lo.operator_chain(small_conv(), (1, 8, 8))
    trained = lo.PowerIteration(chain)
    trained.norms(chain, 50)
    restored = lo.PowerIteration(chain, seed=1)
    restored.vectors = {p: v.clone() for p, v in trained.vectors.items()}
    again, before = restored.norms(chain, 0), trained.norms(chain, 0)
    assert all(torch.equal(again[p], before[p]) for p in lo.hidden_pairs(chain))
def test_the_conv_lipschitz_bounds_are_ordered_and_above_the_empirical_lower_bound():
    net = small_conv(1)
    chain = lo.operator_chain(net, (1, 8, 8))
    sound = lo.liplt_bounds(chain, ls.sound_norms(chain, gram_limit=20), sound=True)
    naive_L, naive_pairs, _ = ls.naive_pairwise_ops(chain)
    assert sound.sound and float(sound.L) <= naive_L
    assert (sound.pairwise <= naive_pairs + 1e-9).all()
    lower = empirical_lower_bound(nn.Sequential(nn.Unflatten(1, (1, 8, 8)), net), 64, seed=0).value
    assert lower <= float(sound.L)
    off = ~torch.eye(5, dtype=torch.bool)
    assert (sound.pairwise[off] <= math.sqrt(2) * sound.L + 1e-9).all()
    both = sound.per_class[:, None] + sound.per_class[None]
    assert (sound.pairwise[off] <= both[off] + 1e-9).all()
    x = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = net(x)
    gaps = (z[:, :, None] - z[:, None, :])                 # z_i - z_j per sample
    dz = (gaps[:200] - gaps[200:]).abs()
    dx = (x[:200] - x[200:]).flatten(1).norm(dim=1)[:, None, None]
    assert (dz / dx <= sound.pairwise.float() + 1e-5).all()     # sampled pairwise quotients


def test_a_dense_chain_reproduces_the_dense_liplt():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3))
    chain = lo.operator_chain(net, (6,))
    dense = liplt([net[0].weight, net[2].weight, net[4].weight])
    ops = lo.liplt_bounds(chain, ls.sound_norms(chain), sound=True)
    assert float(ops.L) == pytest.approx(float(dense.L.detach()), rel=1e-6)
    assert torch.allclose(ops.pairwise.float(), dense.pairwise, rtol=1e-5, atol=1e-7)


def test_unsupported_nets_and_architectures_give_clear_errors():
    with pytest.raises(ValueError, match="activation"):
        lo.operator_chain(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (4,))
    with pytest.raises(ValueError, match="handles"):
        lo.operator_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2),
                                        nn.Flatten(), nn.Linear(8, 2)), (1, 6, 6))
    with pytest.raises(ValueError, match="unknown architecture"):
        crm_net("5C5F")


def test_the_crm_architectures_match_the_official_code():
    widths = {"4C3F": 3136, "6C2F": 1024, "6C2F-LocalLip": 4096, "8C2F": 9216}
    for name, flat in widths.items():
        linears = [m for m in crm_net(name) if isinstance(m, nn.Linear)]
        assert linears[0].in_features == flat
    assert sum(p.numel() for p in crm_net("4C3F").parameters()) == 1_974_762


def test_the_soft_radius_is_below_the_hard_minimum_and_the_crm_term_stops_at_R0():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=gen) * 3
    labels = logits.argmax(1)
    pairwise = torch.rand(4, 4, generator=gen) + 0.5
    r = margin_radii(logits, labels, pairwise)
    assert (soft_radius(logits, labels, pairwise, 5.0) <= r.min(1).values + 1e-6).all()
    assert crm_term(logits, labels, pairwise, 5.0, R0=1e-6) == 0.0          # all radii above R0
    assert crm_term(logits, labels, pairwise, 5.0, R0=1e6) < 0.0
    wrong = (labels + 1) % 4
    assert crm_term(logits, wrong, pairwise, 5.0, R0=1e6) == 0.0            # misclassified: off


def test_gloro_certifies_where_its_bottom_logit_loses():
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.9, 0.0]])
    pairwise = torch.ones(3, 3) - torch.eye(3)
    augmented = gloro_logits(logits, pairwise, eps=1.0)
    assert augmented.argmax(1).tolist() == [0, 3]         # margin 2 > eps * K; margin 0.1 is not
    assert augmented[0, 3] == pytest.approx(2.0)


def test_learning_rate_decays_exponentially_to_the_smallest_value():
    cfg = CRMConfig(epochs=11, decay_epoch=5, lr=1e-3, smallest_lr=1e-6)
    assert learning_rate(cfg, 4) == 1e-3 and learning_rate(cfg, 10) == pytest.approx(1e-6)
    assert learning_rate(cfg, 7) < learning_rate(cfg, 6) < 1e-3
    with pytest.raises(ValueError, match="loss"):
        CRMConfig(loss="trades")


def test_crm_training_raises_the_sound_certified_radius_over_standard_training():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(512, 1, 8, 8, generator=gen)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() * 2
    data = TensorDataset(x, y)
    mean_radius = {}
    for loss in ("standard", "crm"):
        net = small_conv(0)
        cfg = CRMConfig(loss=loss, epochs=15, batch_size=64, lr=3e-3, decay_epoch=15,
                        robust_start=3, R0=0.5, lam=3.0, power_iterations=3)
        out = crm_train(net, data, cfg)
        chain = lo.operator_chain(net, (1, 8, 8))
        sound = lo.liplt_bounds(chain, ls.sound_norms(chain), sound=True)
        estimate = lo.liplt_bounds(chain, out["power"].norms(chain, 0), sound=False)
        assert (estimate.pairwise.detach() <= sound.pairwise.float() * (1 + 1e-4) + 1e-7).all()
        radius = certified_radii(net, data, sound.pairwise)
        mean_radius[loss] = float(radius.mean())
        attacked = robust_accuracy(net, TensorDataset(x[:128], y[:128]), eps=0.3, iterations=20)
        assert attacked.robust[radius[:128] > 0.3].all()          # no certified point is broken
    assert mean_radius["crm"] > 1.2 * mean_radius["standard"]
    with pytest.raises(ValueError, match="do not fit"):
        crm_train(small_conv(0), TensorDataset(torch.rand(8, 1, 10, 10), torch.zeros(8).long()),
                  CRMConfig(epochs=1))
    with pytest.raises(ValueError, match="eps"):
        CRMConfig(eps=0.0)


def test_certify_uses_the_sound_operator_liplt_for_conv_nets():
    from lipcore.certify import lipschitz_bound
    net = small_conv(2)
    bound = lipschitz_bound(net, "liplt", (1, 8, 8))
    chain = lo.operator_chain(net, (1, 8, 8))
    assert bound.value == pytest.approx(float(lo.liplt_bounds(chain, ls.sound_norms(chain), True).L))
    assert bound.value <= lipschitz_bound(net, "naive", (1, 8, 8)).value
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_bound(net, "liplt")


def test_the_crm_pgd_protocol_stays_on_its_sphere_inside_the_box():
    from lipcore.attacks import pgd_l2
    net = small_conv(3)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    adv = pgd_l2(net, x, y, eps=0.5, step=0.001, iterations=10, variant="crm")
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(ValueError, match="variant"):
        pgd_l2(net, x, y, variant="fgsm")


def test_the_sound_over_estimate_table_reads_the_mean_the_worst_pair_and_the_global_bound():
    from lipcore.experiments.crm_liplt import Bounds, sound_vs_estimate
    chain = lo.operator_chain(small_conv(4), (1, 8, 8))
    sound = lo.liplt_bounds(chain, ls.sound_norms(chain), sound=True)
    with torch.no_grad():
        estimate = lo.liplt_bounds(chain, lo.PowerIteration(chain).norms(chain, 3), sound=False)
    b = Bounds(sound, estimate, *ls.naive_pairwise_ops(chain), dict(sound=1.5))
    [row] = sound_vs_estimate({("toy", "CRM"): b})
    off = ~torch.eye(5, dtype=torch.bool)
    assert row["worst_L_ij_ratio"] == pytest.approx(float(
        (sound.pairwise[off] / estimate.pairwise[off].double()).max()))
    assert 1.0 <= row["sound_over_estimate"] <= row["worst_L_ij_ratio"]   # 3 steps: from below
    assert row["global_L_ratio"] == pytest.approx(float(sound.L / estimate.L))
    assert (row["setting"], row["method"], row["sound_seconds"]) == ("toy", "CRM", 1.5)
