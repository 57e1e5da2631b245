"""Pauli et al. (2021), Section IV: the settings of Nom-NN, L2-NN and Lip-NN on the 2D example and
MNIST, and their cached training (evaluation: :mod:`lipcore.experiments.pauli_admm`).

Settings follow the paper's text by default; the original code's choices are named options
(``../shared/papers/configs.md`` section 1):
* MNIST activation: ``activation="tanh"`` (paper) or ``"relu"`` (code);
* L2 penalty: ``l2_source="paper"`` (2D 4e-3, MNIST 3e-3) or ``"code"`` (5e-4 for both);
* smoke profile: a 49-16-10 net on 4x4-pooled MNIST subsets, only to exercise the pipeline;
* stopping: the paper says "until convergence"; the ``paper`` profile uses the code's rules
  (2D: at least 5 ADMM iterations, then while |dL| >= 1; MNIST: at least 2, then while
  |dL| >= 0.5), the ``cpu`` and ``smoke`` profiles a fixed, smaller budget.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn
from torch.utils.data import TensorDataset

from ...cache import cache_key, cached
from ...data import ImageData, load_dataset, pauli_2d
from ...models import fully_connected, pauli_mnist_net
from ...trainers.admm import ADMMConfig, admm_train
from ...trainers.standard import TrainConfig, train


L2_PENALTIES = {"paper": {"2D": 4e-3, "MNIST": 3e-3}, "code": {"2D": 5e-4, "MNIST": 5e-4}}


@dataclass
class Setting:
    """One column group of Table I."""

    name: str
    widths: list[int]
    activation: str
    base: TrainConfig                 # Nom-NN and L2-NN training
    l2: float
    admm: ADMMConfig                  # Lip-NN (regularised)
    enforce_levels: list[float]
    enforce: ADMMConfig               # template for the enforced runs (L_des set per level)
    subset: tuple[int, int] | None = None   # (train, test) sizes for the smoke profile
    attack: tuple[int, int | None] = (100, None)   # strong attacks: (iterations, test points; None: all)

    def model(self, seed: int) -> nn.Module:
        if self.name == "MNIST":
            return pauli_mnist_net(self.activation, self.widths, seed=seed)
        return fully_connected(self.widths, self.activation, seed=seed)


def settings(profile: str, activation: str = "tanh", l2_source: str = "paper"
             ) -> dict[str, Setting]:
    """The 2D and MNIST settings for ``profile`` (see the module docstring)."""
    if l2_source not in L2_PENALTIES:
        raise ValueError(f"l2_source must be 'paper' or 'code', got {l2_source!r}")
    l2 = L2_PENALTIES[l2_source]
    sgd = dict(batch_size=None, lr=0.1, optimizer="sgd")           # 2D: full-batch SGD
    adam = dict(batch_size=100, lr=0.01, optimizer="adam")         # MNIST: Adam, batch 100
    budget = {  # base steps/epochs, ADMM (iterations, max, tol), W-step length, enforce iters
        "smoke": dict(s2=200, w2=50, it2=(2, 2, None), m=1, wm=1, itm=(1, 1, None), enf=1),
        "cpu": dict(s2=10_000, w2=5_000, it2=(10, 10, None), m=5, wm=2, itm=(8, 8, None), enf=3),
        "paper": dict(s2=10_000, w2=10_000, it2=(5, 30, 1.0), m=10, wm=5, itm=(2, 30, 0.5),
                      enf=5),
    }[profile]

    def admm(mu, iters, w_step):
        return ADMMConfig(rho=0.25, mu=mu, iterations=iters[0], max_iterations=iters[1],
                          tol_L=iters[2], w_step=w_step)
    attack = (10, 300) if profile == "smoke" else (100, None)
    w2 = TrainConfig(epochs=budget["w2"], **sgd)
    wm = TrainConfig(epochs=budget["wm"], **adam)
    enf2 = (budget["enf"], budget["enf"], None)
    return {
        "2D": Setting("2D", [2, 10, 10, 3], "tanh", TrainConfig(epochs=budget["s2"], **sgd),
                      l2["2D"], admm(1e-5, budget["it2"], w2), [10.0, 30.0, 100.0],
                      admm(1e-5, enf2, w2), attack=attack),
        "MNIST": Setting("MNIST", [49, 16, 10] if profile == "smoke" else [196, 50, 10], activation,
                         TrainConfig(epochs=budget["m"], **adam), l2["MNIST"],
                         admm(0.01, budget["itm"], wm), [5.0, 10.0, 20.0],
                         admm(0.01, enf2, wm),
                         subset=(3000, 1000) if profile == "smoke" else None, attack=attack),
    }


def load_setting_data(setting: Setting, data_dir=None) -> ImageData:
    """2D: the original code's points. MNIST: the real data set (a subset at smoke)."""
    if setting.name == "2D":
        return pauli_2d()
    data = load_dataset("mnist", data_dir)
    if setting.subset is not None:
        n_train, n_test = setting.subset
        data = dataclasses.replace(
            data, train=TensorDataset(*(t[:n_train] for t in data.train.tensors)),
            test=TensorDataset(*(t[:n_test] for t in data.test.tensors)),
            fingerprint=f"{data.fingerprint}-{n_train}-{n_test}")
    return data


@dataclass
class TrainedNet:
    name: str
    model: nn.Module
    seconds: float
    history: list = field(default_factory=list)       # ADMM records (empty for standard nets)
    losses: list = field(default_factory=list)        # per-epoch training loss
    T: np.ndarray | None = None


def _config(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _restore(setting: Setting, seed: int, state: dict, device: str) -> nn.Module:
    """A fresh net of ``setting`` with the cached weights ``state``."""
    model = setting.model(seed)
    model.load_state_dict(state)
    return model.to(device)


def fit_standard(setting: Setting, data: ImageData, l2: float, seed: int, device: str,
                 name: str) -> TrainedNet:
    """Nom-NN (l2 = 0) or L2-NN, cached."""
    cfg = dataclasses.replace(setting.base, l2=l2)
    key = cache_key(dict(kind="standard", setting=setting.name, widths=setting.widths,
                         activation=setting.activation, train=_config(cfg)),
                    data.fingerprint, seed, train)

    def build():
        model = setting.model(seed)
        out = train(model, data.train, cfg, device, seed=seed)
        return dict(state=model.cpu().state_dict(), seconds=out["seconds"], losses=out["losses"])
    stored = cached(key, build)
    return TrainedNet(name, _restore(setting, seed, stored["state"], device), stored["seconds"],
                      losses=stored["losses"])


def fit_admm(setting: Setting, data: ImageData, init: TrainedNet, cfg: ADMMConfig, seed: int,
             device: str, name: str, log: Callable | None = None) -> TrainedNet:
    """Lip-NN (cfg.mu set) or an enforced-bound net (cfg.L_des set), started from ``init``;
    T is LipSDP-neuron's multiplier on ``init``. Cached."""
    key = cache_key(dict(kind="admm", setting=setting.name, widths=setting.widths,
                         activation=setting.activation, init=init.name, base=_config(setting.base),
                         l2=setting.l2, admm=_config(cfg)), data.fingerprint, seed, admm_train)

    def build():
        model = copy.deepcopy(init.model)
        result = admm_train(model, data.train, cfg, device=device, seed=seed, log=log)
        return dict(state=model.cpu().state_dict(), history=result.history, T=result.T,
                    seconds=sum(h["w_step_seconds"] + h["lip_step_seconds"]
                                for h in result.history))
    stored = cached(key, build)
    return TrainedNet(name, _restore(setting, seed, stored["state"], device), stored["seconds"],
                      stored["history"], T=stored["T"])
