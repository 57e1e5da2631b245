"""CLIP (Bungert et al.): the adversarial update never lowers a quotient, the discrepancy
principle moves lambda the right way, and the regulariser is exact on linear models."""
import torch
from torch import nn

from lipcore.models import fully_connected
from lipcore.trainers.clip import (STEP_GROWTH, LipschitzSet, adversarial_update,
                                   discrepancy_update, lipschitz_regulariser, quotients)


def _pairs(n=64, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return LipschitzSet.from_images(torch.rand(n, d, generator=gen), noise=0.1, tau=1.0,
                                    generator=gen)


def test_adversarial_update_never_lowers_a_quotient_and_adapts_step_sizes():
    net = fully_connected([12, 16, 16, 4], "tanh", seed=0)
    pairs = _pairs()
    for _ in range(20):
        before = quotients(net, pairs.u, pairs.v).detach()
        tau = pairs.tau.clone()
        after = adversarial_update(net, pairs)
        assert torch.all(after >= before - 1e-6)
        check = quotients(net, pairs.u, pairs.v).detach()
        assert torch.allclose(check, after, atol=1e-5)          # returned values are current
        accepted = after > before
        assert torch.allclose(pairs.tau[accepted], tau[accepted] * STEP_GROWTH)
        assert torch.allclose(pairs.tau[~accepted], tau[~accepted] / STEP_GROWTH)
    assert quotients(net, pairs.u, pairs.v).max() > before.max() * 0.999


def test_chunked_update_touches_only_its_pairs():
    net = fully_connected([12, 8, 3], "relu", seed=1)
    pairs = _pairs()
    u0 = pairs.u.clone()
    idx = pairs.next_chunk(10, worst=40)
    adversarial_update(net, pairs, idx)
    untouched = torch.ones(len(pairs), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(pairs.u[untouched], u0[untouched])
    assert 40 in idx.tolist() and len(idx) == 11 and pairs.cursor == 10


def test_discrepancy_principle_moves_lambda_in_the_right_direction():
    assert discrepancy_update(1.0, 0.97, 0.95, 0.1) == 1.1            # too accurate: regularise more
    assert discrepancy_update(1.0, 0.90, 0.95, 0.1) == 0.9            # too inaccurate: less
    assert discrepancy_update(0.05, 0.90, 0.95, 0.1) == 0.0           # never below zero


def test_regulariser_is_at_most_the_linear_lipschitz_constant_and_equal_at_the_optimum():
    torch.manual_seed(0)
    lin = nn.Linear(10, 4)
    true_L = torch.linalg.matrix_norm(lin.weight.detach(), 2)
    pairs = _pairs(d=10)
    q = quotients(lin, pairs.u, pairs.v).detach()
    assert lipschitz_regulariser(q) <= true_L + 1e-6
    assert torch.isclose(lipschitz_regulariser(q, squared=True), q.max() ** 2)
    top = torch.linalg.svd(lin.weight.detach()).Vh[0]
    u = torch.zeros(1, 10)
    best = quotients(lin, u, u + 0.3 * top).detach()
    assert torch.isclose(best[0], true_L, rtol=1e-5)
    for _ in range(200):                      # the ascent approaches the optimum direction
        q = adversarial_update(lin, pairs)
    assert q.max() > 0.99 * true_L


def test_clip_training_runs_its_discrepancy_loop_and_validates_config():
    import pytest
    from torch.utils.data import TensorDataset

    from lipcore.trainers.clip import CLIPConfig, clip_train
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 12, generator=gen)
    y = (x[:, 0] > 0.5).long()
    net = fully_connected([12, 16, 2], "sigmoid", seed=0)
    pairs = _pairs(n=32, d=12)
    easy = CLIPConfig(epochs=2, batch_size=32, lr=0.5, target=0.3, lam0=0.0, d_lambda=0.01,
                      chunk=8)
    out = clip_train(net, TensorDataset(x, y), easy, pairs)
    assert out["lam"] == pytest.approx(16 * 0.01)  # above a 30% target on all 16 minibatches
    assert [h["epoch"] for h in out["history"]] == [1, 2] and out["history"][-1]["lip_estimate"] > 0
    hard = CLIPConfig(epochs=1, batch_size=32, target=1.0, lam0=0.05, d_lambda=0.01,
                      regulariser="weight", update="epoch")
    assert clip_train(net, TensorDataset(x, y), hard)["lam"] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="pairs"):
        clip_train(net, TensorDataset(x, y), CLIPConfig())
    with pytest.raises(ValueError, match="update"):
        CLIPConfig(update="step")


def test_training_moves_pairs_exactly_as_algorithm_1():
    """With lr = 0 (parameters fixed) clip_train's pair updates equal adversarial_update's on
    the same chunks, each including the worst pair so far."""
    from torch.utils.data import TensorDataset

    from lipcore.trainers.clip import CLIPConfig, clip_train
    net = fully_connected([12, 16, 3], "sigmoid", seed=0)
    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    trained, reference = _pairs(n=32), _pairs(n=32)
    cfg = CLIPConfig(epochs=1, batch_size=16, lr=0.0, momentum=0.0, lam0=1.0, chunk=8,
                     ascent_every=1, shuffle=False)
    clip_train(net, data, cfg, trained)
    known, worst = torch.zeros(32), None                      # the trainer's bookkeeping
    for _ in range(4):                                       # the same four chunks, in order
        idx = reference.next_chunk(8, worst)
        known[idx] = adversarial_update(net, reference, idx)
        worst = int(known.argmax())
    assert torch.allclose(trained.u, reference.u) and torch.allclose(trained.tau, reference.tau)


def test_closed_form_gradients_equal_autograd():
    """The ascent's direction and the regulariser's seed are written in closed form; both must
    equal what autograd gives for the quotient itself."""
    from lipcore.trainers.clip import pair_quotients, quotient_gradients
    net = fully_connected([12, 16, 3], "tanh", seed=0)
    pairs = _pairs(n=8)
    fu, fv = net(pairs.u).detach().requires_grad_(True), net(pairs.v).detach()
    for squared in (False, True):
        q = pair_quotients(fu, fv, pairs.u, pairs.v)
        (expected,) = torch.autograd.grad((q ** 2 if squared else q).sum(), fu)
        value, grad = quotient_gradients(fu.detach(), fv, pairs.u, pairs.v, squared)
        assert torch.allclose(value, q.detach()) and torch.allclose(grad, expected, atol=1e-6)
    u, v = pairs.u.clone().requires_grad_(True), pairs.v.clone().requires_grad_(True)
    q = quotients(net, u, v)
    grad_u, grad_v = torch.autograd.grad(q.sum(), [u, v])
    u0, v0, scale = pairs.u.clone(), pairs.v.clone(), (pairs.tau * q.detach()).unsqueeze(1)
    accepted = adversarial_update(net, pairs) > q.detach()
    assert accepted.any()
    assert torch.allclose(pairs.u[accepted], (u0 + scale * grad_u)[accepted], atol=1e-6)
    assert torch.allclose(pairs.v[accepted], (v0 + scale * grad_v)[accepted], atol=1e-6)


def test_training_step_equals_sgd_on_loss_plus_lambda_lip():
    """One CLIP step (Algorithm 1, then SGD on loss + lambda * Lip(f, X_Lip)) matches the same
    step written with plain autograd, although the trainer seeds the regulariser's gradient."""
    import copy

    from torch.utils.data import TensorDataset

    from lipcore.trainers.clip import CLIPConfig, clip_train
    net = fully_connected([12, 16, 3], "sigmoid", seed=0)
    reference_net = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    trained, reference = _pairs(n=8), _pairs(n=8)
    for squared in (False, True):
        cfg = CLIPConfig(epochs=1, batch_size=16, lr=0.5, momentum=0.0, lam0=2.0, d_lambda=0.0,
                         chunk=8, ascent_every=1, squared=squared)
        clip_train(net, TensorDataset(x, y), cfg, trained)
        q = adversarial_update(reference_net, reference, reference.next_chunk(8, 0))
        k = int(q.argmax())
        lip = quotients(reference_net, reference.u[k:k + 1], reference.v[k:k + 1])[0]
        loss = nn.functional.cross_entropy(reference_net(x), y) + 2.0 * lipschitz_regulariser(
            lip, squared)
        reference_net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in reference_net.parameters():
                p -= 0.5 * p.grad
        # the trainer batches the ascent step, so float32 rounding differs from the reference's
        assert torch.allclose(trained.u, reference.u, atol=1e-6)
        assert torch.allclose(trained.v, reference.v, atol=1e-6)
        for p, r in zip(net.parameters(), reference_net.parameters()):
            assert torch.allclose(p, r, atol=1e-6)


def test_ascent_every_kth_minibatch_updates_k_chunks_at_once():
    from torch.utils.data import TensorDataset

    from lipcore.trainers.clip import CLIPConfig, clip_train
    net = fully_connected([12, 16, 3], "sigmoid", seed=0)
    data = TensorDataset(torch.rand(64, 12), torch.zeros(64, dtype=torch.long))
    pairs = _pairs(n=64)
    clip_train(net, data, CLIPConfig(epochs=1, batch_size=16, lr=0.0, chunk=4, ascent_every=2),
               pairs)
    assert pairs.cursor == 2 * 4 * 2          # two ascents (minibatches 0 and 2) of 2 x 4 pairs
    assert not torch.equal(pairs.tau, torch.ones(64))
