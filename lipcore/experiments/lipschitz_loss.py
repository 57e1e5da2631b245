"""Usama & Chang, *Towards robust NNs with Lipschitz continuity*: Table 2 and Fig. 1 (MNIST),
Tables 3-8 and Figs 2-7 (CIFAR-10 ResNet-20 / PreResNet-20, STL-10 PreResNet-32), Table 1 (one
image under noise) and the Section 7 sensitivities.

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
* Table 1's image (unknown): the first test ``ship`` that both nets classify correctly without
  noise, one fixed noise pattern scaled by each sigma.
* Section 7's "accuracy" (unknown): the mean of the noise curve over sigma_test 0 to 0.5
  (``sensitivity_metric``), or the accuracy at one sigma_test.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..attacks import noise_accuracy_curve
from ..cache import cache_key, cached
from ..data import CLASS_NAMES, DatasetNotFound, load_dataset, synthetic_dataset
from ..grid import run_grid, worker_device
from ..models import residual_net, usama_mnist_cnn
from ..trainers.lipschitz_loss import LipschitzLossConfig, mean_quotient, train_lipschitz_loss
from ..trainers.standard import TrainConfig, evaluate

# ---------------------------------------------------------------- the paper's numbers
# Table 2 (MNIST, beta 10): accuracy at sigma_test 0, 0.5, 1.0; keys (sigma_train, L_n)
PAPER_TABLE_2 = {None: (0.97, 0.92, 0.65), (0.5, 0.01): (0.98, 0.95, 0.70),
                 (0.75, 0.005): (0.98, 0.96, 0.78), (0.75, 0.01): (0.98, 0.96, 0.77)}
MNIST_TEST_SIGMAS = (0.0, 0.5, 1.0)
RESIDUAL_TEST_SIGMAS = (0.0, 0.3, 0.5)
# standard training, at sigma_test 0, 0.3, 0.5 (Tables 3-8)
PAPER_BASELINES = {("cifar10", "resnet20"): (92.77, 38.28, 18.01),
                   ("cifar10", "preresnet20"): (92.59, 30.80, 15.91),
                   ("stl10", "preresnet32"): (80.44, 50.67, 34.94)}


def _table(rows: dict[float, tuple[tuple, tuple]]) -> dict[tuple, tuple]:
    """{sigma_train: ((L_n 0.01 row), (L_n 0.1 row))} with rows of 9 numbers ordered as the paper
    prints them (sigma_test 0 / 0.3 / 0.5, each beta 1 / 5 / 10) -> {(sigma, L_n, beta): 3 accs}."""
    out = {}
    for sigma, by_ln in rows.items():
        for L_n, row in zip((0.01, 0.1), by_ln):
            for b, beta in enumerate((1, 5, 10)):
                out[(sigma, L_n, beta)] = tuple(row[3 * s + b] for s in range(3))
    return out


PAPER_GRID = {  # (dataset, arch) -> {(sigma_train, L_n, beta): accuracy at sigma_test 0, 0.3, 0.5}
    ("cifar10", "resnet20"): _table({
        0.25: ((88.02, 82.49, 88.18, 50.56, 45.80, 58.56, 23.49, 21.68, 29.70),
               (88.86, 88.21, 89.00, 63.01, 59.05, 57.92, 34.73, 31.17, 25.84)),
        0.05: ((92.39, 92.44, 92.68, 32.5, 36.56, 34.09, 15.68, 19.65, 16.33),
               (92.57, 92.32, 93.02, 34.15, 38.48, 42.06, 13.67, 20.63, 21.56)),
        0.5: ((82.97, 82.72, 82.55, 70.31, 67.60, 66.89, 46.47, 43.91, 41.15),
              (81.36, 83.20, 84.62, 58.55, 60.09, 72.40, 36.25, 40.75, 45.53))}),
    ("cifar10", "preresnet20"): _table({
        0.25: ((86.91, 87.86, 88.34, 63.52, 58.86, 59.47, 32.84, 26.99, 26.33),
               (86.55, 88.11, 87.80, 58.51, 61.25, 64.98, 35.14, 32.76, 39.41)),
        0.05: ((92.50, 92.40, 92.56, 41.31, 35.18, 34.66, 22.25, 18.39, 16.46),
               (92.36, 92.66, 92.34, 34.92, 28.37, 33.67, 17.54, 16.12, 14.83)),
        0.5: ((82.43, 80.88, 80.00, 70.83, 64.34, 72.08, 45.54, 33.10, 47.19),
              (80.08, 85.17, 82.42, 53.92, 58.37, 65.94, 31.77, 26.48, 47.28))}),
    ("stl10", "preresnet32"): _table({
        0.25: ((75.65, 77.41, 78.19, 66.11, 59.00, 62.91, 48.77, 40.94, 44.52),
               (78.88, 79.71, 77.21, 68.34, 65.47, 64.60, 47.42, 46.26, 42.24)),
        0.05: ((80.44, 80.88, 80.79, 56.54, 67.81, 56.56, 41.74, 51.58, 37.25),
               (81.34, 80.90, 80.64, 55.46, 52.88, 49.86, 39.51, 39.51, 34.84)),
        0.5: ((73.16, 72.08, 70.90, 60.19, 66.97, 65.89, 48.83, 53.21, 51.33),
              (71.75, 75.35, 71.83, 62.79, 69.10, 67.88, 46.40, 55.95, 52.21))}),
}
PAPER_TABLE_NUMBERS = {("cifar10", 0.25): 3, ("cifar10", 0.05): 4, ("cifar10", 0.5): 5,
                       ("stl10", 0.25): 6, ("stl10", 0.05): 7, ("stl10", 0.5): 8}
# Table 1: confidence for "ship" at sigma 0, 0.2, 0.4, 0.6
TABLE_1_SIGMAS = (0.0, 0.2, 0.4, 0.6)
PAPER_TABLE_1 = {"standard": (0.9999, 0.5608, 0.1266, 0.0252),
                 "proposed": (0.9999, 0.9986, 0.8710, 0.7215)}
# Section 7: nominal (sigma, beta, L_n), steps, and d acc / d parameter on CIFAR-10
NOMINAL = (0.25, 5.0, 0.01)
STEPS = {"sigma": 0.25, "beta": 5.0, "L_n": 0.09}
PAPER_SENSITIVITY = {"sigma": 87.20, "beta": 2.55, "L_n": -28.89}
CURVE_STEP = 0.01
CURVE_MAX = 0.5


# ---------------------------------------------------------------- grid cells

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


# ---------------------------------------------------------------- settings per profile

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


# ---------------------------------------------------------------- tables and claims

def accuracy_at(result: dict, cell: Cell, sigma: float) -> float:
    return result["curve"][cell.test_sigmas.index(sigma)]


def table_2(cells: dict[tuple, Cell], results: dict[tuple, dict]) -> pd.DataFrame:
    """Table 2: accuracy (%) at sigma_test 0, 0.5, 1.0 of the nets trained on all images."""
    rows = []
    for (combo, fraction), cell in cells.items():
        if fraction != 1.0:
            continue
        r = results[(combo, fraction)]
        rows.append(dict(training=cell.label, sigma_train=combo[0] if combo else None,
                         L_n=combo[1] if combo else None,
                         **{f"acc_sigma_{s:g}": accuracy_at(r, cell, s) for s in MNIST_TEST_SIGMAS},
                         train_accuracy=r["train_accuracy"], mean_k=r["mean_k"],
                         train_seconds=r["train_seconds"]))
    return pd.DataFrame(rows)


def fraction_table(cells: dict[tuple, Cell], results: dict[tuple, dict]) -> pd.DataFrame:
    """Fig. 1's data: accuracy (%) clean and at sigma_test 0.5 per training fraction."""
    return pd.DataFrame([dict(training=cell.label, fraction=fraction, n_train=cell.n_train,
                              clean=accuracy_at(results[(combo, fraction)], cell, 0.0),
                              noisy_0_5=accuracy_at(results[(combo, fraction)], cell, 0.5))
                         for (combo, fraction), cell in cells.items()])


def grid_table(cells: dict[tuple, Cell], results: dict[tuple, dict]) -> pd.DataFrame:
    """Tables 3-8 in long form: one row per net, accuracy (%) at sigma_test 0, 0.3, 0.5, the
    mean of its curve and the paper's numbers beside them."""
    rows = []
    for (arch, point), cell in cells.items():
        r = results[(arch, point)]
        if point is None:
            paper = PAPER_BASELINES.get((cell.dataset, arch), (None,) * 3)
        else:
            paper = PAPER_GRID.get((cell.dataset, arch), {}).get(
                (point[0], point[2], int(point[1])), (None,) * 3)
        rows.append(dict(dataset=cell.dataset, arch=arch, training=cell.label,
                         sigma_train=point[0] if point else None, beta=point[1] if point else None,
                         L_n=point[2] if point else None,
                         **{f"acc_sigma_{s:g}": accuracy_at(r, cell, s)
                            for s in RESIDUAL_TEST_SIGMAS},
                         **{f"paper_sigma_{s:g}": p for s, p in zip(RESIDUAL_TEST_SIGMAS, paper)},
                         curve_mean=float(np.mean([accuracy_at(r, cell, s) for s in curve_sigmas()])),
                         train_accuracy=r["train_accuracy"], mean_k=r["mean_k"],
                         train_seconds=r["train_seconds"]))
    return pd.DataFrame(rows)


SENSITIVITY_METRICS = ("curve_mean", "acc_sigma_0", "acc_sigma_0.3", "acc_sigma_0.5")


def sensitivities(grid: pd.DataFrame, arch: str, metric: str = "curve_mean") -> dict[str, float]:
    """Section 7: (acc(nominal + step) - acc(nominal)) / step for sigma_train, beta and L_n on
    one architecture's rows of :func:`grid_table`; ``metric`` is the accuracy used."""
    if metric not in SENSITIVITY_METRICS:
        raise ValueError(f"sensitivity metric must be one of {SENSITIVITY_METRICS}, got {metric!r}")
    rows = grid[(grid.arch == arch) & grid.beta.notna()]

    def acc(sigma: float, beta: float, L_n: float) -> float:
        hit = rows[np.isclose(rows.sigma_train, sigma) & np.isclose(rows.beta, beta)
                   & np.isclose(rows.L_n, L_n)]
        if hit.empty:
            raise ValueError(f"{arch}: no net trained at sigma={sigma}, beta={beta}, L_n={L_n}; "
                             "the grid needs the nominal point and one step in each parameter")
        return float(hit[metric].iloc[0])
    base = acc(*NOMINAL)
    s, b, ln = NOMINAL
    return {"sigma": (acc(s + STEPS["sigma"], b, ln) - base) / STEPS["sigma"],
            "beta": (acc(s, b + STEPS["beta"], ln) - base) / STEPS["beta"],
            "L_n": (acc(s, b, round(ln + STEPS["L_n"], 6)) - base) / STEPS["L_n"]}


@torch.no_grad()
def table_1(models: dict[str, nn.Module], test: TensorDataset, class_names: list[str],
            target: str = "ship", sigmas: tuple[float, ...] = TABLE_1_SIGMAS, seed: int = 0,
            clamp: bool = False, device: str = "cpu") -> tuple[pd.DataFrame, torch.Tensor]:
    """Table 1: the first test image of class ``target`` that every model classifies correctly
    without noise, plus one fixed noise pattern scaled by each sigma; each model's prediction and
    its confidence for ``target``. Returns the table and the noisy images (sigma-major)."""
    x, y = test.tensors
    label = class_names.index(target)
    candidates = (y == label).nonzero().flatten()
    if len(candidates) == 0:
        raise ValueError(f"the test set has no image of class {target!r}")
    correct = torch.ones(len(candidates), dtype=torch.bool)
    for model in models.values():
        correct &= model.eval()(x[candidates].to(device)).argmax(1).cpu() == label
    index = int(candidates[correct.nonzero()[0, 0]] if correct.any() else candidates[0])
    noise = torch.randn(x[index].shape, generator=torch.Generator().manual_seed(seed))
    images = torch.stack([x[index] + s * noise for s in sigmas])
    if clamp:
        images = images.clamp(0, 1)
    rows = []
    for name, model in models.items():
        probs = model(images.to(device)).softmax(1).cpu()
        for s, p in zip(sigmas, probs):
            rows.append(dict(training=name, sigma=s, prediction=class_names[int(p.argmax())],
                             confidence_target=float(p[label]), test_index=index))
    return pd.DataFrame(rows), images


def fraction_claim_evidence(fractions: pd.DataFrame) -> tuple[str, tuple[float, bool]]:
    """Fig. 1's claim on :func:`fraction_table`'s rows: the claim, the smallest lead at
    sigma_test 0.5 of a Lipschitz-loss net over standard training at the same fraction
    (points), and whether every lead is positive."""
    f_std = fractions[fractions.training == "standard"].set_index("fraction")
    leads = [r.noisy_0_5 - f_std.loc[r.fraction, "noisy_0_5"]
             for r in fractions[fractions.training != "standard"].itertuples()]
    return ("Fig. 1: at every training fraction the Lipschitz-loss nets beat standard training "
            "at sigma_test 0.5", (min(leads), min(leads) > 0))


def claims(mnist: pd.DataFrame, fractions: pd.DataFrame, grid: pd.DataFrame | None,
           sensitivity: dict[str, dict[str, float]]) -> dict[str, bool]:
    """The paper's qualitative claims, evaluated on the reproduced numbers."""
    out = {}
    std = mnist[mnist.training == "standard"].iloc[0]
    proposed = mnist[mnist.training != "standard"]
    gains = {s: proposed[f"acc_sigma_{s:g}"] - std[f"acc_sigma_{s:g}"] for s in MNIST_TEST_SIGMAS}
    out["MNIST: every Lipschitz-loss net beats standard training at sigma_test 0.5 and 1.0"] = \
        bool((gains[0.5] > 0).all() and (gains[1.0] > 0).all())
    out["MNIST: the gain over standard training grows with sigma_test (0 -> 0.5 -> 1.0)"] = \
        bool(((gains[0.0] <= gains[0.5]) & (gains[0.5] <= gains[1.0])).all())
    by = proposed.set_index(["sigma_train", "L_n"])
    if (0.75, 0.005) in by.index and (0.75, 0.01) in by.index:
        out["MNIST: raising L_n (0.005 -> 0.01 at sigma_train 0.75) lowers accuracy at sigma_test 1.0"] = \
            bool(by.loc[(0.75, 0.01), "acc_sigma_1"] < by.loc[(0.75, 0.005), "acc_sigma_1"])
    claim, (_, ok) = fraction_claim_evidence(fractions)
    out[claim] = ok
    if grid is not None:
        for (dataset, arch), rows in grid.groupby(["dataset", "arch"], sort=False):
            std_r = rows[rows.beta.isna()].iloc[0]
            prop = rows[rows.beta.notna()]
            out[f"{dataset} {arch}: standard training is the most accurate without noise"] = \
                bool((prop["acc_sigma_0"] <= std_r["acc_sigma_0"]).all())
            out[f"{dataset} {arch}: every Lipschitz-loss net beats standard training at sigma_test 0.5"] = \
                bool((prop["acc_sigma_0.5"] > std_r["acc_sigma_0.5"]).all())
            by_sigma = prop.groupby("sigma_train")[["acc_sigma_0", "acc_sigma_0.5"]].mean()
            if len(by_sigma) > 1:
                out[f"{dataset} {arch}: a larger sigma_train trades clean accuracy for accuracy at "
                    "sigma_test 0.5 (means over beta, L_n)"] = bool(
                    by_sigma["acc_sigma_0"].is_monotonic_decreasing
                    and by_sigma["acc_sigma_0.5"].is_monotonic_increasing)
    for arch, d in sensitivity.items():
        out[f"Section 7 ({arch}): accuracy is most sensitive to sigma_train, rises with it and "
            "falls with L_n"] = bool(d["sigma"] > 0 > d["L_n"]
                                     and abs(d["sigma"]) >= max(abs(d["beta"]), abs(d["L_n"])))
    return out


def class_names(dataset: str) -> list[str]:
    return CLASS_NAMES.get(dataset, [str(c) for c in range(10)])
