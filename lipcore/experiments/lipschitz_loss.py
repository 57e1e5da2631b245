"""Usama & Chang, *Towards robust NNs with Lipschitz continuity*: Table 2 and Fig. 1 (MNIST),
Tables 3-8 and Figs 2-7 (CIFAR-10 ResNet-20 / PreResNet-20, STL-10 PreResNet-32), Table 1 (one
image under noise) and the Section 7 sensitivities.

Every trained net is a grid :class:`Cell`: an independent, cached training run followed by its
noise-robustness curve, computed by :func:`run_cell` on the Dask engine of :mod:`lipcore.grid`.
Cells, settings and the choices the paper leaves open about training are in
:mod:`lipcore.experiments.training.lipschitz_loss` (re-exported here).

What the paper leaves open about its evaluation (configs.md section 4):
* Table 1's image (unknown): the first test ``ship`` that both nets classify correctly without
  noise, one fixed noise pattern scaled by each sigma.
* Section 7's "accuracy" (unknown): the mean of the noise curve over sigma_test 0 to 0.5
  (``sensitivity_metric``), or the accuracy at one sigma_test.

"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..data import CLASS_NAMES
from ..trainers.lipschitz_loss import LipschitzLossConfig  # noqa: F401 (re-exported)
from .training.lipschitz_loss import (  # noqa: F401 (re-exported: the notebook's one module)
    CURVE_MAX, CURVE_STEP, MNIST_TEST_SIGMAS, NOMINAL, PARTS, RESIDUAL_TEST_SIGMAS, STEPS,
    TABLE_1_SIGMAS, Cell, MnistSetting, ResidualSetting, cell_data, cell_model, curve_sigmas,
    data_source, hyperparameters, load_cell_model, mnist_cells, mnist_setting, residual_cells,
    residual_settings, run_cell, train_grid)

# ---------------------------------------------------------------- the paper's numbers
# Table 2 (MNIST, beta 10): accuracy at sigma_test 0, 0.5, 1.0; keys (sigma_train, L_n)
PAPER_TABLE_2 = {None: (0.97, 0.92, 0.65), (0.5, 0.01): (0.98, 0.95, 0.70),
                 (0.75, 0.005): (0.98, 0.96, 0.78), (0.75, 0.01): (0.98, 0.96, 0.77)}
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
PAPER_TABLE_1 = {"standard": (0.9999, 0.5608, 0.1266, 0.0252),
                 "proposed": (0.9999, 0.9986, 0.8710, 0.7215)}
PAPER_SENSITIVITY = {"sigma": 87.20, "beta": 2.55, "L_n": -28.89}


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
