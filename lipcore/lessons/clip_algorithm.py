"""Lesson 11: the CLIP algorithm (Bungert et al. 2021): lambda * Lip(f) estimated on adversarial
pairs (Algorithm 1), and lambda set by the discrepancy principle (Algorithm 2).

Two small problems, each trained by lipcore's own trainer (:func:`lipcore.trainers.clip.clip_train`,
with :func:`~lipcore.trainers.clip.adversarial_update` moving the pairs):

* the 1D regression of the paper's Fig. 2 (:func:`lipcore.experiments.clip.regression_data`:
  f(x) = max(|x| - 3, 0) / 2 sampled with noise on [-4, -3] u [-0.3, 0.3] u [3, 4]), on a
  1-32-32-1 sigmoid net with a sigmoid output (the paper's net, 1-500-200-100-1, narrowed so that
  a lambda trains in about a second): pretrained without the penalty, then trained with CLIP at a
  fixed lambda from that start (the paper warm-starts each lambda from the previous one);
* Pauli et al.'s three-class 2D data (:func:`lipcore.data.pauli_2d`, 200 training points, 64
  more for the Lipschitz pairs, as the paper holds images out), on a 2-16-16-3 tanh net:
  pretrained without the penalty, then CLIP with the discrepancy principle for a target training
  accuracy (the original code's warm-up at lambda = 0, shortened).

Every net is cached per setting (``functools.lru_cache``), so a value the slider has shown
before redraws at once.
"""
from __future__ import annotations

import copy
import functools

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ..certify import lipschitz_bound
from ..data import pauli_2d
from ..experiments.clip import (RegressionSetting, lipschitz_1d, regression_data,
                                regression_error, target_function)
from ..models import fully_connected, with_output_activation
from ..progress import quiet
from ..trainers.clip import CLIPConfig, LipschitzSet, adversarial_update, clip_train, quotients
from ..trainers.standard import evaluate
from .show import clear_axes

LAMBDAS = (0.0, 0.1, 1.0, 3.0, 10.0)           # the regression slider (lambda fixed, as in Fig. 2)
TARGETS = (0.98, 0.95, 0.9, 0.85, 0.8, 0.7)      # the classification slider (target accuracy)

# regression: full batch (100 points), summed squared error as lipcore's Fig. 2 run, Adam
REG = dict(width=32, pretrain_epochs=800, epochs=120, pairs=32, pair_noise=0.1, lr=0.01,
           final_ascent=30)
# classification: minibatches of 50 (4 lambda updates per epoch), Adam
CLS = dict(n_train=200, n_pairs=64, pair_noise=0.05, pretrain_epochs=300, epochs=60,
           batch_size=50, lr=0.003, d_lambda=0.005)
X_RANGE = (-4.6, 4.6)
Y_RANGE = (-0.25, 0.85)
ACCURACY_RANGE = (40.0, 101.0)
# the lambda axis of the discrepancy panels: the farthest lambda can travel, d per minibatch
BATCHES = -(-CLS["n_train"] // CLS["batch_size"])          # minibatches per epoch
LAMBDA_TOP = CLS["d_lambda"] * CLS["epochs"] * BATCHES


def small_regression_net(seed: int = 0) -> nn.Module:
    """1-32-32-1 with sigmoid activations and a sigmoid output (the paper's net, narrowed)."""
    return with_output_activation(fully_connected([1, REG["width"], REG["width"], 1], "sigmoid",
                                                  seed=seed), "sigmoid")


def _regression_config(epochs: int, lam: float, regulariser: str = "clip") -> CLIPConfig:
    return CLIPConfig(epochs=epochs, batch_size=100, lr=REG["lr"], optimizer="adam", loss="sse",
                      regulariser=regulariser, lam0=lam, d_lambda=0.0, chunk=REG["pairs"] // 4)


@functools.lru_cache(maxsize=None)
def pretrained_regression(seed: int = 0) -> dict:
    """The regression net trained without the penalty (its state), and the data."""
    data = regression_data(RegressionSetting(), seed)
    net = small_regression_net(seed)
    with quiet():
        clip_train(net, data, _regression_config(REG["pretrain_epochs"], 0.0, "none"), seed=seed)
    return dict(state=copy.deepcopy(net.state_dict()), data=data)


def regression_pairs(seed: int = 0) -> LipschitzSet:
    """REG["pairs"] pairs (x, x + N(0, 0.1^2)) with x uniform on [-4, 4] (the paper's draw)."""
    gen = torch.Generator().manual_seed(seed)
    x = 8 * torch.rand(REG["pairs"], 1, generator=gen) - 4
    return LipschitzSet.from_images(x, REG["pair_noise"], generator=gen)


def exact_quotients(net: nn.Module, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The pairs' difference quotients with the net evaluated in float64. Algorithm 1 shrinks a
    pair to a few millionths, where a float32 quotient is largely rounding error and can exceed
    Lip(f) by a few percent; in float64 it stays a lower bound to about 1e-10."""
    with torch.no_grad():
        return quotients(copy.deepcopy(net).double(), u.double(), v.double())


@functools.lru_cache(maxsize=None)
def clip_fit(lam: float, seed: int = 0) -> dict:
    """CLIP at a fixed lambda from the pretrained net (lambda = 0: the same training without the
    penalty), then Algorithm 1 alone for REG["final_ascent"] more steps on the trained net. Returns
    the net, the pairs where they started and ended, CLIP's estimate (the largest quotient, in
    float64: :func:`exact_quotients`), the grid estimate max |f'| on [-4, 4], a sound bound
    (LipSDP-neuron, output sigmoid included) and the RMS distance to f."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    start = pretrained_regression(seed)
    net = small_regression_net(seed)
    net.load_state_dict(start["state"])
    pairs = regression_pairs(seed)
    began = (pairs.u.clone(), pairs.v.clone())
    with quiet():
        out = clip_train(net, start["data"], _regression_config(REG["epochs"], lam), pairs,
                         seed=seed)
        for _ in range(REG["final_ascent"]):
            q = adversarial_update(net, pairs)
        sound = lipschitz_bound(net, "lipsdp").value
    q = exact_quotients(net, pairs.u, pairs.v)
    worst = int(q.argmax())
    q_began = float(exact_quotients(net, began[0][worst:worst + 1], began[1][worst:worst + 1])[0])
    return dict(net=net, lam=lam, estimate=float(q[worst]), estimate_start=q_began,
                pair=(float(pairs.u[worst]), float(pairs.v[worst])),
                pair_start=(float(began[0][worst]), float(began[1][worst])),
                grid=lipschitz_1d(net)["grid_estimate"], sound=sound,
                error=regression_error(net), history=out["history"], data=start["data"])


def _curve(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1)).numpy().ravel()


def _draw_fit(axis: plt.Axes, lam: float) -> dict:
    fit = clip_fit(lam)
    x = np.linspace(*X_RANGE, 801)
    before = small_regression_net()
    before.load_state_dict(pretrained_regression()["state"])
    xd, yd = (t.numpy().ravel() for t in fit["data"].tensors)
    axis.plot(x, target_function(torch.as_tensor(x)).numpy(), color="tab:red", lw=1.2,
              label="ground truth f")
    axis.plot(xd, yd, ".", color="tab:blue", ms=3, label="noisy samples")
    axis.plot(x, _curve(before, x), color="grey", lw=0.9, ls=":", label="pretrained (no penalty)")
    axis.plot(x, _curve(fit["net"], x), color="tab:green", lw=1.8,
              label=fr"CLIP, $\lambda$ = {lam:g}")
    for pair, style, name in ((fit["pair_start"], dict(mfc="white", ls="--", lw=0.8),
                               f"pair at its start: {fit['estimate_start']:.3f}"),
                              (fit["pair"], dict(mfc="tab:orange", ls="-", lw=1.4),
                               f"pair after Alg. 1: {fit['estimate']:.3f}")):
        u, v = pair
        fu, fv = _curve(fit["net"], np.array([u, v]))
        slope = (fv - fu) / (v - u) if v != u else 0.0
        centre, half = (u + v) / 2, 0.9
        line_x = np.array([centre - half, centre + half])
        axis.plot(line_x, (fu + fv) / 2 + slope * (line_x - centre), color="tab:orange",
                  ls=style["ls"], lw=style["lw"], label=f"secant, quotient {name}")
        axis.plot([u, v], [fu, fv], "o", color="tab:orange", mfc=style["mfc"], ms=6)
    axis.set(xlim=X_RANGE, ylim=Y_RANGE, xlabel="x", ylabel="f(x)")
    axis.legend(fontsize=6.5, loc="upper center")
    axis.set_title(fr"$\lambda$ = {lam:g}: RMS error to f {fit['error']:.3f};  "
                   fr"{fit['estimate']:.3f} $\leq$ Lip(f) $\leq$ {fit['sound']:.3f} (LipSDP)"
                   f"\nmax |f'| on a grid of [-4, 4]: {fit['grid']:.3f}", fontsize=8)
    return {k: fit[k] for k in ("lam", "estimate", "estimate_start", "pair", "pair_start",
                                "grid", "sound", "error")}


def draw_clip_fit(ax: plt.Axes, lam: float = 1.0) -> dict:
    """The regression of Fig. 2 at a fixed lambda: the fit, the pretrained net, and the
    adversarial pair (where it started and where Algorithm 1 took it) with its secant, whose slope
    is CLIP's estimate of Lip(f)."""
    ax.clear()
    return _draw_fit(ax, lam)


@functools.lru_cache(maxsize=None)
def pretrained_classifier(seed: int = 0) -> dict:
    """The 2-16-16-3 tanh net trained on Pauli et al.'s 2D data without the penalty (its state),
    the training set, the held-out points of the Lipschitz pairs, the test set and its training
    accuracy (%)."""
    data = pauli_2d(n_train=CLS["n_train"] + CLS["n_pairs"])
    x, y = data.train.tensors
    train = torch.utils.data.TensorDataset(x[:CLS["n_train"]], y[:CLS["n_train"]])
    net = fully_connected([2, 16, 16, 3], "tanh", seed=seed)
    with quiet():
        clip_train(net, train, CLIPConfig(epochs=CLS["pretrain_epochs"], batch_size=100, lr=0.02,
                                          optimizer="adam", regulariser="none"), seed=seed)
    return dict(state=copy.deepcopy(net.state_dict()), train=train, held_out=x[CLS["n_train"]:],
                test=data.test, train_accuracy=evaluate(net, train)[1])


@functools.lru_cache(maxsize=None)
def discrepancy_run(target: float, seed: int = 0) -> dict:
    """CLIP with the discrepancy principle (Algorithm 2: lambda + d if the running training
    accuracy exceeds ``target``, else lambda - d, never below 0; once per minibatch) from the
    pretrained classifier. Returns the history (per epoch: training accuracy, lambda, CLIP's
    estimate), the final net, its pairs and its test accuracy."""
    start = pretrained_classifier(seed)
    net = fully_connected([2, 16, 16, 3], "tanh", seed=seed)
    net.load_state_dict(start["state"])
    pairs = LipschitzSet.from_images(start["held_out"], noise=CLS["pair_noise"],
                                     generator=torch.Generator().manual_seed(seed))
    cfg = CLIPConfig(epochs=CLS["epochs"], batch_size=CLS["batch_size"], lr=CLS["lr"],
                     optimizer="adam", target=target, lam0=0.0, d_lambda=CLS["d_lambda"])
    with quiet():
        out = clip_train(net, start["train"], cfg, pairs, seed=seed)
    test = evaluate(net, start["test"])[1]
    return dict(history=out["history"], test_accuracy=test, target=target, net=net, pairs=pairs)


def _draw_run(acc_axis: plt.Axes, lam_axis: plt.Axes, target: float) -> dict:
    run = discrepancy_run(target)
    h = run["history"]
    epochs = np.array([r["epoch"] for r in h])
    accuracy = np.array([r["train_accuracy"] for r in h])
    lam = np.array([r["lam"] for r in h])
    acc_axis.plot(epochs, accuracy, color="tab:blue", lw=1.3, label="training accuracy")
    acc_axis.axhline(100 * target, color="k", ls="--", lw=0.9,
                     label=fr"target $\alpha$ = {100 * target:g}%")
    acc_axis.fill_between(epochs, 100 * target, accuracy, where=accuracy > 100 * target,
                          color="tab:green", alpha=0.25, step=None, label="above the target")
    acc_axis.set(ylim=ACCURACY_RANGE, ylabel="training accuracy (%)")
    acc_axis.tick_params(labelbottom=False)
    acc_axis.legend(fontsize=6.5, loc="lower left")
    lam_axis.plot(epochs, lam, color="tab:orange", lw=1.5)
    lam_axis.set(ylim=(0, LAMBDA_TOP), ylabel=r"$\lambda$",
                 xlabel=fr"epoch ({BATCHES} minibatches, each one update of $\lambda$)")
    acc_axis.set_title(fr"target {100 * target:g}%: last 20 epochs at {accuracy[-20:].mean():.1f}% "
                       fr"on average, $\lambda$ ends at {lam[-1]:.3f}", fontsize=8)
    return dict(target=target, accuracy=accuracy, lam=lam, test_accuracy=run["test_accuracy"],
                estimate=np.array([r["lip_estimate"] for r in h]))


def draw_discrepancy(ax: plt.Axes, target: float = 0.9) -> dict:
    """Training accuracy (top) and lambda (bottom) per epoch under the discrepancy principle."""
    clear_axes(ax)
    top, bottom = ax.inset_axes((0.0, 0.42, 1.0, 0.5)), ax.inset_axes((0.0, 0.0, 1.0, 0.36))
    return _draw_run(top, bottom, target)


def draw_clip(ax: plt.Axes, lam: float = 1.0, target: float = 0.9) -> dict:
    """Left: the regression at ``lam`` with its adversarial pair. Right: training accuracy and
    lambda under the discrepancy principle at ``target``. Each control changes only its side."""
    clear_axes(ax)
    fit_axis = ax.inset_axes((0.0, 0.0, 0.46, 0.86))
    top, bottom = ax.inset_axes((0.57, 0.4, 0.43, 0.46)), ax.inset_axes((0.57, 0.0, 0.43, 0.32))
    return dict(fit=_draw_fit(fit_axis, lam), run=_draw_run(top, bottom, target))
