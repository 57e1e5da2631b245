"""Certificates refuse a process whose torch functions are not torch's own (a hostile reviewer's
hole: a TorchFunctionMode that tripled every F.linear changed the model and the chain check
alike, and a point was certified at 0.617 with a class change 0.6167 away), and the libraries
lipcore itself loads do not trigger the refusal."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from lipcore import pristine
from lipcore.certify import certified_radii, lipschitz_bound


class Steeper(TorchFunctionMode):
    """Every F.linear three times steeper: what a profiler or a quantisation simulator could do."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return 3.0 * out if func is F.linear else out


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def test_a_torch_function_mode_is_refused_by_the_bound_and_the_certificate():
    model = small_net()
    x = torch.rand(8, 4)
    y = model(x).argmax(1)
    bound = lipschitz_bound(model, "naive", (4,)).value
    with Steeper():
        with pytest.raises(RuntimeError, match="TorchFunctionMode"):
            lipschitz_bound(model, "naive", (4,))
        with pytest.raises(RuntimeError, match="TorchFunctionMode"):
            certified_radii(model, (x, y), bound)
    assert (certified_radii(model, (x, y), bound) >= 0).all()          # and fine outside it


@pytest.mark.parametrize("patch", ["wrapper", "builtin", "partial"])
def test_a_replaced_torch_function_is_named_and_refused(monkeypatch, patch):
    import functools
    model = small_net()
    x = torch.rand(8, 4)
    y = model(x).argmax(1)
    bound = lipschitz_bound(model, "naive", (4,)).value
    linear = F.linear
    monkeypatch.setattr(F, "linear", {"wrapper": lambda *a, **k: 3.0 * linear(*a, **k),
                                      "builtin": torch.relu,
                                      "partial": functools.partial(linear)}[patch])
    assert pristine.replaced() == ["torch.nn.functional.linear"]
    with pytest.raises(RuntimeError, match="torch.nn.functional.linear"):
        certified_radii(model, (x, y), bound)
    with pytest.raises(RuntimeError, match="torch.nn.functional.linear"):
        lipschitz_bound(model, "naive", (4,))


def test_a_tensor_method_put_in_front_of_torchs_is_seen(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "__add__", lambda a, b: torch.sub(a, b), raising=False)
    assert "torch.Tensor.__add__" in pristine.replaced()


def test_the_libraries_lipcore_loads_change_no_torch_function():
    """torchvision makes torch swap torch.manual_seed for its own wrapper: not a refusal."""
    import art.attacks.evasion  # noqa: F401
    import deel.torchlip  # noqa: F401
    import pyautoattack.autopgd_base  # noqa: F401
    import pyautoattack.fab_pt  # noqa: F401
    import pyautoattack.square  # noqa: F401
    import torchvision  # noqa: F401

    import lipcore.audit  # noqa: F401
    assert pristine.replaced() == []
    pristine.check("this test")


def test_a_bound_for_another_input_shape_is_refused():
    """Hostile review: with global average pooling the net runs on any image size, and its
    bound at 8 x 8 (0.13) is below its constant at 2 x 2 (above 0.14)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).eval()
    at_8, at_2 = (lipschitz_bound(model, "naive", (1, s, s)) for s in (8, 2))
    assert at_8.value < at_2.value and at_8.input_shape == (1, 8, 8)
    x = torch.rand(16, 1, 2, 2)
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\)"):
        certified_radii(model, (x, y), at_8)
    assert torch.equal(certified_radii(model, (x, y), at_2), certified_radii(model, (x, y),
                                                                               at_2.value))


def test_a_model_on_the_meta_device_gets_the_tracers_message_not_autocasts():
    model = nn.Sequential(nn.Linear(4, 2)).to("meta")
    with pytest.raises(Exception, match="meta device"):
        lipschitz_bound(model, "naive", (4,))


def test_flush_to_zero_is_refused():
    """Second hostile review: with subnormals flushed, a hidden unit of 1e-37 x times a weight
    of 5e37 vanishes, and a point certified at 0.9 changed class 0.89 away."""
    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1e-37)
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[5e37], [-5e37]]))
        net[2].bias.copy_(torch.tensor([-0.5, 0.5]))
    x, y = torch.tensor([[1.0]]), torch.tensor([0])
    bound = lipschitz_bound(net, "lipsdp", (1,))
    assert certified_radii(net, (x, y), bound).item() > 0.89          # sound without the flush
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        assert net(torch.tensor([[0.11]])).argmax().item() == 1          # what the flush breaks
        with pytest.raises(RuntimeError, match="set_flush_denormal"):
            certified_radii(net, (x, y), bound)
    finally:
        torch.set_flush_denormal(False)
    assert not pristine.flushes_subnormals("cpu")


def test_an_export_the_net_has_moved_on_from_is_refused():
    """Second hostile review: deel-torchlip caches its normalised weights and refreshes them on
    every train-mode call, so a net trained on after its export computes something else."""
    from deel import torchlip as tl

    from lipcore import onelip
    from lipcore.trace import NotAnalysable
    torch.manual_seed(0)
    net = tl.Sequential(tl.SpectralLinear(4, 8), tl.GroupSort2(), tl.SpectralLinear(8, 3)).eval()
    plain = onelip.export(net, (4,))
    x = torch.rand(16, 4)
    y = net(x).argmax(1)
    bound = lipschitz_bound(plain, "naive", (4,))
    assert (certified_radii(net, (x, y), bound) >= 0).all()
    with torch.no_grad():                                  # a training step, in effect
        net[0].parametrizations.weight.original.add_(torch.randn(8, 4))
    net.train()
    net(x)                                                 # refreshes the cached weights
    net.eval()
    with pytest.raises(ValueError, match="another net"):    # certified_radii exports anew
        certified_radii(net, (x, y), bound)
    with pytest.raises(NotAnalysable, match="Export it again"):
        onelip.agreeing(net, plain, (4,))


def _float32_step(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A class change near x[1] = 0.505, in float32 only: the float64 chain check and margins
    never see it (a third reviewer's patches)."""
    if x.dtype != torch.float32 or out.shape[-1] != 2:
        return out
    step = ((x[..., 1] - 0.505).abs() < 1e-3).to(out.dtype)
    return out - 10 * step[..., None] * torch.tensor([1.0, -1.0])


def _patched_call(monkeypatch):
    original = nn.Module._call_impl

    def _call_impl(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return _float32_step(args[0], out) if type(self) is nn.Linear else out
    monkeypatch.setattr(nn.Module, "_call_impl", _call_impl)
    monkeypatch.setattr(nn.Module, "__call__", _call_impl)
    return "Module._call_impl"


def _rebound_functional(monkeypatch):
    import types

    import torch.nn.modules.linear as linear_module
    fake = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    fake.linear = lambda x, w, b=None: _float32_step(x, F.linear(x, w, b))
    monkeypatch.setattr(linear_module, "F", fake)
    return "torch.nn.modules.linear.F"


@pytest.mark.parametrize("patch", [_patched_call, _rebound_functional])
def test_code_replaced_in_a_layers_class_or_module_is_refused(monkeypatch, patch):
    """nn.Module.__call__ replaced at class level, or the F that nn.Linear.forward reads
    rebound in its module: both certified a radius of 0.354 with a class change 0.005 away.
    The layer's class and module are now checked for code their library did not write."""
    from lipcore.trace import NotAnalysable
    net = nn.Sequential(nn.Linear(10, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0] + [0.0] * 9, [0.0] * 10]))
        net[0].bias.zero_()
    x, y = torch.full((1, 10), 0.5), torch.tensor([0])
    bound = lipschitz_bound(net, "naive")
    assert certified_radii(net, (x, y), bound) > 0.3
    where = patch(monkeypatch)
    moved = x.clone()
    moved[0, 1] += 0.005
    assert net(moved).argmax(1).item() == 1                       # the patch is live
    for call in (lambda: lipschitz_bound(net, "naive"),
                 lambda: certified_radii(net, (x, y), bound.value)):
        with pytest.raises(NotAnalysable, match=where):
            call()


def test_a_module_that_torchs_functions_read_is_seen(monkeypatch):
    import types
    monkeypatch.setattr(F, "torch", types.SimpleNamespace(**vars(torch)))
    assert pristine.replaced() == ["torch.nn.functional.torch"]


def _steep_sequential(monkeypatch, install):
    """A net and a float32-only change of nn.Sequential's input (100 times steeper around x),
    installed by ``install(evil_call_impl)``: invisible to every float64 check."""
    x0 = torch.full((1, 4), 0.5)
    original = nn.Module._call_impl

    def evil(self, *args, **kwargs):
        if type(self) is nn.Sequential and args[0].dtype == torch.float32:
            args = (x0 + 100 * (args[0] - x0),) + args[1:]
        return original(self, *args, **kwargs)
    install(monkeypatch, evil)


@pytest.mark.parametrize("install", [
    lambda mp, evil: mp.setattr(nn.Module, "_call_impl", __import__("functools")
                                .partialmethod(evil)),
    lambda mp, evil: mp.setattr(nn.Module, "_call_impl", torch.enable_grad()(evil)),
    lambda mp, evil: mp.setattr(F, "relu", torch.enable_grad()(lambda x, inplace=False:
                                                                 10 * torch.relu(x))),
    lambda mp, evil: mp.setattr(F, "relu", F.selu),
    lambda mp, evil: mp.setattr(torch._C, "_get_tracing_state", lambda: None),
], ids=["partialmethod", "torch-decorated", "decorated-F", "torch-for-torch", "torch._C"])
def test_replacements_that_look_like_torchs_own_code_are_refused(monkeypatch, install):
    """A fourth hostile review: a partialmethod (no code to check), torch's own decorator around
    a user's function (its wrapper's code lies in torch), another torch function in F.relu's
    place (SELU's slope is 1.76), a replaced torch._C function: each certified a point that
    changed class inside its radius. Classes and torch's namespaces are now compared object by
    object with what they held when lipcore was imported."""
    from lipcore.trace import NotAnalysable
    model = small_net()
    x = torch.rand(8, 4)
    y = model(x).argmax(1)
    bound = lipschitz_bound(model, "naive", (4,))
    _steep_sequential(monkeypatch, install)
    with pytest.raises((NotAnalysable, RuntimeError), match="not the code|were replaced"):
        certified_radii(model, (x, y), bound)


def test_a_model_compiled_in_place_and_an_object_that_acts_when_copied_are_refused():
    """module.compile() sets _compiled_call_impl, which nn.Module calls instead of the class's
    code (a reviewer set a lambda there); an attribute whose __deepcopy__ installed a global
    hook after every check (every check copies the model) certified a point 0.016 from a class
    change."""
    from lipcore.trace import NotAnalysable
    model = small_net()
    model._compiled_call_impl = lambda x: model._call_impl(2 * x)
    with pytest.raises(NotAnalysable, match="compiled in place"):
        lipschitz_bound(model, "naive", (4,))

    class Armed:
        def __deepcopy__(self, memo):
            return Armed()
    for holder in (lambda net: net, lambda net: net[0].weight):     # on a module, on a weight
        model = small_net()
        holder(model).note = Armed()
        with pytest.raises(NotAnalysable, match="types lipcore does not know"):
            lipschitz_bound(model, "naive", (4,))
