"""l2 PGD (Bungert et al. eq. (13)): stays in the eps-ball and [0, 1], lowers accuracy, and
matches brute-force facts on a linear model."""
import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lipcore.attacks import pgd_accuracy, pgd_l2, project_l2_ball
from lipcore.data import load_dataset
from lipcore.models import fully_connected
from lipcore.trainers import TrainConfig, evaluate, train


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on 3000 real MNIST images (synthetic stand-ins are too easy to
    attack meaningfully: their class templates are far apart)."""
    if not os.environ.get("LIPCORE_DATA"):
        pytest.skip("LIPCORE_DATA not set")
    mnist = load_dataset("mnist")
    data = TensorDataset(*(t[:3000] for t in mnist.train.tensors))
    test = TensorDataset(*(t[:300] for t in mnist.test.tensors))
    net = fully_connected([784, 32, 10], "relu", seed=0)
    train(net, data, TrainConfig(epochs=5, batch_size=64, lr=1e-3, shuffle=True))
    return test, net


@pytest.mark.parametrize("variant,step", [("paper", 0.25), ("code", 0.5), ("l2", 0.25)])
def test_pgd_stays_in_the_ball_and_the_box(trained, variant, step):
    test, net = trained
    x, y = test.tensors[0][:64], test.tensors[1][:64]
    adv = pgd_l2(net, x, y, eps=2.0, step=step, iterations=20, variant=variant,
                 random_start=True, generator=torch.Generator().manual_seed(0))
    assert (adv - x).flatten(1).norm(dim=1).max() <= 2.0 + 1e-5
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_lowers_accuracy_of_a_trained_net(trained):
    test, net = trained
    clean = evaluate(net, test)[1]
    attacked = pgd_accuracy(net, test, eps=2.0, step=0.25, iterations=20)
    assert clean > 80 and attacked < clean - 20


def test_projection_is_onto_the_ball():
    delta = torch.randn(16, 1, 5, 5) * torch.linspace(0.1, 3, 16).view(-1, 1, 1, 1)
    out = project_l2_ball(delta, 1.0)
    norms = delta.flatten(1).norm(dim=1)
    assert torch.allclose(out.flatten(1).norm(dim=1), norms.clamp(max=1.0), atol=1e-6)
    inside = norms <= 1.0
    assert torch.equal(out[inside], delta[inside])


def test_linear_model_brute_force_facts():
    """For f(x) = W x (2 classes) the exact l2 robust radius of x is margin / ||w_y - w_o||.
    PGD never flips a sample beyond it (eps smaller than the radius), and it reaches its
    sign-step fixed point, which lowers the margin by eps * ||dw||_1 / sqrt(d)."""
    torch.manual_seed(0)
    d = 16
    model = nn.Linear(d, 2, bias=False).double()
    dw = (model.weight[1] - model.weight[0]).detach()
    x = torch.full((200, d), 0.5, dtype=torch.float64) + 0.05 * torch.randn(200, d).double()
    x = x.clamp(0.3, 0.7)
    with torch.no_grad():
        margin_1 = model(x) @ torch.tensor([-1.0, 1.0]).double()        # z_1 - z_0
    y = (margin_1 > 0).long()
    margin = margin_1.abs()
    eps = 0.1                                                          # keeps x + delta in [0, 1]
    adv = pgd_l2(model, x, y, eps=eps, step=0.01, iterations=300)
    with torch.no_grad():
        new_margin = (model(adv) @ torch.tensor([-1.0, 1.0]).double()) * (2 * y - 1)
    radius = margin / dw.norm()
    assert torch.all((new_margin > 0) | (radius <= eps))               # soundness
    expected_drop = eps * dw.abs().sum() / d ** 0.5
    assert torch.allclose(margin - new_margin, expected_drop.expand_as(margin), rtol=0.05)


def test_bad_pgd_parameters():
    with pytest.raises(ValueError, match="variant"):
        pgd_l2(nn.Identity(), torch.zeros(1, 2), torch.zeros(1).long(), variant="fgsm")
    with pytest.raises(ValueError, match="eps > 0"):
        pgd_l2(nn.Identity(), torch.zeros(1, 2), torch.zeros(1).long(), eps=0.0)


def test_an_l2_step_has_length_step_and_a_sign_step_sqrt_d_times_more():
    """Why eq. (13)'s sign steps are weak for l2 (issue 29): one step from x, inside a big ball."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x, y = torch.full((4, 1, 28, 28), 0.5), torch.arange(4)
    lengths = {v: (pgd_l2(net, x, y, eps=100.0, step=0.01, iterations=1, variant=v) - x)
               .flatten(1).norm(dim=1) for v in ("l2", "paper")}
    assert torch.allclose(lengths["l2"], torch.full((4,), 0.01), rtol=1e-4)
    assert torch.allclose(lengths["paper"], torch.full((4,), 0.01 * 28), rtol=1e-4)
