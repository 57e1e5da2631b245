"""Bungert et al. (2021), Section 4: the settings and cached training of CLIP's nets on a 1D
regression problem (Fig. 2) and on MNIST and Fashion-MNIST (Table 1, Fig. 1). Evaluation:
:mod:`lipcore.experiments.clip`.

Defaults follow the paper's text; the original code's choices are options (configs.md §2):
* MNIST MLP output: linear logits (the paper says nothing) or ``output_sigmoid=True`` (code);
* discrepancy principle every minibatch (paper) or ``lam_update="epoch"`` (code);
* the plain quotient (paper) or ``squared=True`` (code's squared quotient);
* noisy copies in the Lipschitz set: N(0, 0.1^2) (paper: unspecified) or ``pair_noise="uniform"``
  (code: U[0, 0.1));
* checkpoint (:func:`checkpoint_score`): the paper keeps "the checkpoint with the highest
  robustness". Read literally (``checkpoint="paper"``) that favours early, underfit epochs, before
  the discrepancy principle has acted, and at short budgets every row of a data set then keeps the
  same net. Every row of the paper's Table 1 sits at its target training accuracy, so the default
  ``checkpoint="target"`` takes the most robust epoch among those that reached the target with a
  non-zero mu or lambda. ``checkpoint="code"`` is the original code's rule (epochs whose training
  accuracy exceeds the target, 0.9 for standard training, win).

Choices the paper leaves open:
* d_lambda (and d_mu for weight regularisation) is not given. We set it to TRAVEL / (number of
  minibatch updates of the run): the parameter can move at most TRAVEL over training, about twice
  the largest final value in Table 1 (lambda 9.82, mu 9.1e-3). This makes the step independent of
  the profile's budget; ``travel_scale`` multiplies TRAVEL for the sensitivity study.
* The 6,000 held-out images are the last 6,000 of the training set; the checkpoint is chosen on
  PGD (eps 2, step 0.25, fewer iterations) against the first of them.
* Regression (no code exists): noise levels, pairs, optimiser and epochs are ours (REGRESSION).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ...attacks.pgd import pgd_accuracy
from ...cache import cache_key, cached
from ...data import ImageData, load_dataset
from ...models import fully_connected, madry_cnn, with_output_activation
from ...trainers.clip import CLIPConfig, LipschitzSet, clip_train, quotients


# Table 1's rows: (name, regulariser, target accuracy)
ROWS = [("Standard", "none", None)] + [
    (f"{label} {t}", reg, t / 100) for label, reg in (("Weight Reg.", "weight"), ("CLIP", "clip"))
    for t in (95, 90, 85)]


TRAVEL = {"clip": 20.0, "weight": 0.02, "none": 0.0}


HELD_OUT = 6000


CODE_DEFAULT_GOAL = 0.9            # the code's goal accuracy, also for standard training


PGD = dict(eps=2.0, step=0.25)


@dataclass
class TableSetting:
    """One half of Table 1 at one profile."""

    name: str                      # "MNIST" or "Fashion-MNIST"
    dataset: str                   # lipcore.data name
    epochs: int
    n_train: int | None            # training images used (None: all but the held-out ones)
    held_out: int                  # Lipschitz-set images removed from the training set
    n_test_pgd: int | None         # test images attacked with PGD-100 (None: all)
    val_pgd: tuple[int, int]       # checkpoint selection: (validation images, PGD iterations)
    pgd_iterations: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    chunk: int = 16
    output_sigmoid: bool = False
    n_test: int | None = None      # test images evaluated (None: all; the smoke profile's subset)
    profile: str = "paper"         # the budget these settings are (every row and table says it)

    def model(self, seed: int) -> nn.Module:
        if self.name == "MNIST":
            net = fully_connected([784, 64, 64, 10], "sigmoid", seed=seed)
            return with_output_activation(net, "sigmoid") if self.output_sigmoid else net
        return madry_cnn("relu", seed=seed)


TABLE_PARTS = ["MNIST", "Fashion-MNIST"]


def table_settings(profile: str | dict[str, str], output_sigmoid: bool = False
                   ) -> dict[str, TableSetting]:
    """MNIST (MLP 784-64-64-10, sigmoid) and Fashion-MNIST (Madry et al. CNN) for ``profile``:
    one profile for both, or one per half (``{"MNIST": "paper", "Fashion-MNIST": "cpu"}``).

    ``cpu`` trains MNIST for 10 epochs on all 54,000 images, and Fashion-MNIST for 30 epochs
    on 10,000 of them: about 2,400 SGD steps, which the CNN needs before its training accuracy
    passes 95% (with 5,000 images and 16 epochs it barely passed 90%, so the discrepancy
    principle never acted); it attacks 500 Fashion-MNIST test images. ``paper`` runs 100 epochs
    on all images and attacks the whole test sets."""
    if isinstance(profile, dict):
        return {name: dataclasses.replace(_table_settings(p, output_sigmoid)[name], profile=p)
                for name, p in profile.items()}
    return {name: dataclasses.replace(s, profile=profile)
            for name, s in _table_settings(profile, output_sigmoid).items()}


def _table_settings(profile: str, output_sigmoid: bool) -> dict[str, TableSetting]:
    if profile == "smoke":
        mk = dict(epochs=1, n_train=512, held_out=128, n_test_pgd=64, val_pgd=(32, 3),
                  pgd_iterations=5, chunk=8, n_test=256)
        return {"MNIST": TableSetting("MNIST", "mnist", output_sigmoid=output_sigmoid, **mk),
                "Fashion-MNIST": TableSetting("Fashion-MNIST", "fashion_mnist",
                                              **{**mk, "n_train": 256})}
    if profile == "cpu":
        return {"MNIST": TableSetting("MNIST", "mnist", 10, None, HELD_OUT, None, (1000, 10),
                                      output_sigmoid=output_sigmoid),
                "Fashion-MNIST": TableSetting("Fashion-MNIST", "fashion_mnist", 30, 10_000,
                                              HELD_OUT, 500, (200, 10))}
    return {"MNIST": TableSetting("MNIST", "mnist", 100, None, HELD_OUT, None, (1000, 20),
                                  output_sigmoid=output_sigmoid),
            "Fashion-MNIST": TableSetting("Fashion-MNIST", "fashion_mnist", 100, None, HELD_OUT,
                                          None, (1000, 20))}


@dataclass
class Split:
    """Training images, the held-out Lipschitz-set images (with labels, for validation) and the
    test set of one setting."""

    train: TensorDataset
    held_out: TensorDataset
    test: TensorDataset
    fingerprint: str
    source: str
    origin: str


def load_split(setting: TableSetting, data_dir=None) -> Split:
    """Remove the last ``held_out`` training images for the Lipschitz set (the paper's 6,000)."""
    data: ImageData = load_dataset(setting.dataset, data_dir)
    x, y = data.train.tensors
    if len(x) <= setting.held_out:
        raise ValueError(f"{setting.dataset} has {len(x)} training images; cannot hold out "
                         f"{setting.held_out}")
    keep = len(x) - setting.held_out
    n_train = keep if setting.n_train is None else min(setting.n_train, keep)
    test = data.test if setting.n_test is None else \
        TensorDataset(*(t[:setting.n_test] for t in data.test.tensors))
    return Split(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[keep:], y[keep:]),
                 test, f"{data.fingerprint}-{n_train}-{setting.held_out}-{len(test)}",
                 data.source, data.origin)


def row_config(setting: TableSetting, split: Split, regulariser: str, target: float | None,
               travel_scale: float = 1.0, lam_update: str = "batch", squared: bool = False
               ) -> CLIPConfig:
    """Algorithm 2's settings for one row; d = TRAVEL * travel_scale / (number of updates)."""
    batches = -(-len(split.train) // setting.batch_size)
    updates = setting.epochs * (batches if lam_update == "batch" else 1)
    return CLIPConfig(epochs=setting.epochs, batch_size=setting.batch_size, lr=setting.lr,
                      momentum=setting.momentum, regulariser=regulariser,
                      target=target if target is not None else 1.0, lam0=0.0,
                      d_lambda=TRAVEL[regulariser] * travel_scale / updates, update=lam_update,
                      chunk=setting.chunk, squared=squared)


def lipschitz_pairs(split: Split, seed: int, kind: str = "gaussian") -> LipschitzSet:
    """The held-out images and their noisy copies (noise level 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    return LipschitzSet.from_images(split.held_out.tensors[0], noise=0.1, generator=gen, kind=kind)


@dataclass
class TrainedRow:
    name: str
    model: nn.Module
    history: list
    lam: float                     # lambda or mu after training
    best_epoch: int
    seconds: float
    top_pairs: dict | None         # CLIP: the 5 pairs of largest final quotient, before and after
    met_target: bool               # the kept epoch reached the target (see reached_target)


CHECKPOINT_RULES = ("target", "paper", "code")


# The discrepancy principle holds the training accuracy *at* the target, so it straddles it
# (the paper's own rows: 94.6% for target 95, 89.8% for 90): "reached" allows this many points below.
TARGET_TOLERANCE = 1.0


def reached_target(train_accuracy: float, target: float, param: float, regularised: bool,
                   rule: str = "target") -> bool:
    """Did an epoch reach its target? "target": running training accuracy >= target minus
    TARGET_TOLERANCE points and, for a regularised row, a non-zero mu or lambda (the discrepancy
    principle has acted). "code": the original code's test, training accuracy > target.
    Accuracy in %, target a fraction."""
    if rule == "code":
        return train_accuracy > 100 * target
    return train_accuracy >= 100 * target - TARGET_TOLERANCE and (param > 0 or not regularised)


def checkpoint_score(pgd_accuracy: float, train_accuracy: float, target: float, rule: str,
                     param: float = 0.0, regularised: bool = False) -> float:
    """Checkpoint score of an epoch (accuracies in %, target a fraction). "paper": the
    validation PGD accuracy. "target" and "code": the same plus a bonus of 100 when the epoch
    :func:`reached_target`, so such an epoch beats every epoch without it (the code adds 1 to a
    fraction); without any such epoch the most robust one is kept."""
    if rule not in CHECKPOINT_RULES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_RULES}, got {rule!r}")
    if rule == "paper":
        return pgd_accuracy
    reached = reached_target(train_accuracy, target, param, regularised, rule)
    return pgd_accuracy + (100.0 if reached else 0.0)


def fit_row(setting: TableSetting, split: Split, name: str, cfg: CLIPConfig, seed: int,
            device: str, pair_noise: str = "gaussian", checkpoint: str = "target",
            log: Callable[[dict], None] | None = None) -> TrainedRow:
    """Train one row of Table 1 and keep the epoch with the best :func:`checkpoint_score`
    (validation PGD accuracy among the epochs that reached the target; see CHECKPOINT_RULES).
    Cached."""
    if checkpoint not in CHECKPOINT_RULES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_RULES}, got {checkpoint!r}")
    n_val, val_iterations = setting.val_pgd
    val = TensorDataset(*(t[:n_val] for t in split.held_out.tensors))
    budget = {k: v for k, v in dataclasses.asdict(setting).items() if k != "profile"}  # a label
    key = cache_key(dict(kind="clip_table", setting=budget, row=name,
                         cfg=dataclasses.asdict(cfg), pair_noise=pair_noise,
                         checkpoint=checkpoint), split.fingerprint, seed, clip_train)

    def build():
        model = setting.model(seed)
        pairs = lipschitz_pairs(split, seed, pair_noise) if cfg.regulariser == "clip" else None
        initial = copy.deepcopy(pairs)
        best = dict(score=-np.inf, state=None, epoch=0, met_target=False)
        regularised = cfg.regulariser != "none"
        goal = cfg.target if regularised else CODE_DEFAULT_GOAL

        def checkpoint_on_pgd(net: nn.Module, record: dict) -> dict:
            robust = pgd_accuracy(net, val, device, iterations=val_iterations, **PGD)
            met = reached_target(record["train_accuracy"], goal, record["lam"], regularised,
                                 "code" if checkpoint == "code" else "target")
            score = checkpoint_score(robust, record["train_accuracy"], goal, checkpoint,
                                     record["lam"], regularised)
            if score >= best["score"]:
                best.update(score=score, epoch=record["epoch"], met_target=met,
                            state={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            if log is not None:
                log(dict(row=name, **record, val_pgd_accuracy=robust, met_target=met))
            return dict(val_pgd_accuracy=robust, met_target=met)

        start = time.perf_counter()
        out = clip_train(model, split.train, cfg, pairs, device, seed, on_epoch=checkpoint_on_pgd)
        return dict(state=best["state"], history=out["history"], lam=out["lam"],
                    seconds=time.perf_counter() - start, best_epoch=best["epoch"],
                    met_target=best["met_target"],
                    top_pairs=_top_pairs(model, initial, pairs) if pairs is not None else None)
    stored = cached(key, build)
    model = setting.model(seed)
    model.load_state_dict(stored["state"])
    return TrainedRow(name, model.to(device).eval(), stored["history"], stored["lam"],
                      stored["best_epoch"], stored["seconds"], stored["top_pairs"],
                      stored["met_target"])


def _top_pairs(model: nn.Module, initial: LipschitzSet, final: LipschitzSet, k: int = 5) -> dict:
    """Fig. 1's material: the k pairs with the largest final quotient, before and after the
    adversarial updates, with the trained net's class and confidence for every image."""
    model.eval()
    with torch.no_grad():
        q_final = quotients(model, final.u, final.v)
        top = q_final.topk(min(k, len(q_final))).indices
        out = dict(index=top.cpu(), q_before=quotients(model, initial.u[top], initial.v[top]).cpu(),
                   q_after=q_final[top].cpu())
        for stage, s in (("before", initial), ("after", final)):
            for side in ("u", "v"):
                images = getattr(s, side)[top]
                probs = model(images).softmax(1)
                out[f"{side}_{stage}"] = images.cpu()
                out[f"{side}_{stage}_class"] = probs.argmax(1).cpu()
                out[f"{side}_{stage}_confidence"] = probs.max(1).values.cpu()
    return out


def target_function(x: torch.Tensor) -> torch.Tensor:
    """f(x) = max(|x| - 3, 0) / 2."""
    return (x.abs() - 3).clamp_min(0) / 2


@dataclass
class RegressionSetting:
    """Fig. 2. Everything except the target, the data set and the net is our choice."""

    n_samples: int = 100
    data_noise: float = 0.05          # std of the noise on the samples of f
    n_pairs: int = 100                # Lipschitz pairs, re-drawn every epoch on [-4, 4]
    pair_noise: float = 0.1           # x' = x + N(0, pair_noise^2)
    loss: str = "sse"                 # summed squared error; see the notebook for why
    batch_size: int = 100             # full batch
    optimizer: str = "adam"
    lr: float = 1e-3
    pretrain_epochs: int = 4000       # the unregularised net (also lambda = 0 in the figure)
    epochs: int = 1500                # per lambda of the warm-start chain
    lambdas: tuple = (10.0, 1.0, 1e-10)


def regression_settings(profile: str) -> RegressionSetting:
    if profile == "smoke":
        return RegressionSetting(pretrain_epochs=20, epochs=10)
    if profile == "cpu":
        return RegressionSetting()
    return RegressionSetting(pretrain_epochs=5000, epochs=3000)


INTERVALS = ((-4.0, -3.0), (-0.3, 0.3), (3.0, 4.0))


def regression_data(setting: RegressionSetting, seed: int) -> TensorDataset:
    """n noisy samples of f, uniform on [-4,-3] u [-0.3,0.3] u [3,4]."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([b - a for a, b in INTERVALS])
    which = torch.multinomial(lengths, setting.n_samples, replacement=True, generator=gen)
    lo = torch.tensor([a for a, _ in INTERVALS])[which]
    x = (lo + lengths[which] * torch.rand(setting.n_samples, generator=gen)).unsqueeze(1)
    y = target_function(x) + setting.data_noise * torch.randn(x.shape, generator=gen)
    return TensorDataset(x, y)


def regression_net(seed: int) -> nn.Module:
    """MLP 1-500-200-100-1 with sigmoid, also on the output (as the paper explains)."""
    return with_output_activation(fully_connected([1, 500, 200, 100, 1], "sigmoid", seed=seed),
                                  "sigmoid")


def fit_regression_chain(setting: RegressionSetting, seed: int, device: str
                         ) -> dict[float, nn.Module]:
    """lambda = 0 (pretrained, unregularised), then 10 from it, 1 from 10, 1e-10 from 1. Cached."""
    data = regression_data(setting, seed)

    def sampler(epoch: int) -> LipschitzSet:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        x = 8 * torch.rand(setting.n_pairs, 1, generator=gen) - 4
        return LipschitzSet.from_images(x, setting.pair_noise, generator=gen)

    key = cache_key(dict(kind="clip_regression", setting=dataclasses.asdict(setting)),
                    "regression", seed, clip_train)

    def build():
        model, states = regression_net(seed), {}
        base = dict(batch_size=setting.batch_size, lr=setting.lr, optimizer=setting.optimizer,
                    loss=setting.loss, d_lambda=0.0, chunk=setting.n_pairs,
                    ascent_every=1)            # the whole set, every (full-batch) step
        clip_train(model, data, CLIPConfig(epochs=setting.pretrain_epochs, regulariser="none",
                                           **base), device=device, seed=seed)
        states[0.0] = copy.deepcopy(model.state_dict())
        for lam in setting.lambdas:
            clip_train(model, data, CLIPConfig(epochs=setting.epochs, lam0=lam, **base),
                       device=device, seed=seed, pair_sampler=sampler)
            states[lam] = copy.deepcopy(model.state_dict())
        return dict(states={k: {n: t.cpu() for n, t in v.items()} for k, v in states.items()})
    stored = cached(key, build)
    nets = {}
    for lam, state in stored["states"].items():
        nets[lam] = regression_net(seed)
        nets[lam].load_state_dict(state)
        nets[lam].to(device).eval()
    return nets
