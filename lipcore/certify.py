"""Certified accuracy from sound Lipschitz bounds.

If the logit map f is L-Lipschitz in l2, each logit difference z_y - z_j is sqrt(2) L-Lipschitz
(the row e_y - e_j has norm sqrt(2)). So no x' with ||x' - x||_2 < r(x) changes the class, where

    r(x) = (z_y - max_{j != y} z_j) / (sqrt(2) L)     for a correctly classified x, else 0,

and x is certified at radius eps when r(x) > eps. With pairwise constants L_ij of z_i - z_j
(LipLT's, for example) the radius is min_{j != y} (z_y - z_j) / L_yj, which is never smaller.
Margins are computed in float64 on a copy of the model, so the certificate concerns the net's
exact-arithmetic function. A certificate is only as good as its bound: :func:`lipschitz_bound`
returns only bounds that hold by construction (LipSDP-neuron's certified value, or the layer-wise
product with exact and DFT-computed norms), never a power-iteration estimate.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .attacks.ensemble import as_tensors
from .estimators import liplt, lipsdp
from .estimators.layerwise import layer_bound, layerwise_bound
from .estimators.liplt_ops import liplt_bounds, operator_chain, sound_norms
from .models import ACTIVATIONS, FullyConnected, PooledMLP, from_weights

BOUND_METHODS = {"lipsdp": "LipSDP-neuron", "liplt": "LipLT", "naive": "naive (layer-wise product)"}


@dataclass
class LipschitzBound:
    """A sound upper bound on the l2 Lipschitz constant of a model's logit map."""

    value: float
    method: str            # "lipsdp" or "naive"
    label: str             # what a table or legend says
    seconds: float


def _plain_dense(model: nn.Module) -> FullyConnected | None:
    """A user's plain ``nn.Sequential`` of [Flatten,] Linear, activation, ..., Linear (one
    activation type of ACTIVATIONS) as a FullyConnected net with the same weights, else None."""
    if not isinstance(model, nn.Sequential):
        return None
    layers = [m for m in model if not isinstance(m, nn.Flatten)]
    names = {a.module: name for name, a in ACTIVATIONS.items()}
    acts = {type(m) for m in layers[1::2]}
    if (len(layers) < 3 or len(layers) % 2 == 0 or len(acts) != 1 or acts - names.keys()
            or not all(isinstance(m, nn.Linear) and m.bias is not None for m in layers[0::2])):
        return None
    linears = layers[0::2]
    return from_weights([m.weight.detach().cpu().double().numpy() for m in linears],
                        [m.bias.detach().cpu().double().numpy() for m in linears],
                        names[acts.pop()])


def _mlp_core(model: nn.Module) -> tuple[FullyConnected, float, float]:
    """(fully connected core, factor of the layers before it, factor of those after it): a
    PooledMLP's pooling comes before; an output activation (with_output_activation) after; a
    plain dense ``nn.Sequential`` is its own core."""
    if isinstance(model, FullyConnected):
        return model, 1.0, 1.0
    dense = _plain_dense(model)
    if dense is not None:
        return dense, 1.0, 1.0
    if isinstance(model, PooledMLP):
        return model.mlp, layer_bound(model.pool, (1, 28, 28)), 1.0
    if isinstance(model, nn.Sequential) and len(model) == 2:
        core, pre, post = _mlp_core(model[0])
        slopes = {a.module: a.beta for a in ACTIVATIONS.values()}
        if type(model[1]) in slopes:
            return core, pre, post * slopes[type(model[1])]
    raise ValueError(f"LipSDP and LipLT (here) need a fully connected net (FullyConnected, "
                     f"PooledMLP, optionally with an output activation, or an nn.Sequential of "
                     f"Linear layers with one activation type between them), not this "
                     f"{type(model).__name__}; use method='liplt' (plain conv nets) or "
                     f"method='naive' (any net)")


def lipschitz_bound(model: nn.Module, method: str = "lipsdp",
                    input_shape: tuple[int, ...] | None = None) -> LipschitzBound:
    """A sound l2 Lipschitz bound of ``model``'s outputs: ``"lipsdp"`` (LipSDP-neuron) or
    ``"liplt"`` (LipLT, Theorem 3.3) on the fully connected core, times the sound factors of
    pooling before it and an output activation after it; ``"liplt"`` on a plain conv net uses the
    sound operator version (:mod:`lipcore.estimators.liplt_ops`); ``"naive"`` is the product of
    sound layer bounds, for dense and conv nets. Conv nets need ``input_shape`` (no batch axis)."""
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {method!r}; choose one of {sorted(BOUND_METHODS)}")
    start = time.perf_counter()
    try:
        core, pre, post = _mlp_core(model)
    except ValueError as not_dense:
        core, why = None, not_dense
    if method == "liplt" and core is None:
        if input_shape is None:
            raise ValueError("method='liplt' on a conv net needs input_shape (without the batch axis)")
        chain = operator_chain(model, input_shape)
        value = float(liplt_bounds(chain, sound_norms(chain), sound=True).L)
    elif method in ("lipsdp", "liplt"):
        if core is None:
            raise why
        alpha, beta = core.slope_bounds
        inner = lipsdp(core.weights(), alpha, beta, coupling="neuron").bound \
            if method == "lipsdp" else float(liplt(core.weights(), alpha, beta).L)
        value = pre * inner * post
    else:
        if input_shape is None:
            if core is None:
                raise why
            if core is not model and any(m is core for m in model.modules()):   # pooling first
                raise ValueError("method='naive' needs input_shape for this model")
            input_shape = (core.widths[0],)
        value = layerwise_bound(model, input_shape)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the {BOUND_METHODS[method]} bound of this model is {value}, not a "
                         "finite positive number (all-zero or non-finite weights?); it cannot "
                         "certify anything")
    return LipschitzBound(float(value), method, BOUND_METHODS[method],
                          time.perf_counter() - start)


def validated_bound(lipschitz: float | np.ndarray | torch.Tensor, classes: int) -> torch.Tensor:
    """``lipschitz`` as a float64 tensor a certificate may use, or a ValueError that names what
    is wrong: a bound must be finite and positive (a zero, negative or NaN bound would make every
    margin a certificate), and a pairwise matrix must be (C, C) for the model's C classes with
    finite, positive off-diagonal entries (its diagonal, z_i - z_i = 0, is not used)."""
    try:
        bound = torch.as_tensor(lipschitz, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"the Lipschitz bound must be a number or a (C, C) matrix of "
                         f"numbers, got {type(lipschitz).__name__}") from exc
    if bound.dim() == 0:
        if not torch.isfinite(bound) or bound <= 0:
            raise ValueError(f"the Lipschitz bound must be a finite positive number, got "
                             f"{float(bound)}; a zero, negative or non-finite bound certifies "
                             "nothing (use a sound bound: lipschitz_bound(model))")
        return bound
    if bound.shape != (classes, classes):
        raise ValueError(f"pairwise Lipschitz bounds must be a ({classes}, {classes}) matrix for "
                         f"a model with {classes} classes, got shape {tuple(bound.shape)}")
    off = ~torch.eye(classes, dtype=torch.bool)
    bad = off & ~(torch.isfinite(bound) & (bound > 0))
    if bad.any() or not torch.isfinite(bound.diagonal()).all():
        i, j = (int(k) for k in bad.nonzero()[0]) if bad.any() else (0, 0)
        raise ValueError(f"pairwise Lipschitz bounds must be finite and positive off the "
                         f"diagonal, got L[{i}, {j}] = {float(bound[i, j])} "
                         f"({int(bad.sum())} bad entries); such a matrix certifies nothing")
    return bound


def certified_radii(model: nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
                    lipschitz: float | np.ndarray | torch.Tensor, device: str = "cpu",
                    batch_size: int = 1000) -> torch.Tensor:
    """The certified l2 radius of every sample (module docstring): 0 where the model is wrong
    or its top logits tie (an argmax tie-break is no margin). ``lipschitz`` is a sound bound L
    of the whole logit map, or a (C, C) matrix of sound pairwise bounds L_ij of z_i - z_j; both
    are validated (:func:`validated_bound`), and non-finite logits raise a ValueError."""
    x, y = as_tensors(data)
    exact = copy.deepcopy(model).double().to(device).eval()
    radii, pairwise = [], None
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            z = exact(x[i:i + batch_size].to(device).double()).cpu()
            if z.dim() != 2 or z.shape[1] < 2:
                raise ValueError(f"certificates need a (batch, classes) logit output with at "
                                 f"least 2 classes, got shape {tuple(z.shape)}")
            if pairwise is None:
                pairwise = validated_bound(lipschitz, z.shape[1])
                scale = math.sqrt(2) * pairwise if pairwise.dim() == 0 else pairwise
            if not torch.isfinite(z).all():
                raise ValueError(f"the model's logits are not finite (NaN or inf) for samples "
                                 f"{i}..{i + len(z) - 1}; a certificate needs finite logits")
            labels = y[i:i + batch_size]
            if labels.min() < 0 or labels.max() >= z.shape[1]:
                raise ValueError(f"labels must lie in 0..{z.shape[1] - 1} for a model with "
                                 f"{z.shape[1]} classes, got {int(labels.min())}..{int(labels.max())}")
            radii.append(margin_radii(z, labels, scale).min(1).values.clamp_min(0.0))
    return torch.cat(radii)


def margin_radii(logits: torch.Tensor, labels: torch.Tensor, pairwise: torch.Tensor
                 ) -> torch.Tensor:
    """R_j = (z_y - z_j) / L_yj for every sample and class, +inf at j = y. ``pairwise`` is a
    (C, C) matrix of bounds on z_i - z_j, or one number for every pair (sqrt(2) L). The
    certified radius is min_j R_j; CRM's loss uses the R_j themselves (differentiably: the zero
    diagonal of L is clamped so that no 0/0 enters the graph)."""
    gaps = logits.gather(1, labels[:, None]) - logits
    scale = pairwise[labels] if pairwise.dim() == 2 else pairwise
    return (gaps / scale.clamp_min(1e-12)).scatter(1, labels[:, None], math.inf)


def _validated_radii(radii: torch.Tensor) -> torch.Tensor:
    radii = torch.as_tensor(radii)
    if radii.dim() != 1 or len(radii) == 0:
        raise ValueError(f"radii must be a non-empty 1-D tensor (one per sample), got shape "
                         f"{tuple(radii.shape)}")
    if torch.isnan(radii).any() or (radii < 0).any():
        raise ValueError("radii must be non-negative numbers (certified_radii's output); found "
                         f"{int(torch.isnan(radii).sum())} NaN and {int((radii < 0).sum())} negative")
    return radii


def _validated_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) \
            or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite non-negative radius, got {eps!r}")
    return float(eps)


def check_certificates(radii: torch.Tensor, robust: torch.Tensor, eps: float, what: str) -> None:
    """Raise if an attack broke a point certified at ``eps``: ``radii`` are certified radii
    and ``robust`` the attack's per-sample outcome (bool) on the first ``len(robust)`` of the
    same points. A broken certificate means an unsound bound, so no number may be reported."""
    radii, eps = _validated_radii(radii), _validated_eps(eps)
    robust = torch.as_tensor(robust)
    if robust.dim() != 1 or robust.dtype != torch.bool or len(robust) > len(radii):
        raise ValueError(f"robust must be a 1-D bool tensor over the first samples of radii "
                         f"(at most {len(radii)}), got {robust.dtype} of shape {tuple(robust.shape)}")
    certified = radii[:len(robust)] > eps
    broken = int((certified & ~robust.to(certified.device)).sum())
    if broken:
        raise RuntimeError(f"{what}: an attack broke {broken} point(s) certified at eps {eps:g}; "
                           "the bound is not sound")


def certified_accuracy(radii: torch.Tensor, eps: float) -> float:
    """% of samples whose certified radius exceeds ``eps`` (strictly: a radius equal to eps
    does not certify)."""
    radii, eps = _validated_radii(radii), _validated_eps(eps)
    return 100.0 * int((radii > eps).sum()) / len(radii)


def certified_fraction_curve(radii: torch.Tensor, radii_grid: np.ndarray) -> np.ndarray:
    """% of samples certified at each radius of ``radii_grid`` (for certified-radius figures)."""
    return np.array([certified_accuracy(radii, float(r)) for r in radii_grid])
