"""Certified accuracy from sound Lipschitz bounds.

If the logit map f is L-Lipschitz in l2, each logit difference z_y - z_j is sqrt(2) L-Lipschitz
(the row e_y - e_j has norm sqrt(2)). So no x' with ||x' - x||_2 < r(x) changes the class, where

    r(x) = (z_y - max_{j != y} z_j) / (sqrt(2) L)     for a correctly classified x, else 0,

and x is certified at radius eps when r(x) > eps. With pairwise constants L_ij of z_i - z_j
(LipLT's, for example) the radius is min_{j != y} (z_y - z_j) / L_yj, which is never smaller.
Float arithmetic falls on the safe side: a point is certified only if the model as the user runs
it (its dtype, its device) predicts the label with a strict margin, and the float64 margin less an
allowance for the logits' float error exceeds the bound times the radius
(:func:`certified_radii`): the error measured at x, and a proof of the rounding anywhere in the
ball (:mod:`lipcore.rounding`); bounds are rounded up (:func:`round_up`). A certificate is only
as good as its bound: :func:`lipschitz_bound` returns only bounds that hold by construction
(LipSDP-neuron's certified value, LipLT with exact or Gram-proved norms, the layer-wise product
with exact and DFT-computed norms), never a power-iteration estimate, and only for models whose
chain of operators :func:`lipcore.trace.trace` has extracted and checked.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .attacks.ensemble import as_tensors
from .estimators import liplt, lipsdp
from .estimators.compositional import compositional_bound
from .estimators.layerwise import op_bound
from .estimators.liplt_ops import liplt_bounds, operator_chain
from .estimators.liplt_sound import sound_norms
from .graph import Graph
from . import onelip, pristine
from .margins import margin_radii
from .rounding import convolution_caveat, product_unit, rounding_error
from .trace import (Chain, NotAnalysable, batch_norm_scale, eval_mode, float64_copy,
                    model_dtype_device, trace, weights_digest)

FLOAT_ALLOWANCE = 1e-9     # relative: float64 SVDs, Cholesky proofs and FFTs err by ~1e-12 here
LOGIT_ERROR_FACTOR = 4     # the logits' float error at x is allowed this many times over ...
LOGIT_ERROR_ULPS = 64      # ... plus this many machine epsilons of the largest logit
BOUND_METHODS = {"lipsdp": "LipSDP-neuron", "compositional": "compositional (ECLipsE-Fast, scaled)",
                 "liplt": "LipLT", "naive": "naive (layer-wise product)"}


@dataclass
class LipschitzBound:
    """A sound upper bound on the l2 Lipschitz constant of a model's logit map."""

    value: float
    method: str            # "lipsdp" or "naive"
    label: str             # what a table or legend says
    seconds: float
    input_shape: tuple[int, ...]   # the inputs it holds for (a conv's norm grows with its grid)
    weights: str                   # the digest of the net it read (trace.weights_digest)


def dense_core(chain: Chain) -> tuple[list[np.ndarray], float, float, float, float]:
    """(W^0 ... W^l, alpha, beta, pre, post) of a traced net whose affine layers are all dense,
    with one activation between consecutive ones: the fully connected core LipSDP and LipLT
    read, the sound factor ``pre`` of the layers before it (pooling, activations) and ``post`` of
    those after it (an output activation). A BatchNorm inside the core is folded into the dense
    layer next to it (diag(s) W after it, W diag(s) before it: the same function), and dense
    layers with no activation between them are multiplied into one (the same linear map; read
    as two, the identity between them would be bounded as if in the activations' sector, which
    an all-sigmoid net's [0, 1/4] does not hold). [alpha, beta]
    is the hull of the core's activations' slope bounds (widened to [0, beta] where every one
    is linear, alpha = beta, which LipSDP's sector cannot hold). Every layer of the core must
    act on flat inputs, shape (n,): a Linear on a (c, n) input maps each row, and a BatchNorm1d
    there scales the rows, not the features the folding assumes. Raises a ValueError saying
    why a net has no such core."""
    ops = [op for op in chain.ops if op.kind not in ("reshape", "identity")]
    affine = [i for i, op in enumerate(ops) if op.kind == "affine"]
    if not affine or any(not isinstance(ops[i].module, nn.Linear) for i in affine):
        raise ValueError("the bounds of a dense core (LipSDP, compositional, LipLT's dense "
                         "form) need a fully connected net; this one has convolutions (use "
                         "method='liplt' with input_shape, or 'naive')")
    first, last = affine[0], affine[-1]
    unflat = next((op for op in ops[first:last + 1] if len(op.in_shape) != 1), None)
    if unflat is not None:
        raise ValueError(f"the bounds of a dense core need the dense layers to act on flat "
                         f"inputs; a {type(unflat.module).__name__} here sees inputs of shape "
                         f"{unflat.in_shape} (put nn.Flatten() before the first Linear, or use "
                         "method='naive')")
    weights, acts, pending = [], [], None        # pending: a BatchNorm scale awaiting its layer
    for op in ops[first:last + 1]:
        if op.kind == "affine":
            W = op.module.weight.detach().cpu().double()
            W = (W * pending if pending is not None else W).numpy()
            if len(weights) > len(acts):                      # no activation since the last one
                weights[-1] = W @ weights[-1]
            else:
                weights.append(W)
            pending = None
        elif op.kind == "scale" and pending is None:
            s = batch_norm_scale(op.module).cpu()
            if len(weights) > len(acts):                      # right after a dense layer
                weights[-1] = s[:, None].numpy() * weights[-1]
            else:
                pending = s
        elif op.kind == "activation" and len(weights) == len(acts) + 1:
            acts.append(op)
        else:
            raise ValueError("LipSDP and LipLT (dense) need exactly one elementwise, slope-"
                             "restricted activation between consecutive dense layers (GroupSort "
                             "is not elementwise), and no pooling inside the dense part")
    pre = math.prod(op_bound(op) for op in ops[:first])
    post = math.prod(op_bound(op) for op in ops[last + 1:])
    alpha = min((op.alpha for op in acts), default=0.0)
    beta = max((op.beta for op in acts), default=1.0)
    return weights, min(alpha, 0.0) if alpha >= beta else alpha, beta, pre, post


def round_up(value: float) -> float:
    """A bound computed in floating point, moved up by the stated relative allowance
    FLOAT_ALLOWANCE and one more unit in the last place, so rounding never lands below."""
    return math.nextafter(value * (1 + FLOAT_ALLOWANCE), math.inf)


def lipschitz_bound(model: nn.Module, method: str = "lipsdp",
                    input_shape: tuple[int, ...] | None = None) -> LipschitzBound:
    """A sound l2 Lipschitz bound of ``model``'s outputs, read from its verified chain of
    operators (:func:`lipcore.trace.trace`, which refuses any layer, container or parameter it
    cannot prove): ``"lipsdp"`` (LipSDP-neuron), ``"compositional"`` (ECLipsE-Fast's closed-form
    multipliers with their best common scale, certified: LipSDP's start) or ``"liplt"`` (LipLT,
    Theorem 3.3) on the fully connected core times the sound factors of the layers before and
    after it; ``"liplt"`` on a conv net uses the sound operator version
    (:mod:`lipcore.estimators.liplt_sound`); ``"naive"`` is the product of sound layer bounds.
    Conv nets need ``input_shape`` (no batch axis). The value is rounded up (:func:`round_up`);
    the model's train/eval mode is left as it was. Refused while torch's functions are not its
    own (:func:`lipcore.pristine.check`: a mode, autocast or a patched function)."""
    if method not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {method!r}; choose one of {sorted(BOUND_METHODS)}")
    pristine.check("lipschitz_bound", ("cpu", *{t.device.type for t in model.parameters()}))
    start = time.perf_counter()
    chain = trace(model, input_shape)
    if isinstance(chain, Graph):
        if method != "naive":
            raise ValueError(f"this model has skip connections; method={method!r} needs a plain "
                             "chain of layers (use method='naive', the layer-wise bound through "
                             "the graph)")
        value = chain.bound()
    elif method == "naive":
        value = math.prod(op_bound(op) for op in chain.ops)
    else:
        try:
            weights, alpha, beta, pre, post = dense_core(chain)
        except ValueError as not_dense:
            if method != "liplt":
                raise ValueError(f"{not_dense}; method={method!r} needs a fully connected "
                                 "core") from None
            ops = operator_chain(model, chain.input_shape)
            value = float(liplt_bounds(ops, sound_norms(ops), sound=True).L)
        else:
            value = pre * post * _core_bound(method, weights, alpha, beta)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the {BOUND_METHODS[method]} bound of this model is {value}, not a "
                         "finite positive number (all-zero weights?); it cannot certify anything")
    return LipschitzBound(round_up(float(value)), method, BOUND_METHODS[method],
                          time.perf_counter() - start, tuple(chain.input_shape),
                          weights_digest(model))


def _core_bound(method: str, weights: list[np.ndarray], alpha: float, beta: float) -> float:
    """The bound of a fully connected core W^0 ... W^l with activations in [alpha, beta]."""
    if len(weights) == 1:                       # a linear map: its spectral norm
        return float(np.linalg.norm(weights[0], 2))
    if method == "lipsdp":
        return lipsdp(weights, alpha, beta, coupling="neuron").bound
    if method == "compositional":
        return compositional_bound(weights, alpha, beta).bound
    return float(liplt(weights, alpha, beta).L)


def validated_bound(lipschitz: float | np.ndarray | torch.Tensor, classes: int) -> torch.Tensor:
    """``lipschitz`` as a float64 tensor a certificate may use, or a ValueError that names what
    is wrong: a bound must be a finite positive number (not a bool: a zero, negative or NaN bound
    would make every margin a certificate), and a pairwise matrix must be (C, C) for the model's
    C classes, symmetric (L_ij bounds z_i - z_j and so z_j - z_i) with finite, positive entries
    off the diagonal and a finite, non-negative diagonal (z_i - z_i = 0, not used)."""
    if isinstance(lipschitz, (bool, np.bool_)) or (
            isinstance(lipschitz, (np.ndarray, torch.Tensor))
            and lipschitz.dtype in (np.bool_, torch.bool)):
        raise ValueError("the Lipschitz bound must be a number or a (C, C) matrix of numbers, "
                         "not a bool")
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
    if bad.any():
        i, j = (int(k) for k in bad.nonzero()[0])
        raise ValueError(f"pairwise Lipschitz bounds must be finite and positive off the "
                         f"diagonal, got L[{i}, {j}] = {float(bound[i, j])} "
                         f"({int(bad.sum())} bad entries); such a matrix certifies nothing")
    diagonal = bound.diagonal()
    if not (torch.isfinite(diagonal) & (diagonal >= 0)).all():
        raise ValueError(f"the diagonal of a pairwise bound matrix must be finite and "
                         f"non-negative (z_i - z_i = 0), got {diagonal.tolist()}")
    if not torch.equal(bound, bound.T):
        i, j = (int(k) for k in (bound != bound.T).nonzero()[0])
        raise ValueError(f"a pairwise bound matrix must be symmetric (L_ij bounds both z_i - z_j "
                         f"and z_j - z_i), got L[{i}, {j}] = {float(bound[i, j])} but "
                         f"L[{j}, {i}] = {float(bound[j, i])}; use torch.maximum(L, L.T) if "
                         "both are sound")
    return bound


def certified_radii(model: nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
                    lipschitz: float | np.ndarray | torch.Tensor | LipschitzBound,
                    device: str = "cpu", batch_size: int = 1000) -> torch.Tensor:
    """The certified l2 radius of every sample (module docstring). ``lipschitz`` is a sound bound
    L of the whole logit map, or a (C, C) matrix of sound pairwise bounds L_ij of z_i - z_j; both
    are validated (:func:`validated_bound`), and non-finite logits raise a ValueError. Pass the
    :class:`LipschitzBound` itself where you have it: one computed for another input shape or
    from other weights (the model trained on since) is then refused; a plain number is trusted
    to hold for this model and the data's shape (the norm of a conv, or of a net with global
    pooling, depends on the image size).

    The radius is 0 unless the model *as the user runs it* (its own dtype and device, in eval
    mode) predicts the label with a strict margin. The margins are computed in float64 on a copy
    of the model, less an allowance for the float error of the logits: twice (one per logit)
    LOGIT_ERROR_FACTOR times the gap between the user's and the float64 logits at x, plus
    LOGIT_ERROR_ULPS machine epsilons of the model's dtype times the largest logit, plus sqrt(2)
    times a proved bound of the logits' rounding anywhere in the ball, in the model's dtype and
    in float64 at x (:func:`lipcore.rounding.rounding_error`, on the model's traced chain; a
    deel-torchlip net is analysed through its checked export, :func:`lipcore.onelip.export`; a
    model lipcore cannot trace is refused). A radius that overflows raises a ValueError instead
    of certifying an infinite ball, and a call under ``torch.autocast``, a torch function or
    dispatch mode or with a patched torch function or flushed subnormals is refused
    (:func:`lipcore.pristine.check`: the model would not compute what its weights say)."""
    x, y = as_tensors(data)
    shape = tuple(x.shape[1:])
    dtype, user_device = model_dtype_device(model)
    pristine.check("certified_radii", (torch.device(user_device).type, torch.device(device).type))
    if isinstance(lipschitz, LipschitzBound) and lipschitz.input_shape != shape:
        raise ValueError(f"certified_radii: the bound holds for inputs of shape "
                         f"{lipschitz.input_shape}, the data's are {shape}; compute it with "
                         "lipschitz_bound(model, method, input_shape) for the data's shape")
    try:
        analysed = onelip.export(model, shape) if onelip.uses_library(model) else model
        net = trace(analysed, shape)
    except NotAnalysable as exc:
        raise NotAnalysable(f"certified_radii proves the model's rounding over each ball from "
                            f"its traced layers, and cannot analyse this model: {exc}") from exc
    if isinstance(lipschitz, LipschitzBound):
        if lipschitz.weights != weights_digest(analysed):
            raise ValueError("certified_radii: the bound was computed from another net than "
                             "the model now (other weights, layers or settings: trained on "
                             "since, or another model); compute it again with lipschitz_bound "
                             "on the model as it is")
        lipschitz = lipschitz.value
    products = product_unit(dtype, user_device)
    caveat = convolution_caveat(net, user_device) or convolution_caveat(net, device)
    if caveat:
        warnings.warn(f"certified_radii: {caveat}", stacklevel=2)
    rounds_input = torch.finfo(x.dtype).eps < torch.finfo(dtype).eps if \
        torch.is_floating_point(x) else False
    exact = float64_copy(analysed, device)
    unit = torch.finfo(dtype).eps
    radii, pairwise = [], None
    with torch.no_grad(), eval_mode(model):
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            z = exact(batch.to(device).double()).cpu()
            # a copy: an in-place first layer (ReLU(inplace=True)) would overwrite the data
            z_user = model(batch.to(user_device, dtype, copy=True)).double().cpu()
            if z.dim() != 2 or z.shape[1] < 2:
                raise ValueError(f"certificates need a (batch, classes) logit output with at "
                                 f"least 2 classes, got shape {tuple(z.shape)}")
            if pairwise is None:
                pairwise = validated_bound(lipschitz, z.shape[1])
                scale = math.sqrt(2) * pairwise if pairwise.dim() == 0 else pairwise
            if not (torch.isfinite(z).all() and torch.isfinite(z_user).all()):
                raise ValueError(f"the model's logits are not finite (NaN or inf) for samples "
                                 f"{i}..{i + len(z) - 1}; a certificate needs finite logits")
            labels = y[i:i + batch_size]
            if labels.min() < 0 or labels.max() >= z.shape[1]:
                raise ValueError(f"labels must lie in 0..{z.shape[1] - 1} for a model with "
                                 f"{z.shape[1]} classes, got "
                                 f"{int(labels.min())}..{int(labels.max())}")
            error = (LOGIT_ERROR_FACTOR * (z_user - z).abs().amax(1)
                     + LOGIT_ERROR_ULPS * unit * z.abs().amax(1).clamp_min(1.0))
            user_right = margin_radii(z_user, labels, torch.tensor(1.0)).min(1).values > 0
            r = margin_radii(z, labels, scale, allowance=2 * error).min(1).values
            if not torch.isfinite(r[user_right]).all():
                raise ValueError("a certified radius overflows float64 (a huge margin over a tiny "
                                 "Lipschitz bound); no finite radius can be reported")
            # rounding anywhere in the ball of radius r (the final radius is smaller, so its
            # ball is inside), and that of the float64 margin at x
            ball = torch.where(user_right, r.clamp_min(0.0), torch.zeros_like(r))
            rounding = (rounding_error(net, batch, ball, dtype, products, rounds_input)
                        + rounding_error(net, batch, 0.0, torch.float64))
            if not torch.isfinite(rounding[user_right]).all():
                warnings.warn(f"certified_radii: the rounding of this model in {dtype} cannot be "
                              "bounded at some points (a value may overflow, or a layer has "
                              "too many inputs for the precision); they are not certified",
                              stacklevel=2)
            r = margin_radii(z, labels, scale,
                             allowance=2 * error + math.sqrt(2) * rounding).min(1).values
            radii.append(torch.where(user_right, r.clamp_min(0.0), torch.zeros_like(r)))
    return torch.cat(radii)


def _validated_radii(radii: torch.Tensor) -> torch.Tensor:
    radii = torch.as_tensor(radii)
    if radii.dim() != 1 or len(radii) == 0:
        raise ValueError(f"radii must be a non-empty 1-D tensor (one per sample), got shape "
                         f"{tuple(radii.shape)}")
    if torch.isnan(radii).any() or (radii < 0).any():
        raise ValueError("radii must be non-negative numbers (certified_radii's output); found "
                         f"{int(torch.isnan(radii).sum())} NaN and "
                         f"{int((radii < 0).sum())} negative")
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
                         f"(at most {len(radii)}), got {robust.dtype} of shape "
                         f"{tuple(robust.shape)}")
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
