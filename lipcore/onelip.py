"""Nets built from a 1-Lipschitz layer library (deel-torchlip): bounded as they run, their
labels checked.

A deel-torchlip layer computes its weights as it runs (spectral normalisation by power iteration,
then Bjorck orthonormalisation), so lipcore does not read it directly. :func:`export` converts the
net with the library's own ``vanilla_model`` into torch layers holding the weights it runs with,
only where every layer it replaces is one of the library's own classes, and refuses the export
unless it computes the same outputs as the original on random inputs.
Every bound then reads the export; deel-torchlip's GroupSort activations and scaled average
pooling are layers lipcore knows (:data:`lipcore.trace.LIBRARY_LEAVES`).

A layer's label ("K-Lipschitz") is a claim, not a proof: power iteration stops early, and the norm
of a conv's reshaped kernel is not the norm of the convolution. :func:`claims` checks every layer
that makes one, at the input shape it sees in the net: lipcore's sound upper bound of the exported
layer, and a lower bound (power iteration on its Jacobian J at a random point: every ||J v|| / ||v||
is one). The verdict is ``holds`` when the upper bound is at most K, ``violated``
when the lower bound exceeds K, and ``unproved`` in between. Both bounds carry a float allowance
(the upper one rounds up, the lower one is moved down by ROUNDING), so a layer that is exactly
K-Lipschitz (a scaled global average pool, an orthogonal matrix) may have its upper bound a few
ulps above K: within ROUNDING of K counts as ``holds``, and the verdict says so.
"""
from __future__ import annotations

import copy
import math
import sys

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from .trace import (DEEL_TORCHLIP, NotAnalysable, claimed_constant, eval_mode, layer_shapes,
                    foreign_refusal, model_dtype_device, tampered)

AGREEMENT_POINTS = 8          # random inputs on which an export must match the original ...
AGREEMENT_ULPS = 16           # ... to this many machine epsilons of its largest output: the same
                              # weights and operations differ by rounding only, which the
                              # certificate's float allowance (LOGIT_ERROR_ULPS = 64) covers
POWER_STEPS = 100             # power iterations of a layer's lower bound
ROUNDING = 1e-9               # relative float allowance of both bounds in a verdict


def uses_library(model: nn.Module) -> bool:
    """Whether any module of ``model`` comes from deel-torchlip."""
    return any(type(m).__module__.startswith(DEEL_TORCHLIP) for m in model.modules())


def export(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` in plain torch layers (deel-torchlip's ``vanilla_model``), in eval
    mode, refused (:class:`NotAnalysable`) unless every layer it replaces is the library's own
    (:func:`_export_refusal`) and it computes the model's outputs on random inputs of
    ``input_shape`` (no batch axis) to rounding (AGREEMENT_ULPS)."""
    from deel.torchlip import vanilla_model
    why = _export_refusal(model)
    if why:
        raise NotAnalysable(why)
    plain = copy.deepcopy(model).eval()
    if hasattr(plain, "vanilla_export"):                # deel's Sequential: vanilla_model keeps it
        plain = plain.vanilla_export()
    return agreeing(model, vanilla_model(plain, in_place=True).eval(), input_shape)


def _library_class(m: nn.Module) -> bool:
    """Whether ``m``'s exact class (or the one torch.nn.utils.parametrize subclassed for it) is
    one deel-torchlip defines."""
    cls = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
    return (cls.__module__.startswith(DEEL_TORCHLIP + ".")
            and getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is cls)


def _export_refusal(model: nn.Module) -> str | None:
    """Why the library's export of ``model`` may not compute what the model does, or None.
    ``vanilla_model`` replaces every module with a ``vanilla_export`` method and bakes every
    parametrisation, whatever its class: a user's layer whose export drops part of its forward
    was certified on the export's bound (a reviewer's hole; agreement at random points is not a
    proof). So every module must be one of the library's own classes or a parametrisation's
    torch or library module, both untampered (:func:`lipcore.trace.tampered`, :func:`lipcore.
    trace.foreign_refusal`), or a module the export keeps as it is (no ``vanilla_export``, no
    parametrisation), which the trace of the export then checks on its copy (a copy drops an
    instance's ``_compiled_call_impl``, so that one is not seen on a kept module)."""
    inside = {id(p) for m in model.modules() if parametrize.is_parametrized(m)
              for p in m.parametrizations.modules()}
    for path, m in model.named_modules():
        own = _library_class(m) or (id(m) in inside and type(m).__module__.startswith(
            ("torch.nn.utils.parametriz", "torch.nn.modules.container")))
        if not own and (id(m) in inside or hasattr(m, "vanilla_export")
                        or parametrize.is_parametrized(m)):
            return (f"{path or 'the model'} ({type(m).__qualname__}) is not a deel-torchlip "
                    "class, but the library's export would replace it or bake its weights (a "
                    "vanilla_export method, a parametrisation); lipcore trusts only the "
                    "library's own exports. Use the library's layers, or plain torch layers")
        why = (tampered(path, m) or foreign_refusal(path, m)) if own else None   # others:
        # the export keeps them, and its trace checks them
        if why:
            return why
    return None


def agreeing(model: nn.Module, plain: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``plain``, if it computes ``model``'s outputs (eval mode) on random inputs of
    ``input_shape`` to rounding; else :class:`NotAnalysable` (a net trained on after an export,
    which refreshes deel-torchlip's cached weights, has moved on from it). A check of the
    export, not a proof: that is :func:`_export_refusal`'s."""
    dtype, device = model_dtype_device(model)
    x = torch.randn(AGREEMENT_POINTS, *input_shape, generator=torch.Generator().manual_seed(0),
                    dtype=dtype).to(device)
    with eval_mode(model), torch.no_grad():
        ours, theirs = plain(x), model(x)
    tolerance = AGREEMENT_ULPS * torch.finfo(dtype).eps * (float(theirs.abs().max()) + 1e-30)
    if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > tolerance:
        raise NotAnalysable(f"the plain-layer copy lipcore analyses ({type(plain).__name__}) "
                            f"computes different outputs from the {type(model).__name__} it "
                            "stands for; lipcore cannot bound what the model runs. Export it "
                            "again from the model as it is now (lipcore.onelip.export)")
    return plain


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple]:
    """The input shape (no batch axis) each layer claiming a constant sees in ``model`` (its
    first call's)."""
    claiming = [m for m in model.modules() if hasattr(m, "_coefficient_lip")]
    seen: dict[nn.Module, tuple] = {}
    for m, shape, _ in layer_shapes(model, claiming, input_shape):
        seen.setdefault(m, shape)
    return seen


def _power_lower_bound(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """The largest ||J v|| / ||v|| of power iteration on the layer's Jacobian J at a random point
    (float64), moved down by ROUNDING: a lower bound on its Lipschitz constant whatever the
    number of steps."""
    f = copy.deepcopy(layer).double().cpu().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
    v = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
    _, transpose = torch.func.vjp(f, x)
    best = 0.0
    for _ in range(POWER_STEPS):
        v = v / v.norm()
        _, jv = torch.func.jvp(f, (x,), (v,))
        best = max(best, float(jv.norm()))
        v, = transpose(jv)
    return best * (1 - ROUNDING)


def claims(model: nn.Module, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """One row per deel-torchlip layer of ``model`` that claims a Lipschitz constant: ``layer``,
    ``claimed`` K, ``lower`` and ``upper`` (sound) bounds at the input shape it sees, and the
    ``verdict`` (module docstring); a layer lipcore cannot analyse gets its refusal as ``note``."""
    from .estimators.layerwise import layerwise_bound
    shapes = _input_shapes(model, input_shape)
    rows = []
    for name, m in model.named_modules():
        if m not in shapes:
            continue
        claimed = claimed_constant(m._coefficient_lip)
        row = dict(layer=f"{name or 'the whole net'} ({type(m).__name__})", claimed=claimed,
                   lower=math.nan, upper=math.nan, verdict="unproved", note="")
        if math.isnan(claimed):
            row["note"] = (f"its claimed constant ({m._coefficient_lip!r}) is not one finite "
                           "positive number; lipcore checks only a single constant per layer")
            rows.append(row)
            continue
        try:
            plain = export(m, shapes[m])
            row["upper"] = layerwise_bound(plain, shapes[m])
            row["lower"] = _power_lower_bound(plain, shapes[m])
        except (NotAnalysable, ValueError) as refused:
            row["note"] = str(refused)
        if row["upper"] <= claimed:
            row["verdict"] = "holds"
        elif row["upper"] <= claimed * (1 + ROUNDING):
            row["verdict"] = f"holds (to rounding: upper bound within {ROUNDING:.0e} of K)"
        elif row["lower"] > claimed:
            row["verdict"] = f"violated by {row['lower'] / claimed - 1:.1e} (relative)"
        rows.append(row)
    return pd.DataFrame(rows, columns=["layer", "claimed", "lower", "upper", "verdict", "note"])
