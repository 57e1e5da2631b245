"""Robust accuracy under strong attacks: per sample, the worst case over a small ensemble.

The attacks come from maintained libraries rather than being written here. AutoAttack's attacks
are its authors' reference implementation (``pyautoattack``, Croce & Hein 2020, the package
RobustBench installs), run with the settings of its standard version:
* ``"apgd-ce"``: APGD on the cross-entropy, with ``restarts`` random starts;
* ``"apgd-dlr"``: APGD on the difference-of-logits ratio, a margin loss that is invariant to the
  scale of the logits, so it still finds adversarials where the cross-entropy saturates (needs
  at least 3 classes);
* ``"apgd-t"``: targeted APGD on the DLR loss towards each of the ``TARGETS`` most likely wrong
  classes in turn;
* ``"fab-t"``: targeted FAB, a minimum-norm attack, towards the same classes;
* ``"square"``: the Square attack, score-based and gradient-free (``50 * iterations`` queries),
  which catches gradient masking.
Two minimum-norm attacks of another kind come from the Adversarial Robustness Toolbox (ART):
* ``"deepfool"``: DeepFool (l2 only);
* ``"cw"``: Carlini-Wagner l2 (slow; l2 only).

``AUTOATTACK`` is AutoAttack's standard protocol: APGD-CE, APGD-T, FAB-T and Square, at 100
iterations (``iterations``), 9 target classes and 5,000 Square queries.

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
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "deepfool", "cw")
AUTOATTACK_FAMILY = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")   # from pyautoattack
L2_ONLY = ("deepfool", "cw")
AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t", "square")   # AutoAttack's standard version
DEFAULT_ATTACKS = AUTOATTACK                       # every robust accuracy lipcore reports
APGD = ("apgd-ce", "apgd-dlr")     # its two white-box APGD runs: the lessons' minute-long budget
TARGETS = 9                                        # APGD-T's and FAB-T's target classes
SQUARE_QUERIES_PER_ITERATION = 50                  # 5,000 queries at 100 iterations
SQUARE_MIN_SIDE = 5                                # Square's l2 start tiles the image in 5 x 5


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


NAMES = {"apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab-t": "FAB-T",
         "square": "Square", "deepfool": "DeepFool", "cw": "CW"}


def describe_attacks(attacks: Sequence[str] = DEFAULT_ATTACKS) -> str:
    """How a robust-accuracy column names its attack: "AutoAttack (APGD-CE, APGD-T, FAB-T,
    Square; reference implementation)" for the standard protocol, else the worst of the list."""
    names = ", ".join(NAMES[a] for a in attacks)
    if tuple(attacks) == AUTOATTACK:
        return f"AutoAttack ({names}; reference implementation)"
    return f"worst of {names}"


def as_tensors(data: TensorDataset | tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a TensorDataset or a pair of tensors, checked: plain tensors (a
    subclass's __torch_function__ inflated a certified margin; a reviewer's hole), inputs in
    [0, 1], labels integer class indices (a float or bool label would be truncated to some
    class)."""
    x, y = data.tensors if isinstance(data, TensorDataset) else data
    odd = [f"{what} ({type(t).__name__})" for what, t in (("inputs", x), ("labels", y))
           if type(t) is not torch.Tensor]
    if odd:              # a Tensor subclass can redefine every operation the model runs on it
        raise ValueError(f"{' and '.join(odd)} must be plain torch.Tensor, not a subclass or "
                         "another type; convert with torch.as_tensor(...).as_subclass("
                         "torch.Tensor)")
    if y.dtype == torch.bool or torch.is_floating_point(y) or torch.is_complex(y):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype} (convert "
                         "them with labels.long() only if they hold whole numbers)")
    if len(x) != len(y):
        raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        raise ValueError("no samples to evaluate")
    if not torch.is_floating_point(x):
        raise ValueError(f"inputs must be floating point images in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"inputs must lie in [0, 1] (the attacks clamp to that box); found "
                         f"values in [{lo:.3g}, {hi:.3g}]. Undo any normalisation and put it in "
                         "the model.")
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
            raise ValueError(f"attack {name!r} is an l2 attack; it cannot be used with "
                             f"norm={norm!r}")
    if "apgd-dlr" in attacks and classes < 3:
        raise ValueError(f"apgd-dlr needs at least 3 classes (DLR divides by z_1 - z_3) and this "
                         f"model has {classes}; use attacks=('apgd-ce', 'fab-t', 'square')")


def inapplicable(attacks: Sequence[str], x: torch.Tensor, classes: int) -> dict[str, str]:
    """{attack: why it cannot run on these inputs or this model}, for the attacks the ensemble
    skips (with the reason recorded) rather than refuses: Square on inputs that are not images,
    APGD-T with fewer than 4 classes. The protocol's other attacks still run."""
    out = {}
    if "square" in attacks and not _is_image(x):
        out["square"] = (f"the Square attack perturbs square windows of images (N, C, H, W) of "
                         f"side >= {SQUARE_MIN_SIDE}; these inputs are not")
    if "apgd-t" in attacks and classes < 4:
        out["apgd-t"] = (f"targeted DLR divides by z_1 - (z_3 + z_4) / 2, so APGD-T needs at "
                         f"least 4 classes; this model has {classes}")
    return out


def _classifier(model: nn.Module, input_shape: tuple[int, ...], classes: int, device: str):
    from art.estimators.classification import PyTorchClassifier
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=input_shape,
                             nb_classes=classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if str(device).startswith("cuda") else "cpu")


def _art_attack(name: str, classifier, iterations: int, batch_size: int):
    from art.attacks.evasion import CarliniL2Method, DeepFool
    if name == "deepfool":
        return DeepFool(classifier, max_iter=iterations, epsilon=0.02, nb_grads=10,
                        batch_size=batch_size, verbose=False)
    return CarliniL2Method(classifier, confidence=0.0, learning_rate=0.01, binary_search_steps=5,
                           max_iter=iterations, batch_size=batch_size, verbose=False)


def _autoattack(name: str, model: nn.Module, norm: str, eps: float, iterations: int,
                restarts: int, classes: int, seed: int, device: str):
    """One attack of AutoAttack's reference implementation, with its standard version's settings
    (``iterations`` steps, ``TARGETS`` target classes, 50 Square queries per iteration)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack
    common = dict(norm={"l2": "L2", "linf": "Linf"}[norm], eps=eps, seed=seed, device=device,
                  verbose=False)
    targets = min(TARGETS, classes - 1)
    if name in ("apgd-ce", "apgd-dlr"):
        return APGDAttack(model, n_iter=iterations, n_restarts=restarts, eot_iter=1, rho=0.75,
                          loss="ce" if name == "apgd-ce" else "dlr", **common)
    if name == "apgd-t":
        return APGDAttack_targeted(model, n_iter=iterations, n_restarts=1, eot_iter=1, rho=0.75,
                                   n_target_classes=targets, **common)
    if name == "fab-t":
        return FABAttack_PT(model, n_iter=iterations, n_restarts=1, targeted=True,
                            n_target_classes=targets, **common)
    return SquareAttack(model, n_queries=SQUARE_QUERIES_PER_ITERATION * iterations, p_init=0.8,
                        n_restarts=1, resc_schedule=False, **common)


def nearest_adversarial(model: nn.Module, x: torch.Tensor, iterations: int = 50,
                        device: str = "cpu") -> torch.Tensor:
    """DeepFool's (ART) minimum-norm adversarial of each input, in the box [0, 1]: a point just
    past the nearest decision boundary it finds (an upper bound on the distance to it, so never
    inside a certified ball). For pictures of how far the boundary is, not for robust accuracy."""
    model = model.to(device).eval()
    with torch.no_grad():
        classes = model(x[:1].to(device)).shape[1]
    classifier = _classifier(model, tuple(x.shape[1:]), classes, device)
    attack = _art_attack("deepfool", classifier, iterations, len(x))
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
def predict(model: nn.Module, x: torch.Tensor, device: str, batch_size: int) -> torch.Tensor:
    """The model's predicted classes for ``x``, ``batch_size`` inputs at a time on ``device``
    (returned on the CPU)."""
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])


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
    correct = predict(model, x, device, batch_size) == y
    robust = correct.clone()
    broken_by = ["" if c else "clean" for c in correct.tolist()]
    skipped = inapplicable(attacks, x, classes)
    attacks = tuple(a for a in attacks if a not in skipped)
    if not attacks:
        raise ValueError(f"none of the attacks applies here: {skipped}")
    attacked = _InModelDtype(model)
    classifier = _classifier(model, tuple(x.shape[1:]), classes, device) \
        if any(a not in AUTOATTACK_FAMILY for a in attacks) else None
    tools = {name: _autoattack(name, attacked, norm, eps, iterations, restarts, classes,
                               seed + 7919 * k, device) if name in AUTOATTACK_FAMILY
             else _art_attack(name, classifier, iterations, batch_size)
             for k, name in enumerate(attacks)}
    chunks = range(0, len(x), batch_size)
    with bar(len(chunks) * len(attacks), f"{'+'.join(attacks)} ({norm}, eps {eps:g})",
             progress) as pbar:
        for i in chunks:
            for k, name in enumerate(attacks):
                idx = torch.nonzero(robust[i:i + batch_size]).flatten() + i
                if len(idx):
                    candidate = _attack(tools[name], name, x[idx], y[idx], seed + 7919 * k + i,
                                        device)
                    failed = ~torch.isfinite(candidate).flatten(1).all(1)   # NaN: no candidate
                    candidate[failed] = x[idx][failed]
                    checked = clip_to_threat_model(candidate, x[idx], norm, eps)
                    wrong = predict(model, checked, device, batch_size) != y[idx]
                    for j in idx[wrong].tolist():
                        robust[j] = False
                        broken_by[j] = name
                pbar.update(1)
    model.eval()
    libraries = sorted({"pyautoattack" if a in AUTOATTACK_FAMILY else
                        "adversarial-robustness-toolbox" for a in attacks})
    return RobustAccuracy(accuracy=100.0 * int(robust.sum()) / len(robust),
                          clean_accuracy=100.0 * int(correct.sum()) / len(correct), robust=robust,
                          broken_by=broken_by, norm=norm, eps=float(eps), attacks=attacks,
                          seconds=time.perf_counter() - start,
                          settings=dict(iterations=iterations, restarts=restarts, seed=seed,
                                        targets=min(TARGETS, classes - 1),
                                        square_queries=SQUARE_QUERIES_PER_ITERATION * iterations,
                                        library=", ".join(libraries),
                                        skipped=skipped))


class _InModelDtype(nn.Module):
    """The model with float32 inputs and outputs, whatever its own dtype: AutoAttack's
    implementation computes in float32 (the checked adversarials are then judged by the model as
    the user runs it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _attack(tool, name: str, x: torch.Tensor, y: torch.Tensor, seed: int, device: str
            ) -> torch.Tensor:
    """One attack's candidates for (x, y), on the CPU in x's dtype. AutoAttack's attacks reseed
    torch's global generator: fork it, so the caller's stream is left as it was."""
    if name in AUTOATTACK_FAMILY:
        cuda = [torch.cuda.current_device()] if str(device).startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda):
            tool.seed = seed
            found = tool.perturb(x.to(device, torch.float32), y.to(device))
        return found.detach().cpu().to(x.dtype)
    with _numpy_seed(seed), np.errstate(divide="ignore", invalid="ignore"):
        return torch.from_numpy(tool.generate(x=x.numpy(), y=y.numpy())).to(x.dtype)


def _is_image(x: torch.Tensor) -> bool:
    """The Square attack takes images (N, C, H, W) of side at least SQUARE_MIN_SIDE only."""
    return x.dim() == 4 and min(x.shape[2:]) >= SQUARE_MIN_SIDE
