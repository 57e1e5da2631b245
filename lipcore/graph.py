"""Nets with skip connections as a graph of operators, with a sound layer-wise bound through it.

Residual nets (:func:`lipcore.trace.is_residual`: lipcore's ``CifarResNet``, its ``BasicBlock``
and option-A shortcut, torchvision's ``ResNet``, ``BasicBlock`` and ``Bottleneck``) are read by
``torch.fx``: their ``forward`` becomes a graph whose nodes are the exact layer types
:func:`lipcore.trace.leaf_of` knows (``call_module``) and a few functions, each with a known
Lipschitz factor (:data:`FUNCTIONS`); anything else refuses the model. The bound follows the graph:

    L(input) = 1,   L(f(u)) = lip(f) L(u),   L(u + v) = L(u) + L(v),

which is sound because the Lipschitz constant of a sum is at most the sum of the constants and
that of a composition at most the product. Like every trace, the graph is evaluated from its own
parameters and checked against the model (:func:`lipcore.trace.verify`). LipSDP and LipLT need a
plain chain; through skip connections this layer-wise bound is what lipcore offers.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from .trace import Float64View, NotAnalysable, Op, leaf_of


def _slices_only(args: tuple, shape: tuple[int, ...], kwargs: dict) -> bool:
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return all(isinstance(i, slice) and (i.step or 1) >= 1 for i in index)


def _flatten_batch(args: tuple, shape: tuple[int, ...], kwargs: dict) -> bool:
    return tuple(args[1:]) in ((1,), ()) and not kwargs


def _global_mean(args: tuple, shape: tuple[int, ...], kwargs: dict) -> bool:
    return args[1] in (1, (1, 1))


def _constant_pad(args: tuple, shape: tuple[int, ...], kwargs: dict) -> bool:
    return kwargs.get("mode", "constant") == "constant" and len(args) <= 2


@dataclass(frozen=True)
class Function:
    """A function a traced forward may call: when its arguments are allowed, and its Lipschitz
    factor given the shape (no batch axis) of its tensor input."""

    allowed: Callable[..., bool]
    factor: Callable[[tuple[int, ...]], float]


FUNCTIONS: dict[Any, Function] = {
    F.relu: Function(lambda a, s, k: len(a) == 1, lambda s: 1.0),
    operator.getitem: Function(_slices_only, lambda s: 1.0),                  # a restriction
    F.pad: Function(_constant_pad, lambda s: 1.0),              # embedding plus a constant
    F.adaptive_avg_pool2d: Function(_global_mean, lambda s: 1 / math.sqrt(s[-1] * s[-2])),
    "flatten": Function(_flatten_batch, lambda s: 1.0),              # x.flatten(1)
    torch.flatten: Function(_flatten_batch, lambda s: 1.0),
}


@dataclass(frozen=True)
class Node:
    """One node of the graph: a layer (``op``) or a function, its input nodes, and its factor
    (for an add, the bound is the sum of its inputs')."""

    name: str
    inputs: tuple[int, ...]
    factor: float
    evaluate: Callable[..., torch.Tensor]
    op: Op | None = None

    @property
    def is_sum(self) -> bool:
        """A skip connection's sum (a layer named "add" by its module path is not one)."""
        return self.op is None and self.name == "add"


@dataclass(frozen=True)
class Graph:
    """A traced net with skip connections on inputs of ``input_shape`` (no batch axis)."""

    nodes: tuple[Node, ...]
    input_shape: tuple[int, ...]
    output: int

    def bound(self) -> float:
        """The layer-wise bound through the graph (module docstring)."""
        L = [1.0]
        for node in self.nodes[1:]:
            if node.is_sum:
                L.append(sum(L[i] for i in node.inputs))
            else:
                L.append(node.factor * L[node.inputs[0]])
        return L[self.output]

    def float64(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The graph's function in float64 on the CPU, from its own parameters."""
        def f(x: torch.Tensor) -> torch.Tensor:
            values = [x]
            for node in self.nodes[1:]:
                values.append(node.evaluate(*(values[i] for i in node.inputs)))
            return values[self.output]
        return f


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return leaf_of(m) is not None


def trace_graph(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The graph of ``model`` (module docstring), or NotAnalysable naming what is not allowed."""
    from .estimators.layerwise import op_bound
    graph = _LeafTracer().trace(model)
    module = fx.GraphModule(model, graph)
    ShapeProp(module).propagate(torch.zeros(1, *input_shape,
                                            dtype=next(model.parameters()).dtype))
    index: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    output = -1
    for n in graph.nodes:
        shape = tuple(n.meta["tensor_meta"].shape[1:]) if "tensor_meta" in n.meta else ()
        tensors = tuple(index[a] for a in n.args if isinstance(a, fx.Node))
        if n.op == "placeholder":
            node = Node("input", (), 1.0, lambda: None)
        elif n.op == "output":
            if len(tensors) != 1:
                raise NotAnalysable(f"{type(model).__name__} must return one tensor")
            output = tensors[0]
            continue
        elif n.op == "call_module":
            m = module.get_submodule(n.target)
            leaf = leaf_of(m)
            alpha, beta = leaf.slopes(m) if leaf.slopes else (0.0, 1.0)
            in_shape = tuple(n.args[0].meta["tensor_meta"].shape[1:])
            op = Op(m, leaf.kind, in_shape, shape, alpha, beta)
            view = Float64View(m)
            node = Node(n.target, tensors, op_bound(op),
                        lambda x, _f=leaf.apply, _m=view: _f(_m, x), op)
        elif n.op == "call_function" and n.target is operator.add and len(tensors) == 2:
            node = Node("add", tensors, 1.0, operator.add)
        else:
            fn = FUNCTIONS.get(n.target) if n.op in ("call_function", "call_method") else None
            in_shape = tuple(n.args[0].meta["tensor_meta"].shape[1:]) if tensors else ()
            if fn is None or len(tensors) != 1 or not fn.allowed(n.args, in_shape, n.kwargs):
                raise NotAnalysable(f"the traced forward of {type(model).__name__} calls "
                                    f"{n.op} {getattr(n.target, '__name__', n.target)} with "
                                    f"{n.args[1:]} {n.kwargs}, which lipcore cannot bound")
            args, kwargs = n.args[1:], dict(n.kwargs)
            call = (lambda x, _t=n.target, _a=args, _k=kwargs: getattr(x, _t)(*_a, **_k)) \
                if n.op == "call_method" else \
                (lambda x, _t=n.target, _a=args, _k=kwargs: _t(x, *_a, **_k))
            node = Node(str(getattr(n.target, "__name__", n.target)), tensors,
                        fn.factor(in_shape), call)
        index[n] = len(nodes)
        nodes.append(node)
    return Graph(tuple(nodes), tuple(input_shape), output)
