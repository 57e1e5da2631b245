"""A proved bound on a traced net's floating-point error over a whole l2 ball.

A certificate concerns the model as the user runs it, in its own dtype: rounding at some point
x' of the ball around x, not only at x, must not change the class. For each layer the rounding of
one evaluation is bounded a priori by the standard error analysis of floating-point arithmetic
(Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): a dot product of n terms,
in any order of summation (blocked, parallel, with fused multiply-adds), errs by at most

    gamma_n sum_i |w_i| |h_i| + (n + 1) eta,       gamma_n = n u / (1 - n u),

with u the unit roundoff of the dtype (half its machine epsilon) and eta = u times its smallest
normal number (gradual underflow). A layer's local error is that bound at the magnitudes its
input takes anywhere in the ball: |h(x')| <= |h(x)| + |d| with ||d||_2 <= L_up r + E_in (the
upstream Lipschitz bound times the radius, plus the error already made), so for a dense or conv
layer || |W| |h(x')| ||_2 <= || |W| |h(x)| ||_2 + || |W| ||_2 (L_up r + E_in), with the operator
norm of the absolute weights (a convolution's by its DFT bound), and likewise for every other
kind. Local errors reach the logits through the downstream layers' Lipschitz bounds:

    E = sum_k L_down(k) || local_k ||_2,

summed over the branches of a residual net. Per layer kind (:data:`lipcore.trace.LEAVES`): an
affine map as above (a convolution's dot products have c k_h k_w terms; a bias adds one);
ReLU, max pooling, reshapes and slices are exact; sorting is exact, and the product by a
library layer's coefficient rounds twice; a smooth activation (tanh, sigmoid, ELU, LeakyReLU)
errs by at most 8 u (|input| + 1), a few units in the last place of its output (PyTorch's
vectorised and CUDA implementations are accurate to a few ulps); an average of k inputs by
gamma_{k+1}; a BatchNorm by gamma_12 (a subtraction, a reciprocal square root, products and a
sum per value); a skip connection's sum by u. The input is rounded once more where the data's
dtype is wider than the model's.

Where the backend may round float32 products' inputs to fewer bits (:func:`product_unit`: TF32,
2^-11, the default for cuDNN's convolutions; bfloat16, 2^-8, under
``torch.set_float32_matmul_precision("medium")``, oneDNN's fp32 modes or its environment
variables), each input may be truncated by two such units and the sum accumulated with
truncation: the affine bound becomes (1 + 2 p)^2 (1 + gamma_n(2 u)) - 1.

What is assumed, and stated: IEEE arithmetic with round-to-nearest and gradual underflow (no
flush-to-zero); convolutions computed as sums of products (direct or GEMM: oneDNN's default on a
CPU). cuDNN may choose Winograd or FFT algorithms on a GPU, and NNPACK on a CPU without oneDNN,
whose error is not of this form: :func:`convolution_caveat` says when. A value that may overflow
(a magnitude bound at the dtype's largest number) or a layer too long for its precision
(n u >= 1/2) gets an infinite bound: nothing is certified there.

The bound is worst case, so it is loose (a net's actual rounding is smaller by orders of
magnitude), but it is small beside a trained net's margins (``tests/test_rounding.py``);
through a residual net's loose layer-wise bounds it is large.
"""
from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from .estimators.layerwise import conv2d_norm_bound, linear_norm, op_bound
from .graph import Graph
from .trace import Chain, Float64View, Op, batch_norm_scale, leaf_of, pair

TF32_UNIT = 2.0 ** -11          # TF32 keeps 10 of float32's 23 mantissa bits
BFLOAT16_UNIT = 2.0 ** -8


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon of ``dtype``: the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


# torch.backends' per-backend precision settings ("ieee", "tf32", "bf16" or "none": inherit)
PRECISION_FLAGS = ("fp32_precision", "mkldnn.fp32_precision", "mkldnn.matmul.fp32_precision",
                   "mkldnn.conv.fp32_precision")
CUDA_PRECISION_FLAGS = ("cuda.matmul.fp32_precision", "cudnn.fp32_precision",
                        "cudnn.conv.fp32_precision")
FPMATH_VARIABLES = ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")


def product_unit(dtype: torch.dtype, device: torch.device | str) -> float:
    """The unit to which this process's backend may round the inputs of float32 matrix
    products and convolutions on ``device``: bfloat16's (2^-8) or TF32's (2^-11) where any of
    PyTorch's settings or oneDNN's environment variables allows it, else 0. A setting that
    cannot be read counts as bfloat16."""
    if dtype != torch.float32:
        return 0.0
    cuda = torch.device(device).type == "cuda"
    modes = set()
    for path in PRECISION_FLAGS + (CUDA_PRECISION_FLAGS if cuda else ()):
        try:
            modes.add(str(operator.attrgetter(path)(torch.backends)).lower())
        except (AttributeError, RuntimeError):
            modes.add("bf16")
    try:
        precision = torch.get_float32_matmul_precision()
    except RuntimeError:                       # mixed per-backend settings
        precision = "medium"
    modes.add({"medium": "bf16", "high": "tf32"}.get(precision, "ieee"))
    if cuda and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32):
        modes.add("tf32")
    for variable in FPMATH_VARIABLES:
        mode = os.environ.get(variable, "").lower()
        if mode and mode != "strict":
            modes.add("tf32" if mode == "tf32" else "bf16")
    if "bf16" in modes:
        return BFLOAT16_UNIT
    return TF32_UNIT if "tf32" in modes else 0.0


def gamma(n: int, unit: float) -> float:
    """n u / (1 - n u): the relative error bound of n floating-point operations in sequence;
    infinite where n u >= 1/2, when the bound does not hold."""
    if n * unit >= 0.5:
        return math.inf
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


def convolution_caveat(net: Chain | Graph, device: torch.device | str) -> str | None:
    """Why the bound may not cover the convolutions of ``net`` on ``device`` (module
    docstring), or None: cuDNN on a GPU, or a CPU without oneDNN, may compute them by Winograd
    or FFT algorithms."""
    ops = [n.op for n in net.nodes if n.op is not None] if isinstance(net, Graph) else net.ops
    if not any(isinstance(op.module, nn.Conv2d) for op in ops):
        return None
    if torch.device(device).type == "cuda" and torch.backends.cudnn.enabled:
        return ("cuDNN may compute this net's convolutions by Winograd or FFT algorithms, whose "
                "rounding lipcore's proof does not cover; for a proved certificate set "
                "torch.backends.cudnn.enabled = False")
    if torch.device(device).type == "cpu" and not (torch.backends.mkldnn.is_available()
                                                   and torch.backends.mkldnn.enabled):
        return ("without oneDNN, PyTorch may compute this net's convolutions with NNPACK's "
                "Winograd or FFT algorithms, whose rounding lipcore's proof does not cover")
    return None


def _norm(t: torch.Tensor) -> torch.Tensor:
    """The l2 norm of each sample of a batch."""
    return t.flatten(1).norm(dim=1)


def _affine(op: Op, size: torch.Tensor, spread: torch.Tensor, unit: float, products: float,
            eta: float, fmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense or conv layer's local error bound (l2, per sample) and whether a partial sum may
    overflow, given its input's magnitudes at x (``size``) and how far, in l2, the input may
    move from them (``spread``): |W| |h'| <= |W| |h| + |W| |h' - h|, and || |W| d ||_2 <=
    || |W| ||_2 ||d||_2."""
    m = op.module
    weight = m.weight.detach().double().cpu().abs()
    bias = m.bias.detach().double().cpu().abs() if m.bias is not None else None
    if isinstance(m, nn.Linear):
        terms = weight.shape[1] + (bias is not None)
        total = F.linear(size, weight, bias)
        spread_gain = linear_norm(weight)
        row_norms = weight.norm(dim=1)                         # per output
    else:
        terms = math.prod(weight.shape[1:]) + (bias is not None)
        stride, padding = pair(m.stride), pair(m.padding)
        total = F.conv2d(size, weight, bias, stride, padding)
        spread_gain = conv2d_norm_bound(weight, tuple(op.in_shape[-2:]), stride, padding)
        row_norms = weight.flatten(1).norm(dim=1).reshape(-1, 1, 1)     # per output channel
    if products:
        relative = (1 + 2 * products) ** 2 * (1 + gamma(terms, 2 * unit)) - 1
    else:
        relative = gamma(terms, unit)
    largest = total + row_norms * _column(spread, total)       # any output, anywhere in the ball
    overflow = (largest * (1 + relative)).flatten(1).amax(1) >= fmax
    local = relative * (_norm(total) + spread_gain * spread) \
        + (terms + 1) * eta * math.sqrt(total[0].numel())
    return local, overflow


def _local(what: Op | str, sizes: list[torch.Tensor], spreads: list[torch.Tensor], unit: float,
           eta: float) -> torch.Tensor:
    """A non-affine step's local error bound (l2, per sample), given its inputs' magnitudes at x
    (``sizes``) and how far, in l2, they may move (``spreads``): module docstring."""
    size, spread = sizes[0], spreads[0]
    count = math.sqrt(size[0].numel())                         # eta per value, in l2
    if isinstance(what, str):
        if what == "add":
            return unit * (_norm(sizes[0] + sizes[1]) + spreads[0] + spreads[1]) + eta * count
        if what == "adaptive_avg_pool2d":
            return _global_mean(size, spread, unit, eta, 1.0, False)
        if what in ("relu", "getitem", "pad", "flatten", "input"):
            return torch.zeros(len(size), dtype=torch.float64)
        raise ValueError(f"lipcore cannot bound the rounding of the function {what!r}")
    m, kind = what.module, what.kind
    leaf = leaf_of(m)
    gain = abs(leaf.gain(m, what.in_shape)) if leaf.gain else 1.0
    if kind in ("reshape", "identity") or isinstance(m, (nn.ReLU, nn.MaxPool2d)):
        return torch.zeros(len(size), dtype=torch.float64)
    if kind == "activation":
        return 8 * unit * (_norm(size + 1) + spread) + 8 * eta * count
    if kind == "sort":                         # the coefficient rounds, then the product
        return gamma(2, unit) * gain * (_norm(size) + spread) + 2 * eta * count
    if kind == "scale":
        s = batch_norm_scale(m).cpu().abs()
        mean = m.running_mean.detach().double().cpu().abs()
        beta = m.bias.detach().double().cpu().abs() if m.bias is not None else torch.zeros_like(s)
        shape = (-1,) + (1,) * (size.dim() - 2)
        at_x = s.reshape(shape) * (size + mean.reshape(shape)) + beta.reshape(shape)
        return gamma(12, unit) * (_norm(at_x) + float(s.max()) * spread) + 12 * eta * count
    if kind == "pool":
        if isinstance(m, nn.AdaptiveAvgPool2d) or "Adaptive" in type(m).__name__:
            return _global_mean(size, spread, unit, eta, gain, gain != 1.0)
        k = pair(m.kernel_size)
        pooled = F.avg_pool2d(size, k, pair(m.stride or m.kernel_size), pair(m.padding))
        window = math.prod(k) + 1 + 2 * (gain != 1.0)
        return gamma(window, unit) * gain * (_norm(pooled) + op_bound(what) / gain * spread) \
            + (window + 2) * eta * math.sqrt(pooled[0].numel())
    raise ValueError(f"lipcore cannot bound the rounding of {type(m).__name__} ({kind})")


def _global_mean(size: torch.Tensor, spread: torch.Tensor, unit: float, eta: float,
                 gain: float, scaled: bool) -> torch.Tensor:
    """Global average pooling of h w values per channel (times ``gain``): the mean moves by at
    most 1/sqrt(h w) of the input's l2 move."""
    n = size.shape[-1] * size.shape[-2]
    mean = size.mean((-2, -1))
    steps = n + 1 + 2 * scaled
    return gamma(steps, unit) * gain * (_norm(mean) + spread / math.sqrt(n)) \
        + (steps + 2) * eta * math.sqrt(mean[0].numel())


def _column(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample (or single) number shaped to broadcast over a batch like ``like``."""
    return per_sample.reshape(-1, *[1] * (like.dim() - 1))


def rounding_error(net: Chain | Graph, x: torch.Tensor, radius: torch.Tensor | float,
                   dtype: torch.dtype, products: float = 0.0, rounds_input: bool = False
                   ) -> torch.Tensor:
    """For each sample of ``x`` (a batch on the traced net's input shape), an upper bound on
    || fl(net)(x') - net(x') ||_2 over every x' with ||x' - x||_2 <= ``radius`` (one per sample,
    or one for all), the net evaluated in ``dtype``, the inputs of its matrix products and
    convolutions rounded to unit ``products`` (:func:`product_unit`); ``rounds_input``: x' is
    rounded to ``dtype`` first (data wider than the model). Infinite where a value may overflow
    or a layer is too long for the precision. Module docstring."""
    unit, info = unit_roundoff(dtype), torch.finfo(dtype)
    eta, fmax = unit * info.tiny, info.max
    x = x.detach().double().cpu()
    radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1).expand(len(x))
    steps = _nodes(net)
    values: list[Any] = [x]
    upstream = [1.0]                               # Lipschitz bound from the input to each step
    error = [unit * (_norm(x.abs()) + radius) if rounds_input else
             torch.zeros(len(x), dtype=torch.float64)]      # float error bound (l2) per step
    overflow = torch.zeros(len(x), dtype=torch.bool)
    with torch.no_grad():
        for step in steps[1:]:
            ins = step.inputs
            # |h(x')| <= |h(x)| + |d| with ||d||_2 <= L_up r + E: the spread (1e-6: the float64
            # values at x err too)
            sizes = [values[i].abs() * (1 + 1e-6) for i in ins]
            spreads = [(upstream[i] * radius + error[i]) * (1 + 1e-6) for i in ins]
            for size, spread in zip(sizes, spreads):
                overflow |= (size + _column(spread, size)).flatten(1).amax(1) >= fmax
            if isinstance(step.what, Op) and step.what.kind == "affine":
                local, spills = _affine(step.what, sizes[0], spreads[0], unit, products, eta,
                                        fmax)
                overflow |= spills
            else:
                local = _local(step.what, sizes, spreads, unit, eta)
            if step.what == "add":
                upstream.append(sum(upstream[i] for i in ins))
                error.append(sum(error[i] for i in ins) + local)
            else:
                upstream.append(step.factor * upstream[ins[0]])
                error.append(step.factor * error[ins[0]] + local)
            values.append(step.evaluate(*(values[i] for i in ins)))
    out = net.output if isinstance(net, Graph) else len(steps) - 1
    last = values[out].abs() + _column(upstream[out] * radius + error[out], values[out])
    overflow |= last.flatten(1).amax(1) >= fmax
    result = error[out] * (1 + 1e-9)                 # the float64 arithmetic of this bound
    return torch.where(overflow | ~torch.isfinite(result), torch.inf, result)
