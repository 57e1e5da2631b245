"""Usama & Chang: the grid cells (one cached training run each, with the evaluation cached beside
its net) and the settings per profile. Tables and claims: :mod:`lipcore.experiments.lipschitz_loss`.

Every trained net is a grid :class:`Cell`: an independent, cached training run followed by its
noise-robustness curve, computed by :func:`run_cell` on the Dask engine of :mod:`lipcore.grid`.

What the paper leaves open (configs.md section 4), each a documented choice:
* MNIST CNN layout: :func:`lipcore.models.usama_mnist_cnn`; optimiser Adam (lr 1e-4 is given; with
  plain SGD at that rate 5 epochs barely leave the initialisation); batch 100 on a random 55,000
  image subset ("5 epochs of 550 iterations"); Fig. 1's fractions are ours (``fractions``).
* CIFAR-10 / STL-10: SGD momentum 0.9 and weight decay 1e-4 (He et al.'s recipe, which the paper's
  lr 0.1 / 150 / 225 schedule is), and crop+flip augmentation (``augment``): the paper's 92.77%
  baseline is out of reach of ResNet-20 without it, although its conclusion says the method
  needs no augmentation; ``augment="none"`` is one flag away.
* noise: sigma on the [0, 1] pixel scale, test noise not clipped (``clamp_test``), the loss's
  options in :mod:`lipcore.trainers.lipschitz_loss`.
* the 6.2 text says L_n in {0.001, 0.1}, the tables and Section 7 use 0.01: we use 0.01.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ...attacks.noise import noise_accuracy_curve
from ...cache import cache_key, cached
from ...data import DatasetNotFound, load_dataset, synthetic_dataset
from ...grid import run_grid, worker_device
from ...models import residual_net, usama_mnist_cnn
from ...trainers.lipschitz_loss import LipschitzLossConfig, mean_quotient, train_lipschitz_loss
from ...trainers.standard import TrainConfig, evaluate


MNIST_TEST_SIGMAS = (0.0, 0.5, 1.0)


RESIDUAL_TEST_SIGMAS = (0.0, 0.3, 0.5)


# Table 1: confidence for "ship" at sigma 0, 0.2, 0.4, 0.6
TABLE_1_SIGMAS = (0.0, 0.2, 0.4, 0.6)


# Section 7: nominal (sigma, beta, L_n), steps, and d acc / d parameter on CIFAR-10
NOMINAL = (0.25, 5.0, 0.01)


STEPS = {"sigma": 0.25, "beta": 5.0, "L_n": 0.09}


CURVE_STEP = 0.01


CURVE_MAX = 0.5


@dataclass(frozen=True)
class Cell:
    """One training run of the paper and the evaluation that follows it."""

    dataset: str                          # lipcore.data name
    arch: str                             # "mnist_cnn" or a lipcore.resnets name
    loss: LipschitzLossConfig             # beta = 0: standard training
    train: TrainConfig
    n_train: int | None                   # random training subset (None: all)
    n_test: int | None                    # first test images (None: all)
    synthetic: tuple[int, int] | None     # (train, test) sizes of a stand-in; None: real data
    test_sigmas: tuple[float, ...]        # the noise curve
    clamp_test: bool = False
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None

    @property
    def label(self) -> str:
        if self.loss.beta == 0:
            return "standard"
        return f"sigma={self.loss.sigma:g}, beta={self.loss.beta:g}, L_n={self.loss.L_n:g}"


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None, synthetic: tuple[int, int] | None, seed: int):
    if synthetic is not None:
        return synthetic_dataset(name, *synthetic, seed=seed)
    return load_dataset(name, data_dir)


def cell_data(cell: Cell) -> tuple[TensorDataset, TensorDataset, str]:
    """(training subset, test set, fingerprint) of a cell; the subset is a random draw of
    ``n_train`` images with the cell's seed, as the paper draws its fractions."""
    data = _dataset(cell.dataset, cell.data_dir, cell.synthetic, cell.seed)
    x, y = data.train.tensors
    n = len(x) if cell.n_train is None else min(cell.n_train, len(x))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(cell.seed))[:n]
    test = data.test if cell.n_test is None else \
        TensorDataset(*(t[:cell.n_test] for t in data.test.tensors))
    return (TensorDataset(x[pick], y[pick]), test,
            f"{data.fingerprint}-{n}-{len(test.tensors[0])}")


def cell_model(cell: Cell) -> nn.Module:
    if cell.arch == "mnist_cnn":
        return usama_mnist_cnn(seed=cell.seed)
    return residual_net(cell.arch, seed=cell.seed)


def _key(cell: Cell, fingerprint: str) -> str:
    config = dict(kind="lipschitz_loss", dataset=cell.dataset, arch=cell.arch,
                  loss=dataclasses.asdict(cell.loss), train=dataclasses.asdict(cell.train),
                  test_sigmas=list(cell.test_sigmas), clamp_test=cell.clamp_test)
    return cache_key(config, fingerprint, cell.seed, train_lipschitz_loss)


def _trained(cell: Cell) -> tuple[dict, bool]:
    """The cell's stored training run (weights, curve, ...) and whether this call trained it."""
    train_set, test_set, fingerprint = cell_data(cell)
    device = worker_device(cell.device)
    trained_now = []

    def build() -> dict:
        trained_now.append(True)
        model = cell_model(cell)
        start = time.perf_counter()
        out = train_lipschitz_loss(model, train_set, cell.train, cell.loss, device, cell.seed)
        seconds = time.perf_counter() - start
        curve = noise_accuracy_curve(model, test_set, "gaussian", cell.test_sigmas,
                                     clamp=cell.clamp_test, seed=cell.seed, device=device)
        return dict(state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                    curve=curve, losses=out["losses"], train_seconds=seconds,
                    train_accuracy=evaluate(model, train_set, device)[1],
                    mean_k=mean_quotient(model, test_set, cell.loss.sigma, cell.loss.outputs,
                                         cell.seed, device))
    return cached(_key(cell, fingerprint), build), bool(trained_now)


def run_cell(cell: Cell) -> dict:
    """Train the cell's net (cached) and evaluate it: the accuracy curve under Gaussian noise of
    each ``test_sigmas`` level, the training accuracy and the mean difference quotient k on the
    test set. Returns everything but the weights (:func:`load_cell_model` gives those)."""
    stored, trained_now = _trained(cell)
    return {k: v for k, v in stored.items() if k != "state"} | dict(
        label=cell.label, trained_now=trained_now)


def load_cell_model(cell: Cell, device: str = "cpu") -> nn.Module:
    """The trained net of a cell (trained first if the cache does not have it)."""
    model = cell_model(cell)
    model.load_state_dict(_trained(cell)[0]["state"])
    return model.to(device).eval()


def data_source(dataset: str, data_dir: str | None) -> tuple[bool, str]:
    """(is the real dataset available, where it comes from or why a stand-in is used)."""
    try:
        data = _dataset(dataset, data_dir, None, 0)
    except DatasetNotFound as missing:
        return False, f"synthetic stand-in ({missing})"
    return True, data.origin


@dataclass(frozen=True)
class MnistSetting:
    """Table 2 and Fig. 1."""

    epochs: int = 5
    n_train: int = 55_000
    n_test: int | None = None
    batch_size: int = 100
    lr: float = 1e-4
    optimizer: str = "adam"
    beta: float = 10.0
    combos: tuple[tuple[float, float], ...] = ((0.5, 0.01), (0.75, 0.005), (0.75, 0.01))
    fractions: tuple[float, ...] = (0.01, 0.05, 0.2, 1.0)


@dataclass(frozen=True)
class ResidualSetting:
    """Tables 3-8 for one data set: the architectures, the budget and the grid it runs."""

    dataset: str
    archs: tuple[str, ...]
    epochs: int = 300
    milestones: tuple[int, ...] = (150, 225)
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    n_train: int | None = None
    n_test: int | None = None
    stand_in: tuple[int, int] = (512, 128)        # stand-in sizes when the data is missing
    cells: str = "full"                           # "full" grid, "sensitivity" or "sigma" cells


def mnist_setting(profile: str) -> MnistSetting:
    if profile == "smoke":
        return MnistSetting(epochs=1, n_train=600, n_test=300, combos=((0.75, 0.01),),
                            fractions=(0.5, 1.0))
    if profile == "cpu":
        return MnistSetting()
    return MnistSetting(fractions=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))


PARTS = ["MNIST", "cifar10", "stl10"]       # what part_profiles may set (lipcore.run)


def residual_settings(profile: str | dict[str, str]) -> dict[str, ResidualSetting]:
    """CIFAR-10 (ResNet-20, PreResNet-20) and STL-10 (PreResNet-32). ``paper``: 300 epochs, the
    whole grid. ``cpu``: a handful of epochs, the cells Section 7 needs (CIFAR-10) or the three
    sigma_train values (STL-10); on real data a 5,000-image subset, else a small stand-in.
    ``profile`` may also name one profile per data set (the smoke profile has CIFAR-10 only)."""
    if isinstance(profile, dict):
        return {name: setting for name, p in profile.items()
                for key, setting in residual_settings(p).items() if key == name}
    if profile == "smoke":
        return {"cifar10": ResidualSetting("cifar10", ("resnet20",), epochs=1, milestones=(),
                                           n_train=64, n_test=64, stand_in=(64, 64),
                                           cells="sensitivity")}
    if profile == "cpu":
        return {"cifar10": ResidualSetting("cifar10", ("resnet20", "preresnet20"), epochs=2,
                                           milestones=(), n_train=5000, n_test=1000,
                                           cells="sensitivity"),
                "stl10": ResidualSetting("stl10", ("preresnet32",), epochs=1, milestones=(),
                                         n_train=1000, n_test=500, stand_in=(192, 32),
                                         cells="sigma")}
    return {"cifar10": ResidualSetting("cifar10", ("resnet20", "preresnet20")),
            "stl10": ResidualSetting("stl10", ("preresnet32",))}


def curve_sigmas(extra: tuple[float, ...] = ()) -> tuple[float, ...]:
    """0 to 0.5 in steps of 0.01 (Figs 2-7), plus ``extra`` levels."""
    grid = np.round(np.arange(0, CURVE_MAX + CURVE_STEP / 2, CURVE_STEP), 2)
    return tuple(sorted(set(float(s) for s in grid) | set(extra)))


def hyperparameters(cells: str) -> list[tuple[float, float, float]]:
    """(sigma, beta, L_n) of a residual grid: "full" (the paper's 3 x 3 x 2), "sensitivity"
    (the nominal point and one step in each parameter, Section 7) or "sigma" (the three sigma_train
    at the nominal beta and L_n)."""
    sigma0, beta0, ln0 = NOMINAL
    if cells == "full":
        return [(s, b, ln) for s in (0.05, 0.25, 0.5) for b in (1.0, 5.0, 10.0) for ln in (0.01, 0.1)]
    if cells == "sigma":
        return [(s, beta0, ln0) for s in (0.05, 0.25, 0.5)]
    if cells == "sensitivity":
        return [NOMINAL, (sigma0 + STEPS["sigma"], beta0, ln0), (sigma0, beta0 + STEPS["beta"], ln0),
                (sigma0, beta0, round(ln0 + STEPS["L_n"], 6))]
    raise ValueError(f"cells must be 'full', 'sensitivity' or 'sigma', got {cells!r}")


def mnist_cells(s: MnistSetting, loss_options: dict, clamp_test: bool, seed: int, device: str,
                data_dir: str | None) -> dict[tuple, Cell]:
    """{(combo or None for standard, fraction): Cell} for Table 2 (fraction 1) and Fig. 1."""
    train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, optimizer=s.optimizer,
                        shuffle=True)
    cells = {}
    for combo in (None, *s.combos):
        loss = LipschitzLossConfig(beta=0.0 if combo is None else s.beta,
                                   sigma=combo[0] if combo else 0.5,
                                   L_n=combo[1] if combo else 0.01, **loss_options)
        for fraction in s.fractions:
            cells[(combo, fraction)] = Cell(
                "mnist", "mnist_cnn", loss, train, max(1, round(fraction * s.n_train)), s.n_test,
                None, MNIST_TEST_SIGMAS, clamp_test, seed, device, data_dir)
    return cells


def residual_cells(s: ResidualSetting, real: bool, loss_options: dict, augment: str,
                   clamp_test: bool, seed: int, device: str, data_dir: str | None
                   ) -> dict[tuple, Cell]:
    """{(arch, (sigma, beta, L_n) or None for standard): Cell} of one data set's grid."""
    train = TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, optimizer="sgd",
                        momentum=s.momentum, l2=s.weight_decay, shuffle=True,
                        milestones=s.milestones, augment=augment)
    sigmas = curve_sigmas(RESIDUAL_TEST_SIGMAS + TABLE_1_SIGMAS)
    cells = {}
    for arch in s.archs:
        for point in (None, *hyperparameters(s.cells)):
            loss = LipschitzLossConfig(beta=0.0, **loss_options) if point is None else \
                LipschitzLossConfig(sigma=point[0], beta=point[1], L_n=point[2], **loss_options)
            cells[(arch, point)] = Cell(
                s.dataset, arch, loss, train, s.n_train if real else None,
                s.n_test if real else None, None if real else s.stand_in, sigmas, clamp_test,
                seed, device, data_dir)
    return cells


def train_grid(cells: dict[tuple, Cell], address: str | None = None, workers: int | None = None,
               desc: str = "grid cells") -> dict[tuple, dict]:
    """Run every cell on the grid engine (:func:`lipcore.grid.run_grid`)."""
    results = run_grid(run_cell, list(cells.values()), address, workers, desc)
    return dict(zip(cells, results))
