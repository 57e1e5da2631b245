"""Robust accuracy under strong attacks: per sample, the worst case over a small ensemble.

The attacks come from the Adversarial Robustness Toolbox (ART), a maintained library, rather than
being written here:
* ``"apgd-ce"``: APGD on the cross-entropy (Croce & Hein 2020, the first attack of AutoAttack),
  with ``restarts`` random starts;
* ``"apgd-dlr"``: APGD on the difference-of-logits ratio, a margin loss that is invariant to the
  scale of the logits, so it still finds adversarials where the cross-entropy saturates (needs
  at least 3 classes);
* ``"apgd-t"``: targeted APGD on the DLR loss towards each of the ``TARGETS`` most likely wrong
  classes in turn (AutoAttack's second attack);
* ``"square"``: the Square attack, score-based and gradient-free (AutoAttack's fourth), which
  catches gradient masking;
* ``"deepfool"``: DeepFool, a minimum-norm attack of a different kind (l2 only);
* ``"cw"``: Carlini-Wagner l2 (minimum-norm, slow; l2 only).

``AUTOATTACK`` is AutoAttack's standard protocol as far as ART provides it: APGD-CE, APGD-T and
Square. Its third attack, FAB-T, is in no maintained library that installs beside lipcore's pins
(ART has none; torchattacks pins an old ``requests`` that breaks jupyterlab-server), so it is left
out and the results say so.

Every adversarial an attack returns is checked here, not trusted: it is projected onto the eps-ball
around the clean input and clamped to [0, 1], and a sample counts as broken only if the model
misclassifies that checked point. A minimum-norm attack whose perturbation is longer than eps
therefore breaks nothing at eps. Samples already broken are not attacked again, so the later
attacks of the ensemble run only on the survivors, as in AutoAttack.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..progress import bar
from .pgd import project_l2_ball

NORMS = {"l2": 2, "linf": np.inf}
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "square", "deepfool", "cw")
L2_ONLY = ("deepfool", "cw")
DEFAULT_ATTACKS = ("apgd-ce", "apgd-dlr")
AUTOATTACK = ("apgd-ce", "apgd-t", "square")       # AutoAttack less FAB-T (module docstring)
TARGETS = 3                                        # APGD-T's target classes per sample
SQUARE_MIN_SIDE = 8                                # ART's Square attack tiles images this large


@dataclass
class RobustAccuracy:
    """The outcome of :func:`robust_accuracy`. ``robust[i]`` is True when sample i is classified
    correctly and no attack of the ensemble found a misclassified point within eps of it.
    ``broken_by[i]`` is ``""`` for a robust sample, ``"clean"`` for one misclassified without
    attack, else the name of the first attack that broke it."""

    accuracy: float                    # % of samples robust
    clean_accuracy: float              # % of samples correct without attack
    robust: torch.Tensor               # (N,) bool
    broken_by: list[str]
    norm: str
    eps: float
    attacks: tuple[str, ...]
    seconds: float
    settings: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many samples each attack broke first (and how many were wrong to begin with)."""
        return {name: self.broken_by.count(name) for name in ("clean", *self.attacks)}


def as_tensors(data: TensorDataset | tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a TensorDataset or a pair of tensors, checked: inputs in [0, 1]."""
    x, y = data.tensors if isinstance(data, TensorDataset) else data
    if len(x) != len(y):
        raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        raise ValueError("no samples to evaluate")
    if not torch.is_floating_point(x):
        raise ValueError(f"inputs must be floating point images in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"inputs must lie in [0, 1] (the attacks clamp to that box); found values "
                         f"in [{lo:.3g}, {hi:.3g}]. Undo any normalisation and put it in the model.")
    return x, y.long()


def check_attack_arguments(norm: str, eps: float, attacks: Sequence[str], classes: int) -> None:
    """Clear errors for an unknown norm or attack, a non-positive eps, or DLR on 2 classes."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive radius, got {eps}")
    if isinstance(attacks, str) or not attacks:
        raise ValueError(f"attacks must be a non-empty sequence of names from {ATTACKS}, "
                         f"got {attacks!r}")
    for name in attacks:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")
        if name in L2_ONLY and norm != "l2":
            raise ValueError(f"attack {name!r} is an l2 attack; it cannot be used with norm={norm!r}")
    for dlr in ("apgd-dlr", "apgd-t"):
        if dlr in attacks and classes < 3:
            raise ValueError(f"{dlr} needs at least 3 classes (DLR divides by z_1 - z_3) and this "
                             f"model has {classes}; use attacks=('apgd-ce', 'square')")


def _classifier(model: nn.Module, input_shape: tuple[int, ...], classes: int, device: str):
    from art.estimators.classification import PyTorchClassifier
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if str(device).startswith("cuda") else "cpu")


def _art_attack(name: str, classifier, norm: str, eps: float, iterations: int, restarts: int,
                batch_size: int):
    from art.attacks.evasion import (AutoProjectedGradientDescent, CarliniL2Method, DeepFool,
                                     SquareAttack)
    if name.startswith("apgd"):
        return AutoProjectedGradientDescent(
            classifier, norm=NORMS[norm], eps=eps, eps_step=2 * eps,     # AutoAttack's first step
            max_iter=iterations, targeted=name == "apgd-t", nb_random_init=restarts,
            batch_size=batch_size,
            loss_type="cross_entropy" if name == "apgd-ce" else "difference_logits_ratio",
            verbose=False)
    if name == "square":
        return SquareAttack(classifier, norm=NORMS[norm], eps=eps, max_iter=10 * iterations,
                            nb_restarts=restarts, batch_size=batch_size, verbose=False)
    if name == "deepfool":
        return DeepFool(classifier, max_iter=iterations, epsilon=0.02, nb_grads=10,
                        batch_size=batch_size, verbose=False)
    return CarliniL2Method(classifier, confidence=0.0, learning_rate=0.01, binary_search_steps=5,
                           max_iter=iterations, batch_size=batch_size, verbose=False)


def nearest_adversarial(model: nn.Module, x: torch.Tensor, iterations: int = 50,
                        device: str = "cpu") -> torch.Tensor:
    """DeepFool's (ART) minimum-norm adversarial of each input, in the box [0, 1]: a point just
    past the nearest decision boundary it finds (an upper bound on the distance to it, so never
    inside a certified ball). For pictures of how far the boundary is, not for robust accuracy."""
    model = model.to(device).eval()
    with torch.no_grad():
        classes = model(x[:1].to(device)).shape[1]
    classifier = _classifier(model, tuple(x.shape[1:]), classes, device)
    attack = _art_attack("deepfool", classifier, "l2", 1.0, iterations, 1, len(x))
    return torch.from_numpy(attack.generate(x.cpu().numpy())).to(x.dtype).clamp(0.0, 1.0)


def clip_to_threat_model(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float
                         ) -> torch.Tensor:
    """The point of the eps-ball around x (and of [0, 1]) that an attack's output stands for:
    project the perturbation onto the ball, then clamp to the box (which cannot leave the ball,
    since x lies in the box)."""
    delta = x_adv - x
    delta = project_l2_ball(delta, eps) if norm == "l2" else delta.clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0)


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """ART draws its random starts from numpy's global stream: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _target(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, device: str
            ) -> torch.Tensor:
    """The ``rank``-th most likely class other than the label (APGD-T's target)."""
    z = model(x.to(device)).cpu()
    z[torch.arange(len(y)), y] = -torch.inf
    return z.argsort(1, descending=True)[:, rank - 1]


def robust_accuracy(model: nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
                    norm: str = "l2", eps: float = 2.0,
                    attacks: Sequence[str] = DEFAULT_ATTACKS, device: str = "cpu",
                    iterations: int = 100, restarts: int = 1, batch_size: int = 500,
                    seed: int = 0, progress: bool | None = None) -> RobustAccuracy:
    """Accuracy (%) under the worst case, per sample, of ``attacks`` at radius ``eps`` in
    ``norm`` ("l2" or "linf"), for inputs in [0, 1]. See the module docstring for the attacks
    and for how every adversarial is checked. Runs on ``device`` in batches of ``batch_size``,
    with a progress bar (``progress=None``: on unless ``LIPCORE_PROGRESS=0``)."""
    x, y = as_tensors(data)
    model = model.to(device).eval()
    with torch.no_grad():
        classes = model(x[:1].to(device)).shape[1]
    attacks = tuple(attacks) if not isinstance(attacks, str) else attacks
    check_attack_arguments(norm, eps, attacks, classes)
    if iterations < 1 or restarts < 1 or batch_size < 1:
        raise ValueError(f"need iterations, restarts and batch_size >= 1; got {iterations}, "
                         f"{restarts}, {batch_size}")
    start = time.perf_counter()
    correct = _predict(model, x, device, batch_size) == y
    robust = correct.clone()
    broken_by = ["" if c else "clean" for c in correct.tolist()]
    classifier = _classifier(model, tuple(x.shape[1:]), classes, device)
    skipped = ("square",) if "square" in attacks and not _is_image(x) else ()
    attacks = tuple(a for a in attacks if a not in skipped)
    tools = {name: _art_attack(name, classifier, norm, eps, iterations, restarts, batch_size)
             for name in attacks}
    chunks = range(0, len(x), batch_size)
    with bar(len(chunks) * len(attacks), f"{'+'.join(attacks)} ({norm}, eps {eps:g})",
             progress) as pbar:
        for i in chunks:
            for k, name in enumerate(attacks):
                for target_rank in range(1, TARGETS + 1 if name == "apgd-t" else 2):
                    idx = torch.nonzero(robust[i:i + batch_size]).flatten() + i
                    if not len(idx) or target_rank >= classes:
                        break
                    aim = _target(model, x[idx], y[idx], target_rank, device) \
                        if name == "apgd-t" else y[idx]
                    with _numpy_seed(seed + 7919 * k + 104729 * target_rank + i), \
                            np.errstate(divide="ignore", invalid="ignore"):   # ART's Square
                        found = tools[name].generate(x=x[idx].numpy(), y=aim.numpy())
                    candidate = torch.from_numpy(found).to(x.dtype)
                    failed = ~torch.isfinite(candidate).flatten(1).all(1)   # NaN: no candidate
                    candidate[failed] = x[idx][failed]
                    checked = clip_to_threat_model(candidate, x[idx], norm, eps)
                    wrong = _predict(model, checked, device, batch_size) != y[idx]
                    for j in idx[wrong].tolist():
                        robust[j] = False
                        broken_by[j] = name
                pbar.update(1)
    model.eval()
    return RobustAccuracy(accuracy=100.0 * int(robust.sum()) / len(robust),
                          clean_accuracy=100.0 * int(correct.sum()) / len(correct), robust=robust,
                          broken_by=broken_by, norm=norm, eps=float(eps), attacks=attacks,
                          seconds=time.perf_counter() - start,
                          settings=dict(iterations=iterations, restarts=restarts, seed=seed,
                                        library="adversarial-robustness-toolbox",
                                        skipped={a: "ART's Square attack needs images of side "
                                                 f">= {SQUARE_MIN_SIDE}" for a in skipped}))


def _is_image(x: torch.Tensor) -> bool:
    """ART's Square attack takes images (N, C, H, W) of side at least SQUARE_MIN_SIDE only."""
    return x.dim() == 4 and min(x.shape[2:]) >= SQUARE_MIN_SIDE
