"""Usama & Chang's experiment: the paper's tables are transcribed in the right cells, the grids
hold what Section 7 needs, the finite differences and claims are computed as defined, and Table 1
picks a correctly classified image."""
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lipcore.experiments import lipschitz_loss as ux
from lipcore.trainers.standard import TrainConfig


def test_the_paper_grids_are_transcribed_cell_by_cell():
    for key, table in ux.PAPER_GRID.items():
        assert len(table) == 18, key
    assert ux.PAPER_GRID[("cifar10", "resnet20")][(0.25, 0.01, 10)] == (88.18, 58.56, 29.70)
    assert ux.PAPER_GRID[("cifar10", "resnet20")][(0.5, 0.1, 10)] == (84.62, 72.40, 45.53)
    assert ux.PAPER_GRID[("cifar10", "preresnet20")][(0.05, 0.01, 1)] == (92.50, 41.31, 22.25)
    assert ux.PAPER_GRID[("stl10", "preresnet32")][(0.05, 0.01, 5)] == (80.88, 67.81, 51.58)


def test_grids_hold_the_nominal_point_and_one_step_in_each_parameter():
    full = ux.hyperparameters("full")
    assert len(full) == 18 and len(set(full)) == 18
    sens = ux.hyperparameters("sensitivity")
    assert sens[0] == ux.NOMINAL and set(sens) <= set(full)
    assert (0.5, 5.0, 0.01) in sens and (0.25, 10.0, 0.01) in sens and (0.25, 5.0, 0.1) in sens
    with pytest.raises(ValueError, match="cells"):
        ux.hyperparameters("everything")
    curve = ux.curve_sigmas((0.6,))
    assert curve[0] == 0.0 and 0.5 in curve and 0.6 in curve and len(curve) == 52


def _grid(acc):
    rows = [dict(arch="a", sigma_train=s, beta=b, L_n=ln, curve_mean=acc(s, b, ln))
            for s, b, ln in ux.hyperparameters("sensitivity")]
    return pd.DataFrame(rows + [dict(arch="a", sigma_train=None, beta=None, L_n=None, curve_mean=0.0)])


def test_sensitivities_are_the_finite_differences_of_section_7():
    d = ux.sensitivities(_grid(lambda s, b, ln: 10 * s + 0.5 * b - 20 * ln), "a")
    assert d == pytest.approx({"sigma": 10.0, "beta": 0.5, "L_n": -20.0})
    with pytest.raises(ValueError, match="metric"):
        ux.sensitivities(_grid(lambda *p: 0.0), "a", "top5")
    with pytest.raises(ValueError, match="no net trained"):
        ux.sensitivities(_grid(lambda *p: 0.0).iloc[1:], "a")


def test_table_1_uses_a_target_image_every_net_gets_right():
    x = torch.zeros(4, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 1.0, 1.0])      # feature: 1 for class 1
    x[2, 0, 1, 1] = 5.0                                     # image 2 fools the second net
    y = torch.tensor([0, 1, 1, 1])
    first = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    second = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for net in (first, second):
            net[1].weight.copy_(torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
            net[1].bias.copy_(torch.tensor([0.5, 0.0]))
        second[1].weight[0, 3] = 1.0
    table, images = ux.table_1({"a": first, "b": second}, TensorDataset(x, y), ["no", "yes"],
                               target="yes", sigmas=(0.0, 0.1))
    assert set(table.test_index) == {1}                     # image 2 is wrong for net b
    assert (table[table.sigma == 0].prediction == "yes").all()
    assert images.shape == (2, 1, 2, 2) and torch.equal(images[0], x[1])
    with pytest.raises(ValueError, match="no image of class"):
        ux.table_1({"a": first}, TensorDataset(x[:1], y[:1]), ["no", "yes"], target="yes")


def test_claims_follow_the_numbers():
    mnist = pd.DataFrame([dict(training="standard", sigma_train=None, L_n=None,
                               acc_sigma_0=97, **{"acc_sigma_0.5": 90}, acc_sigma_1=60),
                          dict(training="p", sigma_train=0.75, L_n=0.005,
                               acc_sigma_0=98, **{"acc_sigma_0.5": 95}, acc_sigma_1=80),
                          dict(training="q", sigma_train=0.75, L_n=0.01,
                               acc_sigma_0=98, **{"acc_sigma_0.5": 94}, acc_sigma_1=75)])
    fractions = pd.DataFrame([dict(training=t, fraction=f, noisy_0_5=v)
                              for t, f, v in [("standard", 0.1, 50), ("standard", 1.0, 90),
                                              ("p", 0.1, 60), ("p", 1.0, 95)]])
    out = ux.claims(mnist, fractions, None, {"resnet20": {"sigma": 80.0, "beta": 2.0, "L_n": -30.0}})
    assert all(out.values()), out
    mnist.loc[2, "acc_sigma_1"] = 85                         # raising L_n now helps
    out = ux.claims(mnist, fractions, None, {"resnet20": {"sigma": 1.0, "beta": 2.0, "L_n": -30.0}})
    assert not out["MNIST: raising L_n (0.005 -> 0.01 at sigma_train 0.75) lowers accuracy at sigma_test 1.0"]
    assert not out["Section 7 (resnet20): accuracy is most sensitive to sigma_train, rises with it and falls with L_n"]


def test_a_cell_on_a_stand_in_trains_evaluates_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    cell = ux.Cell("cifar10", "resnet20", ux.LipschitzLossConfig(beta=5.0, sigma=0.25, L_n=0.01),
                   TrainConfig(epochs=1, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9,
                               augment="crop_flip"), None, None, (64, 32), (0.0, 0.3))
    result = ux.run_cell(cell)
    assert result["trained_now"] and len(result["curve"]) == 2 and result["mean_k"] > 0
    model = ux.load_cell_model(cell)
    _, test, _ = ux.cell_data(cell)
    with torch.no_grad():
        clean = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean().item()
    assert result["curve"][0] == pytest.approx(100 * clean)
    assert not ux.run_cell(cell)["trained_now"]
    with pytest.raises(ValueError, match="unknown architecture"):
        ux.cell_model(ux.Cell("cifar10", "vgg16", cell.loss, cell.train, None, None, (8, 8), (0.0,)))
