"""The chain of operators a model computes, extracted only where lipcore can prove what it is.

Every sound bound (the layer-wise product, LipLT, LipSDP) reads a model through :func:`trace`,
which returns its layers as a flat list of :class:`Op` (affine map, slope-restricted activation,
pooling, reshape) and refuses anything it cannot prove:

* **Exact types only.** A container is analysed only if it is exactly ``nn.Sequential`` or one of
  lipcore's own plain chains (``FullyConnected``, ``PooledMLP``); a leaf only if its type is
  exactly one of :data:`LEAVES` (torch's layers) or :data:`LIBRARY_LEAVES` (deel-torchlip's
  GroupSort activations and scaled average pooling, the class that library defines). A subclass
  (even one that changes nothing), a module with its own ``forward`` set on the instance or a
  class running code its library did not write (:func:`foreign_code`), a module with forward
  hooks (or a
  global forward hook), and a module owning a parameter or buffer its type does not have are
  refused: any of them can change the function without changing what the bounds see. So are
  modules whose weights
  ``torch.nn.utils.parametrize`` computes (``parametrizations.spectral_norm``): bake them first
  (for deel-torchlip's layers, :func:`lipcore.onelip.export`).
* **BatchNorm** (1d, 2d) is analysed in eval mode, as the per-channel affine map it then is
  (running statistics required).
* **Skip connections** only inside the residual modules of :func:`is_residual`: lipcore's own
  (:mod:`lipcore.resnets`) and torchvision's ``ResNet``, ``BasicBlock`` and ``Bottleneck``, whose
  ``forward`` ``torch.fx`` reads into a graph (:mod:`lipcore.graph`).
* **Every parameter that changes the function is checked** by the leaf's entry in
  :data:`LEAVES`: an activation's parameters give its slope bounds (ELU's alpha, LeakyReLU's
  slope) or refuse it; ``nn.Softplus`` is refused whatever its parameters (PyTorch switches it
  to the identity at ``beta x > threshold``, a jump, so it is not Lipschitz); pooling must be
  undilated, without ``ceil_mode``, and an average pool must divide by its whole window (no ``divisor_override``; padding counted,
  ``count_include_pad``); adaptive average pooling must be global (``output_size`` 1 as ints); a
  convolution must be zero-padded, ungrouped and undilated with integer padding; a flatten must
  flatten everything but the batch axis. Weights must be finite.
* **The chain is checked against the model.** The extracted chain is evaluated from its own
  parameters with ``torch.nn.functional`` and compared with the outputs and Jacobian-vector
  products of a float64 copy of the model at random inputs, to 1e-9 (:func:`verify`); a model
  whose function differs is refused. This catches what no list of types foresees (a container
  that reorders its layers, a patch acting in float64); a patch that acts only in the model's
  own float32 is :func:`foreign_code`'s to find. Parameters and
  buffers must be plain tensors (a subclass can redefine every operation on it).

The analysis concerns the model in eval mode (dropout off); :func:`trace` leaves the model's
train/eval mode as it found it.
"""
from __future__ import annotations

import collections
import copy
import functools
import hashlib
import math
import numbers
import os
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import typing_extensions
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .models import Activation, FullyConnected, PooledMLP
from .resnets import BasicBlock, CifarResNet, _Shortcut

CONTAINERS = (nn.Sequential, FullyConnected, PooledMLP)   # forward = children in order
TORCH_HOME = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
PARAMETRIZE_HOME = os.path.abspath(parametrize.__file__)
# where the functions a library's module imports may live besides the library and torch
STANDARD_HOMES = (os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep,
                  os.path.dirname(os.path.abspath(typing_extensions.__file__)) + os.sep
                  + "typing_extensions.py",
                  os.path.dirname(os.path.abspath(np.__file__)) + os.sep)
CHECK_POINTS = 4                                          # random inputs of the chain check
VERIFY_TOLERANCE = 1e-9     # relative, in float64: rounding is ~1e-13 here, a real change shows


class NotAnalysable(ValueError):
    """lipcore cannot prove what this model computes, so it gives it no bound."""


class InputShapeMismatch(ValueError):
    """The model does not run on inputs of the given shape."""


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(v) -> tuple[int, int]:
    """A kernel size, stride, padding or dilation as torch's kernels read it: one int for both
    axes, a sequence of one int for both axes (``stride=(1,)`` strides by 1 on each), or two
    ints. Anything else raises a ValueError: read as a 1-tuple, a pooling bounded as if only
    one axis overlapped came out below its true constant (a reviewer's hole)."""
    if _is_int(v):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(_is_int(a) for a in v):
        return (int(v[0]), int(v[-1]))
    raise ValueError(f"{v!r} is not one int, nor a sequence of one or two ints")


def _pair_refusal(m: nn.Module, names: tuple[str, ...]) -> str | None:
    """Why one of ``m``'s ``names`` (kernel_size, stride, ...) is not a size lipcore reads."""
    for name in names:
        value = getattr(m, name)
        if name == "stride" and value is None:
            continue                                # pooling: the stride is the kernel size
        try:
            pair(value)
        except ValueError:
            return (f"{name}={value!r}: give it as one int or a sequence of one or two ints "
                    "(torch reads several forms; lipcore only these)")
    return None


@dataclass(frozen=True)
class Leaf:
    """What lipcore knows of one exact layer type: its kind, the parameters it may own, why a
    given instance cannot be analysed (None if it can), its slope bounds (activations) and its
    function written from its parameters."""

    kind: str          # affine, scale (BatchNorm), activation, sort, pool, reshape, identity
    params: frozenset[str]
    refuse: Callable[[nn.Module], str | None]
    apply: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    slopes: Callable[[nn.Module], tuple[float, float]] | None = None
    # the constant the output is multiplied by, given the layer and its input shape
    gain: Callable[[nn.Module, tuple[int, ...]], float] | None = None


def _conv_refusal(m: nn.Conv2d) -> str | None:
    if isinstance(m.padding, str):
        return f"padding={m.padding!r}: give the padding as integers"
    sizes = _pair_refusal(m, ("stride", "padding", "dilation"))
    if sizes:
        return sizes
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r}: only zero padding is bounded"
    if m.groups != 1:
        return f"groups={m.groups}: only ungrouped convolutions are bounded"
    if pair(m.dilation) != (1, 1):
        return f"dilation={m.dilation}: only undilated convolutions are bounded"
    return None


def _pool_refusal(m: nn.Module) -> str | None:
    sizes = _pair_refusal(m, ("kernel_size", "stride", "padding")
                          + (("dilation",) if hasattr(m, "dilation") else ()))
    if sizes:
        return sizes
    padded = pair(m.padding) != (0, 0)
    if padded and isinstance(m, nn.AvgPool2d) and not m.count_include_pad:
        return (f"padding={m.padding} with count_include_pad=False: a window at the border is "
                "divided by fewer than kh kw inputs; only padded averages over the whole window "
                "(count_include_pad=True) are bounded")
    if m.ceil_mode:
        return "ceil_mode=True: only floor-mode pooling is bounded"
    if pair(getattr(m, "dilation", 1)) != (1, 1):
        return f"dilation={m.dilation}: only undilated pooling is bounded"
    if getattr(m, "return_indices", False):
        return "return_indices=True: the output is not a tensor of pooled values"
    if getattr(m, "divisor_override", None) is not None:
        return (f"divisor_override={m.divisor_override}: the window is summed, not averaged; "
                "only plain average pooling is bounded")
    return None


def _global_pool_refusal(m: nn.AdaptiveAvgPool2d) -> str | None:
    size = m.output_size
    sizes = [size] if not isinstance(size, (tuple, list)) else list(size)
    if len(sizes) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                                       or v != 1 for v in sizes):
        return (f"output_size={size!r}: only global average pooling (output_size=1, (1, 1) or "
                "[1, 1]) is bounded")
    return None


def claimed_constant(coefficient) -> float:
    """A layer's Lipschitz coefficient (deel-torchlip's ``_coefficient_lip``) as one float; NaN
    unless it is one finite positive number (a per-channel tensor, a NaN or a sign error are
    not constants lipcore can read)."""
    try:
        value = float(coefficient)
    except (TypeError, ValueError, RuntimeError):
        return math.nan
    return value if math.isfinite(value) and value > 0 else math.nan


def _coefficient_refusal(m: nn.Module) -> str | None:
    if math.isnan(claimed_constant(m._coefficient_lip)):
        return (f"its Lipschitz coefficient (_coefficient_lip = {m._coefficient_lip!r}) is not "
                "one finite positive number; lipcore bounds only a scalar coefficient")
    return None


# exact types lipcore refuses with a reason of their own (not just "unknown")
NOT_LIPSCHITZ: dict[type, str] = {
    nn.Softplus: ("PyTorch computes it as x itself once beta x > threshold, a jump of "
                  "log(1 + exp(-threshold)) / beta there (2.1e-9 at the defaults, more for a "
                  "small beta), and its exp overflows below a large threshold: a function with a "
                  "jump has no Lipschitz constant, so no certificate holds near it. Use ELU, tanh "
                  "or ReLU, or bound the model another way"),
}


def _range(name: str, value: float, low: float, high: float) -> str | None:
    if not (math.isfinite(value) and low <= value <= high):
        return (f"{name}={value}: only {low} <= {name} <= {high} is bounded (a monotone "
                "activation with slopes in [0, 1])")
    return None


def _pooling(pool: Callable) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Max pooling pads with -inf and average pooling (count_include_pad) with zeros."""
    return lambda m, x: pool(x, pair(m.kernel_size), pair(m.stride or m.kernel_size),
                             pair(m.padding))


BATCH_NORM = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def _batch_norm_refusal(m: nn.Module) -> str | None:
    if m.running_mean is None or m.running_var is None:
        return ("track_running_stats=False: it normalises by each batch's own statistics, so its "
                "output depends on the other inputs of the batch")
    if not (m.running_var.detach().double() + batch_norm_eps(m) > 0).all():
        return (f"running_var + eps (eps={m.eps}) is not positive everywhere, so it divides by "
                "zero or takes the root of a negative number; a trained BatchNorm has "
                "running_var >= 0 and eps > 0")
    return None


def batch_norm_eps(m: nn.Module) -> float:
    """The eps a BatchNorm ``m`` (or a :class:`Float64View` of one) runs with: PyTorch's kernels
    add it in their compute type, float32 for every dtype but float64, so a float32 model's
    1e-5 is 9.99999975e-06. Read as the float64 number, a subnormal eps over a zero
    running_var made a fourth reviewer's float32 net 1.2 times steeper than its bound."""
    module = getattr(m, "_module", m)
    if module.running_var is not None and module.running_var.dtype == torch.float64:
        return float(module.eps)
    return float(np.float32(module.eps))


def _batch_norm(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval mode: the per-channel affine map gamma (x - mean) / sqrt(var + eps) + beta."""
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0,
                        batch_norm_eps(m))


def batch_norm_scale(m: nn.Module) -> torch.Tensor:
    """The per-channel factor gamma / sqrt(var + eps) of a BatchNorm in eval mode (float64)."""
    var = m.running_var.detach().double()
    gamma = m.weight.detach().double() if m.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + batch_norm_eps(m))


_none = lambda m: None  # noqa: E731
LEAVES: dict[type, Leaf] = {
    nn.Linear: Leaf("affine", frozenset({"weight", "bias"}), _none,
                    lambda m, x: F.linear(x, m.weight, m.bias)),
    nn.Conv2d: Leaf("affine", frozenset({"weight", "bias"}), _conv_refusal,
                    lambda m, x: F.conv2d(x, m.weight, m.bias, pair(m.stride),
                                          pair(m.padding))),
    nn.ReLU: Leaf("activation", frozenset(), _none, lambda m, x: F.relu(x), lambda m: (0.0, 1.0)),
    nn.Tanh: Leaf("activation", frozenset(), _none, lambda m, x: torch.tanh(x),
                  lambda m: (0.0, 1.0)),
    nn.Sigmoid: Leaf("activation", frozenset(), _none, lambda m, x: torch.sigmoid(x),
                     lambda m: (0.0, 0.25)),
    nn.ELU: Leaf("activation", frozenset(), lambda m: _range("alpha", m.alpha, 0.0, 1.0),
                 lambda m, x: F.elu(x, m.alpha), lambda m: (0.0, 1.0)),
    nn.LeakyReLU: Leaf("activation", frozenset(),
                       lambda m: _range("negative_slope", m.negative_slope, 0.0, 1.0),
                       lambda m, x: F.leaky_relu(x, m.negative_slope),
                       lambda m: (float(m.negative_slope), 1.0)),
    nn.MaxPool2d: Leaf("pool", frozenset(), _pool_refusal, _pooling(F.max_pool2d)),
    nn.AvgPool2d: Leaf("pool", frozenset(), _pool_refusal, _pooling(F.avg_pool2d)),
    nn.AdaptiveAvgPool2d: Leaf("pool", frozenset(), _global_pool_refusal,
                               lambda m, x: F.adaptive_avg_pool2d(x, 1)),
    nn.BatchNorm1d: Leaf("scale", BATCH_NORM, _batch_norm_refusal, _batch_norm),
    nn.BatchNorm2d: Leaf("scale", BATCH_NORM, _batch_norm_refusal, _batch_norm),
    nn.Flatten: Leaf("reshape", frozenset(),
                     lambda m: None if (m.start_dim, m.end_dim) == (1, -1) else
                     f"start_dim={m.start_dim}, end_dim={m.end_dim}: only Flatten(1, -1) is "
                     "analysed",
                     lambda m, x: x.flatten(1)),
    nn.Identity: Leaf("identity", frozenset(), _none, lambda m, x: x),
    nn.Dropout: Leaf("identity", frozenset(), _none, lambda m, x: x),    # eval mode
}


def _group_sort(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """deel-torchlip's GroupSort: sort each group of ``group_size`` channels (all of them if
    None), times its Lipschitz coefficient."""
    size = x.shape[1] if m.group_size is None or m.group_size > x.shape[1] else m.group_size
    grouped = x.reshape(x.shape[0], x.shape[1] // size, size, *x.shape[2:])
    return grouped.sort(dim=2).values.reshape(x.shape) * m._coefficient_lip


def _coefficient(m: nn.Module, in_shape: tuple[int, ...]) -> float:
    return float(m._coefficient_lip)


def _global_mean_gain(m: nn.Module, in_shape: tuple[int, ...]) -> float:
    """deel-torchlip's ScaledAdaptiveAvgPool2d multiplies the global mean of h w inputs by
    sqrt(h w) times its coefficient (computed as the layer computes it)."""
    return math.sqrt(in_shape[-2] * in_shape[-1]) * m._coefficient_lip


DEEL_TORCHLIP = "deel.torchlip"                 # the 1-Lipschitz layer library lipcore reads
_DEEL = DEEL_TORCHLIP + ".modules."
_SORT = Leaf("sort", frozenset(), _coefficient_refusal, _group_sort, gain=_coefficient)
# Layers of maintained libraries, by (module, class name): they count only if that exact class is
# the one the library defines (:func:`leaf_of`). Sorting within groups is 1-Lipschitz (a sorted
# vector moves no more than its input), but not elementwise: only the layer-wise bound reads it.
LIBRARY_LEAVES: dict[tuple[str, str], Leaf] = {
    (_DEEL + "activation", "GroupSort"): _SORT,
    (_DEEL + "activation", "GroupSort2"): _SORT,
    (_DEEL + "activation", "FullSort"): _SORT,
    (_DEEL + "pooling", "ScaledAvgPool2d"): Leaf(
        "pool", frozenset(), lambda m: _coefficient_refusal(m) or _pool_refusal(m),
        lambda m, x: _pooling(F.avg_pool2d)(m, x) * m._coefficient_lip * m.scalingFactor,
        gain=lambda m, in_shape: float(m._coefficient_lip * m.scalingFactor)),
    (_DEEL + "pooling", "ScaledAdaptiveAvgPool2d"): Leaf(
        "pool", frozenset(), lambda m: _coefficient_refusal(m) or _global_pool_refusal(m),
        lambda m, x: F.adaptive_avg_pool2d(x, 1) * _global_mean_gain(m, x.shape),
        gain=_global_mean_gain),
}
LIBRARY_RESIDUAL = {("torchvision.models.resnet", n)
                    for n in ("ResNet", "BasicBlock", "Bottleneck")}


def _library_key(m: nn.Module, names) -> tuple[str, str] | None:
    """``m``'s (module, class name) if its exact type is the class a library defines under one
    of ``names``, else None."""
    key = (type(m).__module__, type(m).__qualname__)
    if key in names and getattr(sys.modules.get(key[0]), key[1], None) is type(m):
        return key
    return None


def leaf_of(m: nn.Module) -> Leaf | None:
    """What lipcore knows of ``m``'s exact type as a leaf layer (None: not a leaf it knows)."""
    leaf = LEAVES.get(type(m))
    if leaf is None:
        key = _library_key(m, LIBRARY_LEAVES)
        leaf = LIBRARY_LEAVES[key] if key else None
    return leaf


def is_residual(m: nn.Module) -> bool:
    """Whether ``m`` is a residual module whose forward lipcore reads with torch.fx: its own
    (:mod:`lipcore.resnets`) or torchvision's ResNet, BasicBlock and Bottleneck."""
    return (type(m) in (CifarResNet, BasicBlock, _Shortcut)
            or _library_key(m, LIBRARY_RESIDUAL) is not None)


@dataclass(frozen=True)
class Op:
    """One layer of a traced chain: the live module (for training), its kind, what it maps
    (shapes without the batch axis) and, for activations, its slope bounds [alpha, beta]."""

    module: nn.Module
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    alpha: float = 0.0
    beta: float = 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The op's function, written from its parameters (not the module's forward)."""
        return leaf_of(self.module).apply(self.module, x)


@dataclass(frozen=True)
class Chain:
    """A model as a verified chain of ops, on inputs of ``input_shape`` (no batch axis)."""

    ops: tuple[Op, ...]
    input_shape: tuple[int, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.apply(x)
        return x

    @property
    def affine(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "affine"]

    def float64(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The chain's function in float64 on the CPU, from its own parameters."""
        apply = [leaf_of(op.module).apply for op in self.ops]
        mods = [Float64View(op.module) for op in self.ops]

        def f(x: torch.Tensor) -> torch.Tensor:
            for fn, m in zip(apply, mods):
                x = fn(m, x)
            return x
        return f


def _name(path: str, m: nn.Module) -> str:
    return f"{path or 'the model'} ({type(m).__name__})"


def tampered(path: str, m: nn.Module) -> str | None:
    """Why module ``m`` (at ``path``) may not compute what its class and parameters say, or
    None: hooks, a torch.compile wrapper, methods set on the instance, tensors of a subclass as
    parameters (its class's code is :func:`foreign_refusal`'s)."""
    if m._forward_hooks or m._forward_pre_hooks:
        return (f"{_name(path, m)} has forward hooks, which can change its output (remove them; "
                "torch.nn.utils.remove_spectral_norm undoes spectral_norm)")
    if type(m).__name__ == "OptimizedModule" and hasattr(m, "_orig_mod"):
        return (f"{_name(path, m)} is a torch.compile wrapper; pass the module it compiles "
                "(model._orig_mod)")
    if vars(m).get("_compiled_call_impl") is not None:
        return (f"{_name(path, m)} was compiled in place (module.compile()), so it runs what "
                "torch.compile made of it; certify a fresh copy of the uncompiled model")
    cls = type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)
    home = _package_homes(cls.__module__)           # (parametrize subclasses the library's)
    own = sorted(n for n, v in vars(m).items() if callable(v) and not isinstance(v, type) and (
        callable(getattr(type(m), n, None)) or not isinstance(v, types.FunctionType)
        or not _written_in(v, home)))
    if own:
        return (f"{_name(path, m)} has its own {', '.join(own)} set on the instance (in "
                "place of its class's method, or written outside its library); lipcore bounds "
                "only the class's own code")
    odd = [n for n, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))
           if type(t) not in (torch.Tensor, nn.Parameter)]
    if odd:
        return (f"{_name(path, m)} holds tensors of a subclass ({', '.join(odd)}), which can "
                "change every operation on them; lipcore bounds only plain tensors")
    unknown = sorted(n for n, v in vars(m).items() if not _plain(v))
    unknown += sorted(f"{n}.{k}" for n, t in (*m._parameters.items(), *m._buffers.items())
                      if t is not None for k, v in vars(t).items() if not _plain(v))
    if unknown:
        return (f"{_name(path, m)} holds attributes of types lipcore does not know "
                f"({', '.join(unknown)}); copying the model (every check does) would run their "
                "code, so lipcore refuses them (a reviewer's object armed a hook when copied)")
    return None


PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device,
         torch.Size, torch.Tensor, nn.Parameter, types.FunctionType, Activation)


def _plain(value: object, depth: int = 0) -> bool:
    """Whether copying ``value`` runs no code but Python's, torch's and lipcore's own: numbers,
    strings (numpy's scalars too), classes, plain tensors, modules (the walk checks each),
    functions (hooks), lipcore's Activation records, and the builtin containers of such, a few
    levels deep."""
    if depth > 4:
        return False
    if type(value) in PLAIN or isinstance(value, (type, nn.Module)) or (
            isinstance(value, np.generic) and type(value).__module__ == "numpy"):
        return type(value) not in (torch.Tensor, nn.Parameter) or all(
            _plain(v, depth + 1) for v in vars(value).values())
    if type(value) in (tuple, list, set, frozenset):
        return all(_plain(v, depth + 1) for v in value)
    if type(value) in (dict, collections.OrderedDict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def foreign_refusal(path: str, m: nn.Module) -> str | None:
    """Why ``m``'s class (at ``path``), one lipcore knows, does not run its library's code
    (:func:`foreign_code`), or None."""
    foreign = foreign_code(m)
    if foreign:
        return (f"{_name(path, m)} runs {foreign}, which is not the code its library defines "
                "(replaced at run time?); lipcore bounds only the library's own code")
    return None


def _refusal(path: str, m: nn.Module) -> str | None:
    """Why module ``m`` (at ``path``) cannot be analysed, or None."""
    why = tampered(path, m)
    if why:
        return why
    if type(m).__module__.startswith(DEEL_TORCHLIP) and leaf_of(m) is None:
        if not _children(m) and next(m.parameters(recurse=False), None) is None:
            return (f"{_name(path, m)} is a deel-torchlip layer lipcore does not know; of that "
                    f"library it analyses {_known_library_layers()} (and the plain torch layers "
                    "of its exported models)")
        if hasattr(m, "vanilla_export"):
            return (f"{_name(path, m)} is a deel-torchlip layer whose weights it computes as it "
                    "runs; analyse its exported model (lipcore.onelip.export(model), which calls "
                    "vanilla_export and checks that the outputs agree; lipcore.audit does this)")
    if parametrize.is_parametrized(m):
        return (f"{_name(path, m)} computes its weights through torch.nn.utils.parametrize; bake "
                "them first (parametrize.remove_parametrizations(module, name, "
                "leave_parametrized=True) on a copy), so that the weights bounded are the weights "
                "run")
    if type(m) in CONTAINERS or is_residual(m):
        return foreign_refusal(path, m)
    if type(m) in NOT_LIPSCHITZ:
        return f"{_name(path, m)}: {NOT_LIPSCHITZ[type(m)]}"
    leaf = leaf_of(m)
    if leaf is None:
        near = next((base.__name__ for base in (*LEAVES, *CONTAINERS) if isinstance(m, base)),
                    None)
        what = (f"a subclass of {near}, whose forward may differ" if near else
                "not a layer lipcore can bound")
        return (f"{_name(path, m)} is {what}; lipcore analyses exactly these types: "
                f"{', '.join(sorted(t.__name__ for t in LEAVES))} inside nn.Sequential, and "
                f"deel-torchlip's {_known_library_layers()} (use those layers: lipcore neither "
                "bounds nor certifies a model it cannot trace)")
    params = {n for n, _ in m.named_parameters(recurse=False)} | \
        {n for n, _ in m.named_buffers(recurse=False)}
    extra = params - leaf.params
    if extra:
        return (f"{_name(path, m)} owns parameters or buffers its type does not use "
                f"({', '.join(sorted(extra))}); lipcore cannot tell what they change")
    why = leaf.refuse(m)
    if why:
        return f"{_name(path, m)}: {why}"
    for n in leaf.params:
        value = getattr(m, n, None)
        if value is not None and not torch.isfinite(value.detach()).all():
            return f"{_name(path, m)} has non-finite values (NaN or inf) in {n}"
    return foreign_refusal(path, m)


def _package_homes(module_name: str) -> tuple[str, ...]:
    """The folders of the top-level package that defines ``module_name`` (torch, torchvision,
    lipcore; every folder of a namespace package such as deel)."""
    top = sys.modules.get(module_name.split(".")[0])
    paths = [os.path.dirname(top.__file__)] if getattr(top, "__file__", None) else \
        list(getattr(top, "__path__", []))
    return tuple(os.path.abspath(p) + os.sep for p in paths)


CODELESS = (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
            types.ClassMethodDescriptorType, types.GetSetDescriptorType,
            types.MemberDescriptorType, types.MethodWrapperType)


def _written_in(value: object, homes: tuple[str, ...], depth: int = 0) -> bool:
    """Whether class attribute ``value`` runs only code written in ``homes`` (folders or files)
    or by Python itself: a function whose code lies there (a wrapper may lie in torch or the
    standard library if what it wraps, ``__wrapped__`` or a function in its closure, lies in
    ``homes``; a torch decorator's wrapper hid a reviewer's function), a property or static or
    class method of such, a C function or slot, a class, or plain data. Any other callable or
    descriptor (a ``functools.partialmethod``, a callable object) is not."""
    if depth > 4:
        return False
    if isinstance(value, property):
        return all(_written_in(f, homes, depth + 1)
                   for f in (value.fget, value.fset, value.fdel) if f is not None)
    if isinstance(value, (staticmethod, classmethod)):
        return _written_in(value.__func__, homes, depth + 1)
    if isinstance(value, types.FunctionType):
        file = value.__code__.co_filename
        inner = [getattr(value, "__wrapped__", None)] + [
            c.cell_contents for c in value.__closure__ or () if _cell_holds_code(c)]
        inner = [f for f in inner if f is not None]
        place = homes + (TORCH_HOME, *STANDARD_HOMES) if inner else homes
        return ((file.startswith("<frozen ") or os.path.abspath(file).startswith(place))
                and all(_written_in(f, homes, depth + 1) for f in inner))
    if isinstance(value, CODELESS) or isinstance(value, type):
        return True
    return not callable(value) and not hasattr(type(value), "__get__")


def _cell_holds_code(cell) -> bool:
    try:
        return isinstance(cell.cell_contents, (types.FunctionType, property, staticmethod,
                                               classmethod, functools.partial))
    except ValueError:                                   # an empty cell
        return False


def _named(module: types.ModuleType) -> dict[str, object]:
    """The modules, functions and classes a module's globals name."""
    return {name: value for name, value in vars(module).items()
            if isinstance(value, (types.ModuleType, types.FunctionType, type))}


_GLOBALS: dict[str, dict[str, object]] = {}       # each library module's, when lipcore first saw it
_CLASSES: dict[type, dict[str, object]] = {}      # each layer class's attributes, likewise
_MISSING = object()


def _globals_then(module: types.ModuleType) -> dict[str, object]:
    return _GLOBALS.setdefault(module.__name__, _named(module))


def foreign_code(m: nn.Module) -> str | None:
    """The first piece of code ``m`` runs through its class that its library did not write, or
    None: an attribute of any class in its MRO (``forward``, ``_conv_forward``, ``nn.Module.
    __call__``) that is not the object it was when lipcore first saw the class (torch's layers:
    when lipcore was imported) or not written in that class's package (:func:`_written_in`),
    a ``forward`` under another name, or a global of the class's module (the ``F`` that
    ``nn.Linear.forward`` calls) that names another object than when lipcore first saw the
    module, or a function written outside the package, torch and the standard library. A
    patch that acts only in float32 passes the float64 chain check (:func:`verify`); this check
    sees it wherever it is installed in Python (a reviewer's hole). Code that forges its own
    file name is beyond any check from inside Python."""
    for cls in type(m).__mro__[:-1]:                                   # all but object
        home = _package_homes(cls.__module__)
        if cls is type(m) and parametrize.is_parametrized(m):
            home += (PARAMETRIZE_HOME,)           # the class torch.nn.utils.parametrize made
        made = cls is type(m) and parametrize.is_parametrized(m)
        then = None if made else _CLASSES.setdefault(cls, dict(vars(cls)))
        for name, value in vars(cls).items():
            if (then is not None and then.get(name, _MISSING) is not value) or \
                    not _written_in(value, home):
                return f"{cls.__qualname__}.{name}"
        forward = vars(cls).get("forward")
        if cls is not nn.Module and forward is not None and \
                getattr(forward, "__qualname__", None) != f"{cls.__qualname__}.forward":
            return f"{cls.__qualname__}.forward"
        module = sys.modules.get(cls.__module__)
        if module is None:
            return f"{cls.__qualname__} (its module {cls.__module__} is not loaded)"
        now, then = vars(module), _globals_then(module)
        for name, value in then.items():
            if now.get(name) is not value:
                return f"{cls.__module__}.{name}"
        homes = (*home, TORCH_HOME, *STANDARD_HOMES)
        for name, value in _named(module).items():
            if isinstance(value, types.ModuleType):
                foreign = sys.modules.get(value.__name__) is not value
            else:
                foreign = isinstance(value, types.FunctionType) and not _written_in(value, homes)
            if foreign:
                return f"{cls.__module__}.{name}"
    return None


def _remember_known_modules() -> None:
    """Record the classes lipcore traces and the globals of their modules, as they are when
    lipcore is imported."""
    for cls in (*LEAVES, *CONTAINERS, CifarResNet, BasicBlock, _Shortcut):
        for base in cls.__mro__[:-1]:
            _globals_then(sys.modules[base.__module__])
            _CLASSES.setdefault(base, dict(vars(base)))


_remember_known_modules()


def _known_library_layers() -> str:
    return ", ".join(sorted(name for _, name in LIBRARY_LEAVES))


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf layers of ``model`` in forward order, after checking that every module is one
    lipcore can analyse (module docstring); raises :class:`NotAnalysable` naming the first
    module that is not."""
    hooks = [h for h in (torch.nn.modules.module._global_forward_hooks,
                         torch.nn.modules.module._global_forward_pre_hooks) if h]
    if hooks:
        raise NotAnalysable("global forward hooks are registered (torch.nn.modules.module."
                            "register_module_forward_hook); they can change any layer's output")
    found = []
    for path, m in _walk(model, ""):
        why = _refusal(path, m)
        if why:
            raise NotAnalysable(why)
        if leaf_of(m) is not None:
            if _children(m):
                raise NotAnalysable(f"{_name(path, m)} has child modules of its own "
                                    f"({', '.join(_children(m))}); lipcore cannot tell what "
                                    "they do")
            found.append((path, m))
    return found


def _children(m: nn.Module) -> dict[str, nn.Module]:
    return dict(m.named_children())


def _walk(m: nn.Module, path: str):
    yield path, m
    for n, c in _children(m).items():
        yield from _walk(c, f"{path}.{n}" if path else n)


class _EvalMode:
    """Switch a model to eval mode, then restore every module's own mode."""

    def __init__(self, model: nn.Module):
        self.model, self.modes = model, [(m, m.training) for m in model.modules()]

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            m.training = mode


def eval_mode(model: nn.Module) -> _EvalMode:
    """``with eval_mode(model):`` runs it in eval mode and leaves its modes as they were."""
    return _EvalMode(model)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device the model computes in (its first floating parameter's)."""
    for p in list(model.parameters()) + list(model.buffers()):
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """The input shape of a dense net (its first layer's in_features) or of lipcore's PooledMLP
    (28 x 28 images); conv nets need it given."""
    if type(model) is PooledMLP:
        return (1, 28, 28)
    first = next((m for _, m in leaves(model) if leaf_of(m).kind in ("affine", "pool")),
                 None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ValueError(f"give input_shape (without the batch axis) for this model: its first layer "
                     f"is {type(first).__name__}, whose input size lipcore cannot infer")


def layer_shapes(model: nn.Module, layers: list[nn.Module], input_shape: tuple[int, ...]
                 ) -> list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]]:
    """(layer, input shape, output shape), no batch axis, of every call of one of ``layers`` in
    one eval-mode forward pass of ``model`` on zeros of ``input_shape``, in call order;
    :class:`InputShapeMismatch` if the model does not run on that shape."""
    dtype, device = model_dtype_device(model)
    seen: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(
        (mod, tuple(args[0].shape[1:]), tuple(out.shape[1:])))) for m in layers]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    except Exception as exc:                        # whatever the model raises, named
        raise InputShapeMismatch(f"the model fails on zeros of shape {input_shape} "
                                 f"({type(exc).__name__}: {exc})") from exc
    finally:
        for h in handles:
            h.remove()
    return seen


def trace(model: nn.Module, input_shape: tuple[int, ...] | None = None):
    """The verified chain of ``model`` on inputs of ``input_shape`` (no batch axis; inferred for
    dense nets), or :class:`NotAnalysable` saying which module cannot be analysed and why. A
    model with residual modules (:func:`is_residual`) gives a :class:`lipcore.graph.Graph`."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise NotAnalysable("the model's parameters are on the meta device, which holds no "
                            "values; load its weights first (model.to_empty(device='cpu'), then "
                            "model.load_state_dict(...))")
    layers = leaves(model)
    if not layers:
        raise NotAnalysable("the model has no layers lipcore can analyse")
    shape = tuple(input_shape) if input_shape is not None else infer_input_shape(model)
    if any(is_residual(m) for m in model.modules()):
        from .graph import trace_graph
        graph = trace_graph(model, shape)
        verify(graph, model)
        return graph
    seen = layer_shapes(model, [m for _, m in layers], shape)
    calls = [id(m) for m, _, _ in seen]
    if calls != [id(m) for _, m in layers]:
        twice = [_name(path, m) for path, m in layers if calls.count(id(m)) > 1]
        never = [_name(path, m) for path, m in layers if id(m) not in calls]
        detail = "; ".join([*(["run more than once (one module reused): " + ", ".join(twice)]
                              if twice else []),
                            *(["never run: " + ", ".join(never)] if never else [])])
        raise NotAnalysable("the model does not apply its layers once each, in the order they "
                            "are registered; lipcore analyses plain feed-forward chains"
                            + (f" ({detail})" if detail else ""))
    ops = []
    for m, in_shape, out_shape in seen:
        leaf = leaf_of(m)
        alpha, beta = leaf.slopes(m) if leaf.slopes else (0.0, 1.0)
        ops.append(Op(m, leaf.kind, in_shape, out_shape, alpha, beta))
    chain = Chain(tuple(ops), shape)
    verify(chain, model)
    return chain


def verify(chain, model: nn.Module, points: int = CHECK_POINTS, seed: int = 0) -> None:
    """Refuse (NotAnalysable) unless a float64 copy of the model gives the outputs and
    Jacobian-vector products of the chain (or graph, :mod:`lipcore.graph`), evaluated from its
    own parameters in float64, at ``points`` random inputs, to VERIFY_TOLERANCE (relative). The
    check is of the function, at a precision where any change to it shows (a patched
    ``_conv_forward`` or ``__call__``, a reordered container); the rounding of the model's own
    dtype is the certificate's allowance (:mod:`lipcore.certify`), not this check's, which in
    float16 would otherwise let a change of tens of percent through."""
    try:
        model64 = float64_copy(model)
    except Exception as exc:                        # a weight that cannot be copied or cast
        raise NotAnalysable(f"lipcore cannot make the float64 copy of the model that checks "
                            f"what it computes ({type(exc).__name__}: {exc})") from exc
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(points, *chain.input_shape, generator=gen, dtype=torch.float64)
    x[points // 2:] = 4 * torch.randn(points - points // 2, *chain.input_shape, generator=gen,
                                      dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    # each on its own copy: an in-place first layer (ReLU(inplace=True)) would change x
    got, got_jvp = torch.func.jvp(model64, (x.clone(),), (v.clone(),))
    want, want_jvp = torch.func.jvp(chain.float64(), (x.clone(),), (v.clone(),))
    for what, a, b in (("outputs", got, want), ("Jacobian-vector products", got_jvp, want_jvp)):
        a, b = a.detach(), b.detach()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise NotAnalysable(f"the model's {what} are not finite (NaN or inf) in float64 at "
                                f"random inputs of shape {tuple(chain.input_shape)}: a layer "
                                "overflows or divides by zero (a weight of 1e200, a BatchNorm "
                                "whose running_var + eps is not positive?); lipcore refuses to "
                                "bound it")
        if a.shape != b.shape:
            raise NotAnalysable(f"the extracted chain gives outputs of shape {tuple(b.shape)}, "
                                f"the model {tuple(a.shape)}")
        err = float((a - b).abs().max())
        if not err <= VERIFY_TOLERANCE * (1 + float(b.abs().max())):
            raise NotAnalysable(f"the model's {what} differ from those of the chain of layers "
                                f"lipcore extracted (largest difference {err:.3g}, in float64): "
                                "it computes more than its layers applied in order (a skip "
                                "connection, a scale, a custom container, a patched method?); "
                                "lipcore refuses to bound it")


_BOOKKEEPING = frozenset(vars(nn.Module()))        # what torch keeps on every module


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 digest of what a bound reads from ``model`` (after :func:`trace` has checked
    it): every module's path, exact type and settings (stride, slope, Lipschitz coefficient:
    its instance attributes but torch's bookkeeping), and every parameter and buffer, persistent
    or not (names, dtypes, shapes, values), so that a certificate can refuse a bound of another
    net. A reviewer swapped a sigmoid for a ReLU, and a non-persistent buffer, under a digest of
    the state dict alone."""
    digest = hashlib.sha256()
    for path, m in model.named_modules(remove_duplicate=False):
        digest.update(f"{path}:{type(m).__module__}.{type(m).__qualname__};".encode())
        settings = {k: v for k, v in vars(m).items() if k not in _BOOKKEEPING}
        digest.update(repr(sorted(settings.items())).encode())
        for name, t in (*m._parameters.items(), *m._buffers.items()):
            digest.update(f"{name} {None if t is None else (t.dtype, tuple(t.shape))};".encode())
            if t is not None:
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                              .numpy().tobytes())
    return digest.hexdigest()


def float64_copy(model: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """A float64 copy of ``model`` in eval mode, with the same weights (cast, not recomputed)
    and each BatchNorm's eps as the model runs it (:func:`batch_norm_eps`)."""
    copied = copy.deepcopy(model).double().to(device).eval()
    for mine, theirs in zip(copied.modules(), model.modules()):
        if isinstance(theirs, nn.modules.batchnorm._BatchNorm) and theirs.running_var is not None:
            mine.eps = batch_norm_eps(theirs)
    return copied


class Float64View:
    """A layer's attributes with its tensors in float64 (to evaluate a traced net from its own
    parameters)."""

    def __init__(self, module: nn.Module):
        self._module = module

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        return value.detach().double().cpu() if torch.is_tensor(value) else value
