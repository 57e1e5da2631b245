"""A proved bound on a traced net's floating-point error over a whole l2 ball.

A certificate concerns the model as the user runs it, in its own dtype: rounding at some point
x' of the ball around x, not only at x, must not change the class. For each layer the rounding of
one evaluation is bounded a priori by the standard error analysis of floating-point arithmetic
(Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): a dot product of n terms,
in any order of summation, errs by at most

    gamma_n sum_i |w_i| |h_i|,       gamma_n = n u / (1 - n u),

with u the unit roundoff of the dtype (half its machine epsilon); a layer's local error is that
bound at the largest magnitudes its input can take anywhere in the ball. The magnitudes come
from the net's values at x and its upstream Lipschitz bounds (|h(x')| <= |h(x)| + L_up r
elementwise, since an l2 distance bounds every coordinate), plus the error already made. Local
errors reach the logits through the downstream layers' Lipschitz bounds:

    E = sum_k L_down(k) || local_k ||_2,

summed over the branches of a residual net. Per layer kind (:data:`lipcore.trace.LEAVES`): an
affine map as above (a convolution's dot products have c k_h k_w terms; a bias adds one);
ReLU, max pooling, sorting, reshapes and slices are exact; a smooth activation (tanh, sigmoid,
ELU, LeakyReLU) errs by at most 8 units of its output's scale (libm's float32 functions are
accurate to a few units in the last place); an average of k inputs by gamma_{k+1}; a BatchNorm
(a subtraction, a product and a sum per value) by gamma_8; a skip connection's sum by u. On a
backend that rounds float32 products' inputs to fewer bits (TF32 on a GPU, the default for
cuDNN's convolutions: 2^-11; bfloat16 under ``torch.set_float32_matmul_precision("medium")``:
2^-8; :func:`product_unit`), every affine map adds 3 such units, relative.

The bound is worst case, so it is loose (a net's actual rounding is smaller by orders of
magnitude), but on plain nets it is small beside the margins (``tests/test_rounding.py``);
through a residual net's loose layer-wise bounds it is large.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from .estimators.layerwise import op_bound
from .graph import Graph
from .trace import Chain, Float64View, Op, batch_norm_scale, leaf_of

TF32_UNIT = 2.0 ** -11          # TF32 keeps 10 of float32's 23 mantissa bits
BFLOAT16_UNIT = 2.0 ** -8


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of ``dtype``: the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def product_unit(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff to which this process's backend may round the inputs of float32
    matrix products and convolutions on ``device``: bfloat16's or TF32's where PyTorch's
    settings allow it (``torch.set_float32_matmul_precision``, and on a GPU
    ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``), else 0."""
    if dtype != torch.float32:
        return 0.0
    precision = torch.get_float32_matmul_precision()
    if precision == "medium":
        return BFLOAT16_UNIT
    cuda = torch.device(device).type == "cuda"
    if precision == "high" or (cuda and (torch.backends.cuda.matmul.allow_tf32
                                         or torch.backends.cudnn.allow_tf32)):
        return TF32_UNIT
    return 0.0


def gamma(n: int, unit: float) -> float:
    """n u / (1 - n u): the relative error bound of n floating-point operations in sequence."""
    if n * unit >= 0.5:
        raise ValueError(f"{n} operations at unit roundoff {unit:.3g}: the a priori error "
                         "bound does not hold (n u must be small); lipcore cannot bound the "
                         "rounding of this layer in this dtype")
    return n * unit / (1 - n * unit)


@dataclass(frozen=True)
class _Node:
    """One step of a traced net: its input nodes, its Lipschitz factor, what it is (an Op, or
    the name of a function of a residual net's forward) and its float64 function."""

    inputs: tuple[int, ...]
    factor: float
    what: Op | str
    evaluate: Callable[..., torch.Tensor]


def _nodes(net: Chain | Graph) -> list[_Node]:
    """The steps of a chain or graph, the input first."""
    if isinstance(net, Graph):
        return [_Node(n.inputs, n.factor, n.op if n.op is not None else n.name, n.evaluate)
                for n in net.nodes]
    steps = [_Node((), 1.0, "input", lambda: None)]
    for i, op in enumerate(net.ops):
        view, apply = Float64View(op.module), leaf_of(op.module).apply
        steps.append(_Node((i,), op_bound(op), op, lambda x, _f=apply, _m=view: _f(_m, x)))
    return steps


def _affine(op: Op, size: torch.Tensor, unit: float, products: float) -> torch.Tensor:
    m = op.module
    weight = m.weight.detach().double().cpu().abs()
    bias = m.bias.detach().double().cpu().abs() if m.bias is not None else None
    if isinstance(m, nn.Linear):
        terms = weight.shape[1] + (bias is not None)
        total = F.linear(size, weight, bias)
    else:
        terms = math.prod(weight.shape[1:]) + (bias is not None)
        total = F.conv2d(size, weight, bias, m.stride, m.padding)
    return (gamma(terms, unit) + 3 * products) * total


def _local(what: Op | str, sizes: list[torch.Tensor], unit: float, products: float
           ) -> torch.Tensor:
    """An elementwise bound on one evaluation's rounding error, given bounds ``sizes`` on the
    magnitudes of its inputs (module docstring)."""
    size = sizes[0]
    if isinstance(what, str):
        if what == "add":
            return unit * (sizes[0] + sizes[1])
        if what == "adaptive_avg_pool2d":
            return gamma(size.shape[-1] * size.shape[-2] + 1, unit) * size.mean((-2, -1),
                                                                                 keepdim=True)
        if what in ("relu", "getitem", "pad", "flatten", "input"):
            return torch.zeros(())
        raise ValueError(f"lipcore cannot bound the rounding of the function {what!r}")
    m, kind = what.module, what.kind
    leaf = leaf_of(m)
    gain = abs(leaf.gain(m, what.in_shape)) if leaf.gain else 1.0
    scaled = gain != 1.0                                     # one more product, one more rounding
    if kind == "affine":
        return _affine(what, size, unit, products)
    if kind in ("reshape", "identity") or isinstance(m, (nn.ReLU, nn.MaxPool2d)):
        return torch.zeros(())
    if kind == "activation":
        return 8 * unit * (size + 1)
    if kind == "sort":
        return unit * gain * size
    if kind == "scale":
        s = batch_norm_scale(m).cpu().abs()
        mean = m.running_mean.detach().double().cpu().abs()
        beta = m.bias.detach().double().cpu().abs() if m.bias is not None else torch.zeros_like(s)
        shape = (-1,) + (1,) * (size.dim() - 2)
        return gamma(8, unit) * (s.reshape(shape) * (size + mean.reshape(shape))
                                 + beta.reshape(shape))
    if kind == "pool":
        if isinstance(m, nn.AdaptiveAvgPool2d) or "Adaptive" in type(m).__name__:
            mean = size.mean((-2, -1), keepdim=True)
            return (gamma(size.shape[-1] * size.shape[-2] + 1 + scaled, unit) * gain) * mean
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        pooled = F.avg_pool2d(size, k, m.stride or m.kernel_size, m.padding)
        return gamma(math.prod(k) + 1 + scaled, unit) * gain * pooled
    raise ValueError(f"lipcore cannot bound the rounding of {type(m).__name__} ({kind})")


def _column(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (or single) number shaped to broadcast over a batch like ``like``."""
    return per_sample.reshape(-1, *[1] * (like.dim() - 1))


def rounding_error(net: Chain | Graph, x: torch.Tensor, radius: torch.Tensor | float,
                   dtype: torch.dtype, products: float = 0.0) -> torch.Tensor:
    """For each sample of ``x`` (a batch on the traced net's input shape), an upper bound on
    || fl(net)(x') - net(x') ||_2 over every x' with ||x' - x||_2 <= ``radius`` (one per sample,
    or one for all), the net evaluated in ``dtype``, the inputs of its matrix products and
    convolutions rounded to unit ``products`` (:func:`product_unit`): module docstring."""
    unit = unit_roundoff(dtype)
    x = x.detach().double().cpu()
    radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1).expand(len(x))
    steps = _nodes(net)
    values: list[Any] = [x]
    upstream = [1.0]                               # Lipschitz bound from the input to each step
    error = [torch.zeros(len(x), dtype=torch.float64)]     # float error bound (l2) at each step
    with torch.no_grad():
        for step in steps[1:]:
            ins = step.inputs
            sizes = [values[i].abs() + _column(upstream[i] * radius + error[i], values[i])
                     for i in ins]
            local = _local(step.what, sizes, unit, products)
            local = local.expand(len(x), *local.shape[1:]) if local.dim() else \
                torch.zeros(len(x), 1, dtype=torch.float64)
            local_norm = local.flatten(1).norm(dim=1)
            if step.what == "add":
                upstream.append(sum(upstream[i] for i in ins))
                error.append(sum(error[i] for i in ins) + local_norm)
            else:
                upstream.append(step.factor * upstream[ins[0]])
                error.append(step.factor * error[ins[0]] + local_norm)
            values.append(step.evaluate(*(values[i] for i in ins)))
    out = net.output if isinstance(net, Graph) else len(steps) - 1
    return error[out] * (1 + 1e-9)                   # the float64 arithmetic of this bound
