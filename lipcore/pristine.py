"""Whether torch computes what lipcore analyses.

The bounds read a model's weights; the chain check (:func:`lipcore.trace.verify`) and the
certificates' margins evaluate the model, through torch's own functions. A change to those
functions for the whole process changes what the model computes without changing its weights,
and the chain check, evaluated through the same functions, cannot see it: a ``TorchFunctionMode``
that triples every ``F.linear`` made a net three times steeper than its certified bound (found
by a hostile reviewer). :func:`check` refuses in every such case it can see: an active torch
function or dispatch mode, a running ``torch.jit`` trace, ``torch.autocast``, and a function of
``torch``, ``torch.nn.functional``, ``torch._C``, ``torch._C._nn`` or the Tensor class (or a
module they name, such as the ``torch`` that ``F.relu`` calls) replaced since lipcore was
imported, or before it by one defined outside torch (profilers and quantisation simulators
patch them), and a device that flushes subnormal numbers to zero (``torch.set_flush_denormal``,
or a library built with fast-math: the rounding proof counts on gradual underflow, and a hidden
unit of 1e-38 times a weight of 5e37 moved a logit by 0.5 when flushed; a second reviewer's
hole). The code of each layer's class and module is checked per model by
:func:`lipcore.trace.foreign_code`. Kernels registered below Python (``torch.library`` on aten
operators) are not seen (docs/robustness.md).
"""
from __future__ import annotations

import os
import types
import typing

import torch
import typing_extensions
from torch.nn import functional as F

NAMESPACES = {"torch": torch, "torch.nn.functional": F, "torch._C": torch._C,
              "torch._C._nn": torch._C._nn, "torch.Tensor": torch.Tensor,
              "torch._C.TensorBase": torch._C.TensorBase}
# torch replaces it with its own wrapper once torchvision loads
TORCH_SWAPS = {"torch.manual_seed"}
FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType,
             types.WrapperDescriptorType, staticmethod, classmethod)
# where torch's own functions are defined (torch re-exports a few typing helpers)
HOMES = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
         os.path.abspath(typing.__file__), os.path.abspath(typing_extensions.__file__))


def _functions(namespace: object) -> dict[str, object]:
    """Its functions, and the modules it names (``torch`` inside ``torch.nn.functional``)."""
    return {name: obj for name, obj in vars(namespace).items()
            if isinstance(obj, (*FUNCTIONS, types.ModuleType))}


_AT_IMPORT = {label: _functions(namespace) for label, namespace in NAMESPACES.items()}


def _foreign(obj: object) -> bool:
    """A Python function defined outside torch: a wrapper put in torch's place."""
    if isinstance(obj, types.ModuleType):
        return False
    obj = getattr(obj, "__func__", obj)
    while getattr(obj, "__wrapped__", None) is not None:     # a decorator's wrapper: what it wraps
        obj = obj.__wrapped__
    code = getattr(obj, "__code__", None)
    return code is not None and not os.path.abspath(code.co_filename).startswith(HOMES)


def replaced() -> list[str]:
    """The torch functions that are not torch's own (module docstring), by qualified name: any
    function or module other than the one there when lipcore was imported (``F.relu = F.selu``
    counts: a reviewer's hole), and one added since that was written outside torch (through
    any decorator's ``__wrapped__``). Torch itself swaps ``torch.manual_seed`` for its own
    wrapper once torchvision loads (TORCH_SWAPS)."""
    found = []
    for label, namespace in NAMESPACES.items():
        now, then = _functions(namespace), _AT_IMPORT[label]
        for name, obj in now.items():
            old = then.get(name)
            swapped = old is not None and old is not obj and not (
                f"{label}.{name}" in TORCH_SWAPS and isinstance(obj, types.FunctionType))
            if swapped or _foreign(obj):
                found.append(f"{label}.{name}")
        found += [f"{label}.{name}" for name in then if name not in now]
    return found


def _autocast(kind: str) -> bool:
    """Whether autocast is on for device type ``kind`` (never for one it does not know: meta)."""
    try:
        return torch.is_autocast_enabled(kind)
    except RuntimeError:
        return False


def flushes_subnormals(kind: str) -> bool:
    """Whether device type ``kind`` computes a subnormal float32 or float64 product as zero
    (flush-to-zero or denormals-are-zero), probed on this thread."""
    for dtype, tiny in ((torch.float32, 2.0 ** -130), (torch.float64, 2.0 ** -1050)):
        x = torch.full((1,), tiny, dtype=dtype, device=kind)
        if float((x * 1.5).item()) == 0.0:
            return True
    return False


def check(who: str, devices: tuple[str, ...] = ("cpu",)) -> None:
    """Raise a RuntimeError naming what changed if torch's functions are not its own
    (module docstring), so that ``who`` (the caller, for the message) proves nothing about a
    function the model does not compute; ``devices``: the device kinds to check for autocast and
    for flushed subnormals."""
    why = []
    if torch._C._len_torch_function_stack():
        why.append("a TorchFunctionMode is active")
    if torch._C._len_torch_dispatch_stack():
        why.append("a TorchDispatchMode is active")
    if torch._C._get_tracing_state() is not None or torch.jit._trace._trace_module_map is not None:
        why.append("a torch.jit trace is running, which calls back into Python around every "
                   "layer")
    why += [f"torch.autocast ({kind}) is active: the model would run in a narrower precision "
            "than its parameters' dtype" for kind in sorted(set(devices)) if _autocast(kind)]
    why += [f"the {kind} flushes subnormal numbers to zero (torch.set_flush_denormal(True), or "
            "a library built with fast-math): the rounding proof counts on gradual underflow; "
            "call torch.set_flush_denormal(False)" for kind in sorted(set(devices))
            if kind != "meta" and flushes_subnormals(kind)]
    names = replaced()
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        why.append(f"torch functions were replaced ({shown})")
    if why:
        raise RuntimeError(f"{who}: {'; '.join(why)}. The model would not compute what lipcore "
                           "analyses from its weights; call it outside the mode or context, "
                           "with torch's own functions restored")
