"""The CLIP experiment pipeline: data, d_lambda rule, checkpoint selection, claims, 1D bounds."""
import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from lipcore.attacks import pgd_accuracy
from lipcore.data import synthetic_dataset
from lipcore.experiments import clip as cx


def _synthetic_split(n_train=384, held_out=96):
    data = synthetic_dataset("mnist", n_train + held_out, 128, seed=0)
    x, y = data.train.tensors
    return cx.Split(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]),
                    data.test, "synthetic-test", "synthetic", "synthetic stand-in")


def test_regression_samples_lie_on_the_three_intervals_and_follow_f():
    setting = cx.RegressionSetting(data_noise=0.0)
    x, y = cx.regression_data(setting, seed=3).tensors
    assert x.shape == (100, 1)
    inside = torch.zeros(100, dtype=torch.bool)
    for a, b in cx.INTERVALS:
        inside |= (x[:, 0] >= a) & (x[:, 0] <= b)
    assert inside.all()
    assert torch.allclose(y, cx.target_function(x))
    assert cx.target_function(torch.tensor([-4.0, 0.0, 3.5])).tolist() == [0.5, 0.0, 0.25]


def test_1d_lipschitz_estimate_is_below_the_sound_bound_and_near_the_pair_quotients():
    net = cx.regression_net(seed=0)
    est = cx.lipschitz_1d(net)
    assert 0 < est["grid_estimate"] <= est["naive_upper_bound"]
    x = torch.linspace(-4, 4, 101).unsqueeze(1)
    with torch.no_grad():
        y = net(x)
    quotients = ((y[1:] - y[:-1]).abs() / (x[1:] - x[:-1])).max()
    assert quotients <= est["grid_estimate"] * 1.01          # secant slopes never exceed max |f'|


def test_d_lambda_lets_the_parameter_travel_exactly_TRAVEL_over_the_run():
    setting = cx.table_settings("smoke")["MNIST"]
    split = _synthetic_split()
    for regulariser in ("clip", "weight"):
        for update, per_epoch in (("batch", 3), ("epoch", 1)):       # 384 / 128 = 3 minibatches
            cfg = cx.row_config(setting, split, regulariser, 0.9, travel_scale=2.0, lam_update=update)
            assert cfg.d_lambda * setting.epochs * per_epoch == pytest.approx(2 * cx.TRAVEL[regulariser])


def test_the_kept_checkpoint_is_the_epoch_with_the_best_validation_pgd_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    setting = dataclasses.replace(cx.table_settings("smoke")["MNIST"], epochs=4, val_pgd=(48, 3))
    split = _synthetic_split()
    cfg = cx.row_config(setting, split, "clip", 0.9)
    net = cx.fit_row(setting, split, "CLIP 90", cfg, seed=0, device="cpu", checkpoint="paper")
    scores = [h["val_pgd_accuracy"] for h in net.history]
    assert net.best_epoch == max(i + 1 for i, s in enumerate(scores) if s == max(scores))
    val = TensorDataset(*(t[:48] for t in split.held_out.tensors))
    assert pgd_accuracy(net.model, val, iterations=3, **cx.PGD) == pytest.approx(max(scores))
    top = net.top_pairs
    assert torch.all(top["q_after"] >= top["q_before"] - 1e-6)   # pairs only ever move uphill
    again = cx.fit_row(setting, split, "CLIP 90", cfg, seed=0, device="cpu",   # from the cache
                       checkpoint="paper")
    assert again.best_epoch == net.best_epoch and again.lam == net.lam


def _rows(pgd_clip90, test_wr90, lams=(0.01, 1.0, 5.0)):
    rows = [dict(setting="MNIST", net="Standard", test=90.0, pgd=20.0, param=0.0)]
    rows += [dict(setting="MNIST", net=f"Weight Reg. {t}", test=test_wr90 if t == 90 else 80.0,
                  pgd=30.0, param=1e-3) for t in (95, 90, 85)]
    rows += [dict(setting="MNIST", net=f"CLIP {t}", test=89.0, pgd=pgd_clip90 if t == 90 else 40.0,
                  param=lam) for t, lam in zip((95, 90, 85), lams)]
    return rows


def test_claims_compare_clip_with_similar_weight_regularised_nets_and_check_lambda_order():
    verdicts = cx.claims(_rows(pgd_clip90=35.0, test_wr90=89.5))
    assert verdicts["MNIST: CLIP 90 is more robust to PGD than Standard, Weight Reg. 90"]
    assert verdicts["MNIST: lambda grows as the target accuracy falls (95 -> 90 -> 85)"]
    verdicts = cx.claims(_rows(pgd_clip90=25.0, test_wr90=89.5, lams=(1.0, 0.5, 5.0)))
    assert not verdicts["MNIST: CLIP 90 is more robust to PGD than Standard, Weight Reg. 90"]
    assert not verdicts["MNIST: lambda grows as the target accuracy falls (95 -> 90 -> 85)"]
    flat = cx.claims(_rows(pgd_clip90=35.0, test_wr90=89.5, lams=(0.0, 0.0, 0.0)))
    assert not flat["MNIST: lambda grows as the target accuracy falls (95 -> 90 -> 85)"]
    # weight-regularised nets 9 points less accurate are not "similar" ones
    assert not any("Weight Reg. 95" in claim or "Weight Reg. 85" in claim for claim in verdicts)


def test_regression_claims_follow_the_numbers():
    lip = {10.0: 0.1, 1.0: 0.4, 1e-10: 1.2, 0.0: 1.5}
    err = {10.0: 0.1, 1.0: 0.03, 1e-10: 0.02, 0.0: 0.02}
    assert all(cx.regression_claims(lip, err).values())
    lip[0.0] = 1.0
    assert not cx.regression_claims(lip, err)[
        "the unregularised net (lambda = 0) is rougher than the lambda = 1e-10 net "
        "(larger Lipschitz estimate)"]


def test_bad_options_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="checkpoint"):
        cx.fit_row(cx.table_settings("smoke")["MNIST"], _synthetic_split(), "x",
                   cx.row_config(cx.table_settings("smoke")["MNIST"], _synthetic_split(), "none",
                                 None), 0, "cpu", checkpoint="last")
    with pytest.raises(ValueError, match="pair noise"):
        cx.lipschitz_pairs(_synthetic_split(), 0, kind="salt")
    with pytest.raises(ValueError, match="regression"):
        from lipcore.trainers.clip import CLIPConfig
        CLIPConfig(loss="sse", d_lambda=0.1)


def test_code_checkpoint_rule_prefers_any_epoch_that_reached_the_target():
    early = cx.checkpoint_score(55.0, 80.0, 0.9, "code")       # robust but under target
    late = cx.checkpoint_score(20.0, 91.0, 0.9, "code")
    assert late > early
    assert cx.checkpoint_score(55.0, 80.0, 0.9, "paper") > cx.checkpoint_score(20.0, 91.0, 0.9, "paper")


def test_target_rule_keeps_only_epochs_that_reached_the_target_with_a_nonzero_parameter():
    robust_early = cx.checkpoint_score(55.0, 80.0, 0.9, "target", param=0.0, regularised=True)
    at_target = cx.checkpoint_score(20.0, 89.5, 0.9, "target", param=0.3, regularised=True)
    unregularised = cx.checkpoint_score(30.0, 92.0, 0.9, "target", param=0.0, regularised=True)
    assert at_target > robust_early and at_target > unregularised      # lambda = 0: not reached
    assert cx.reached_target(100 * 0.9 - cx.TARGET_TOLERANCE, 0.9, 0.1, True)
    assert not cx.reached_target(100 * 0.9 - cx.TARGET_TOLERANCE - 0.1, 0.9, 0.1, True)
    assert cx.reached_target(91.0, 0.9, 0.0, regularised=False)        # standard training
    with pytest.raises(ValueError, match="checkpoint"):
        cx.checkpoint_score(50.0, 90.0, 0.9, "best")


def test_the_target_rule_reports_whether_the_kept_epoch_met_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    setting = dataclasses.replace(cx.table_settings("smoke")["MNIST"], epochs=3, val_pgd=(48, 3))
    split = _synthetic_split()
    cfg = cx.row_config(setting, split, "clip", 0.5)          # synthetic data: reached at once
    net = cx.fit_row(setting, split, "CLIP 50", cfg, seed=0, device="cpu")
    kept = net.history[net.best_epoch - 1]
    assert net.met_target == kept["met_target"]
    qualifying = [h for h in net.history if h["met_target"]]
    if qualifying:
        assert kept["met_target"]
        assert kept["val_pgd_accuracy"] == max(h["val_pgd_accuracy"] for h in qualifying)


def test_claims_are_judged_under_each_attack_column():
    rows = _rows(pgd_clip90=35.0, test_wr90=89.5)
    for r in rows:
        r["robust"] = r["pgd"] / 4
    rows[5]["robust"] = 1.0                                  # CLIP 90 loses under strong attacks
    verdicts = cx.claims(rows, attacks=("pgd", "robust"))
    assert verdicts["MNIST: CLIP 90 is more robust to PGD than Standard, Weight Reg. 90"]
    assert not verdicts["MNIST: CLIP 90 is more robust to the strong attacks than Standard, "
                        "Weight Reg. 90"]
