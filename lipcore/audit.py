"""Audit a trained net in one call: every sound bound that applies, certified and robust accuracy
against eps, and one page to paste into a paper's appendix.

``report = audit(model, data, eps=[...])`` computes:

* ``report.bounds``: one row per bound (``method``, ``value``, ``kind``, ``sound``, ``seconds``,
  ``note``). Sound upper bounds (LipSDP-neuron on a dense core, LipLT with sound norms, the
  layer-wise product) come from :func:`lipcore.certify.lipschitz_bound`, which refuses any model
  whose chain of operators it cannot prove (the refusal is the row's note); beside them an
  empirical lower bound and, for plain chains, LipLT with power-iteration norms, labelled an
  estimate (it approaches the norms from below, so it can be too small).
* ``report.curves``: one row per eps with the clean, certified (tightest sound global bound, and
  LipLT's pairwise constants where they apply) and robust accuracy (%). Robust accuracy is the
  per-sample worst case of :data:`lipcore.attacks.AUTOATTACK` (AutoAttack's standard version:
  APGD-CE, APGD-T, FAB-T, Square), and the audit stops with an error if an attack breaks a
  certified point (among the points it attacks). Certificates are cheap and cover every point;
  the attacks cost thousands of gradient steps per point, so ``attack_samples=n`` attacks n
  points drawn at random (with ``seed``, which also seeds the attacks): ``robust`` is then the
  sample's accuracy under the attacks and ``robust_low``/``robust_high`` a 95% interval, per
  radius, for that accuracy on all the points (:func:`robust_interval`). Like ``robust``
  itself, the interval is about the attacks: it bounds the true robust accuracy from above
  only, while ``certified`` bounds it from below.
* ``report.claims``: for a net built from deel-torchlip's 1-Lipschitz layers, one row per layer
  that claims a Lipschitz constant, checked against lipcore's own bounds (:func:`lipcore.onelip.
  claims`); its bounds read the net's checked export (:func:`lipcore.onelip.export`). Empty for
  other nets.
* ``report.save(path)``: an HTML page (figure and tables, nothing fetched from the network).

``python -m lipcore.audit`` does the same from the command line (see ``--help``).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from .attacks import AUTOATTACK, as_tensors, breaking_radii
from .attacks.ensemble import predict
from .certify import (BOUND_METHODS, certified_accuracy, certified_radii, check_certificates,
                      lipschitz_bound, round_up)
from .estimators import empirical_lower_bound
from .estimators.lipsdp import LipSDPError
from .estimators.liplt_ops import PowerIteration, liplt_bounds, operator_chain
from .estimators.liplt_sound import sound_norms
from . import onelip
from .cache import safe_load
from .trace import eval_mode
from .io import write_text

POWER_ITERATIONS = 100


@dataclass
class AuditReport:
    """What :func:`audit` found (module docstring)."""

    name: str
    bounds: pd.DataFrame
    curves: pd.DataFrame
    attacks: tuple[str, ...]
    samples: int
    seconds: float
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    attacked: int | None = None        # points attacked (None: all ``samples``)
    attack_seconds: float = 0.0        # of ``seconds``, those the attacks took

    def figure(self):
        """Accuracy against eps: clean, certified (sound) and robust (attacked)."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        c = self.curves
        attacked = self.attacked or self.samples
        ax.plot(c.eps, c.robust, "o-", label=f"robust ({'+'.join(self.attacks)}, {attacked} "
                f"points attacked): upper bound")
        if self.attacked is not None:
            ax.fill_between(c.eps, c.robust_low, c.robust_high, alpha=0.2,
                            label=f"its 95% interval for all {self.samples} points")
        for column, style in (("certified", "s-"), ("certified_pairwise", "^--")):
            if column in c and c[column].notna().any():
                ax.plot(c.eps, c[column], style, label=column.replace("_", " ") + ": lower bound")
        ax.axhline(float(c.clean.iloc[0]), color="grey", lw=0.8, label="clean")
        ax.set(xlabel="l2 radius eps", ylabel=f"accuracy (%) of {self.samples} points",
               ylim=(-2, 102), title=f"{self.name}: certified <= true robust <= attacked")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def save(self, path: str | Path) -> Path:
        """Write the audit as one offline HTML page (figure as an embedded PNG, two tables)."""
        import matplotlib.pyplot as plt
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        image = base64.b64encode(buffer.getvalue()).decode()
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Audit: "
                f"{html.escape(self.name)}</title><style>body{{font-family:sans-serif;max-width:"
                f"60em;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid "
                f"#ccc;padding:2px 6px}}</style></head><body><h1>Audit: {html.escape(self.name)}"
                f"</h1><p>{self.samples} test points, {self.seconds:.0f} s "
                f"({self.attack_seconds:.0f} s of attacks). Sound bounds certify; "
                f"estimates and lower bounds do not. Robust accuracy: per-sample worst case of "
                f"{', '.join(self.attacks)} (AutoAttack's reference implementation)"
                + (f", on {self.attacked} points drawn at random, with its exact 95% interval for "
                   f"all {self.samples}" if self.attacked is not None else "") + ".</p>"
                f"<img alt='accuracy against eps' src='data:image/png;base64,{image}'>"
                f"<h2>Lipschitz bounds</h2>{self.bounds.to_html(index=False, na_rep='-')}"
                f"<h2>Accuracy against eps</h2>{self.curves.to_html(index=False, na_rep='-')}"
                + (f"<h2>Lipschitz claims of the net's layers</h2><p>lower: power iteration on "
                   f"the layer's Jacobian; upper: lipcore's sound bound.</p>"
                   f"{self.claims.to_html(index=False, na_rep='-')}" if len(self.claims) else "")
                + "</body></html>")
        path = Path(path)
        write_text(path, page)
        return path


def _timed(fn):
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def _row(method: str, value: float, kind: str, sound: bool, seconds: float, note: str = "") -> dict:
    return dict(method=method, value=value, kind=kind, sound=sound, seconds=seconds, note=note)


def _bound_rows(model: nn.Module, input_shape: tuple[int, ...], x: torch.Tensor
                ) -> tuple[list[dict], torch.Tensor | None]:
    """Rows of ``bounds`` and LipLT's sound pairwise matrix (None where it does not apply). On a
    plain chain, LipLT's sound norms are computed once for its global and pairwise constants."""
    try:
        chain = operator_chain(model, input_shape)
    except ValueError:
        chain = None
    rows, pairwise = [], None
    for method, label in BOUND_METHODS.items():
        try:
            if method == "liplt" and chain is not None:
                sound, seconds = _timed(lambda: liplt_bounds(chain, sound_norms(chain), sound=True))
                pairwise = sound.pairwise.detach()
                rows.append(_row(label, round_up(float(sound.L)), "upper bound", True, seconds))
                continue
            b = lipschitz_bound(model, method, input_shape)
            rows.append(_row(label, b.value, "upper bound", True, b.seconds))
        except (ValueError, LipSDPError) as refused:
            rows.append(_row(label, math.nan, "upper bound", True, math.nan, str(refused)))
    if chain is not None:
        with torch.no_grad():
            estimate, seconds = _timed(lambda: float(liplt_bounds(
                chain, PowerIteration(chain).norms(chain, POWER_ITERATIONS), sound=False).L))
        rows.append(_row(f"LipLT, power iteration ({POWER_ITERATIONS} steps)", estimate,
                         "estimate", False, seconds,
                         "approaches the norms from below: may be too small"))
    flat = nn.Sequential(nn.Unflatten(1, input_shape), model) if len(input_shape) > 1 else model
    lower, seconds = _timed(lambda: empirical_lower_bound(
        flat, math.prod(input_shape), n_random=128, n_ascent=4, steps=30,
        inputs=x[:64].reshape(min(64, len(x)), -1)).value)
    if not math.isfinite(lower):
        raise RuntimeError(f"audit: the empirical lower bound is {lower}, so no sound bound can "
                           "be checked against it; the model's outputs are not finite at some "
                           "inputs?")
    rows.append(_row("empirical (gradient ascent)", lower, "lower bound", False, seconds,
                     "any sound bound must be at least this"))
    below = [r["method"] for r in rows if r["sound"] and r["value"] < lower * (1 - 1e-9)]
    if below:                                 # math.nan compares False: refusals pass
        raise RuntimeError(f"audit: the sound bound(s) {below} lie below the empirical lower "
                           f"bound {lower:.6g} that gradient ascent found on this model: a bug "
                           "in lipcore's analysis of it; please report the model")
    return rows, pairwise


def audit(model: nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
          eps: Sequence[float], input_shape: tuple[int, ...] | None = None,
          attacks: Sequence[str] = AUTOATTACK, iterations: int = 100,
          name: str | None = None, attack_samples: int | None = None,
          seed: int = 0) -> AuditReport:
    """Bounds, certified and robust accuracy of ``model`` on ``data`` (inputs in [0, 1]) at each
    radius of ``eps`` (module docstring). ``input_shape`` (no batch axis), if given,
    must be the data's.
    ``attack_samples``: attack only that many points, drawn at random with ``seed`` (None: all)."""
    start = time.perf_counter()
    x, y = as_tensors(data)
    grid = _radii(eps)
    input_shape = tuple(input_shape or x.shape[1:])
    if input_shape != tuple(x.shape[1:]):     # a bound at one shape certifies nothing at another
        raise ValueError(f"audit: input_shape {input_shape} is not the data's shape "
                         f"{tuple(x.shape[1:])}; pass the shape the images have, or reshape them")
    attacked = attack_sample(len(x), attack_samples, seed)
    with eval_mode(model):                   # the user's train/eval modes are left as they were
        return _audit(model, x, y, grid, input_shape, attacks, iterations, name, attacked,
                      seed, start)


def _audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: list[float],
           input_shape: tuple[int, ...], attacks: Sequence[str], iterations: int,
           name: str | None, attacked: torch.Tensor, seed: int, start: float) -> AuditReport:
    """:func:`audit` on checked arguments, the model in eval mode."""
    claims, analysed = pd.DataFrame(), model
    if onelip.uses_library(model):
        claims, analysed = onelip.claims(model, input_shape), onelip.export(model, input_shape)
    rows, pairwise = _bound_rows(analysed, input_shape, x)
    bounds = pd.DataFrame(rows)
    sound = bounds[bounds.sound & bounds.value.notna()]
    radii = certified_radii(model, (x, y), float(sound.value.min())) \
        if len(sound) else None
    pair_radii = certified_radii(model, (x, y), pairwise) \
        if pairwise is not None else None
    broken_at, attack_seconds = _timed(lambda: breaking_radii(
        model, (x[attacked], y[attacked]), grid, iterations=iterations, attacks=tuple(attacks),
        seed=seed))
    clean = 100.0 * float((predict(model, x, str(x.device), 1000) == y).double().mean())
    curves = []
    for e in grid:
        robust = broken_at > e
        row = dict(eps=e, clean=clean, robust=100.0 * float(robust.double().mean()))
        for column, r in (("certified", radii), ("certified_pairwise", pair_radii)):
            if r is not None:
                check_certificates(r[attacked], robust, e,
                                   f"audit of {name or type(model).__name__}")
            row[column] = certified_accuracy(r, e) if r is not None else np.nan
        known = float(np.nanmax([row["certified"], row["certified_pairwise"], 0.0]))
        row["robust_low"], row["robust_high"] = robust_interval(
            int(robust.sum()), len(robust), len(x), known, clean)
        curves.append(row)
    return AuditReport(name or type(model).__name__, bounds, pd.DataFrame(curves),
                       tuple(attacks), len(x), time.perf_counter() - start, claims,
                       None if len(attacked) == len(x) else len(attacked), attack_seconds)


def _radii(eps: Sequence[float]) -> list[float]:
    """The distinct radii of ``eps``, sorted, or a ValueError before any work is done."""
    try:
        values = [float(e) for e in eps if not isinstance(e, (bool, str))]
        complete = len(values) == len(eps)
    except (TypeError, ValueError):
        values, complete = [], False
    if not (values and complete and all(math.isfinite(v) and v > 0 for v in values)):
        raise ValueError(f"audit: eps must be a non-empty list of finite radii > 0, got {eps!r}")
    return sorted(set(values))


def attack_sample(points: int, size: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of the points to attack: all of them when ``size`` is None or at least
    ``points``, else ``size`` drawn without replacement by a generator seeded with ``seed``."""
    if size is None or size >= points:
        return torch.arange(points)
    if size < 1:
        raise ValueError(f"attack_samples must be a positive number of points, got {size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(points, generator=generator)[:size].sort().values


def robust_interval(robust: int, attacked: int, points: int, certified: float = 0.0,
                    clean: float = 100.0) -> tuple[float, float]:
    """A 95% interval, in %, for how many of all ``points`` survive the attacks when ``robust``
    of ``attacked`` points drawn at random without replacement did: the exact hypergeometric
    interval (every count of survivors K whose probability of a result at least as extreme,
    on each side, exceeds 2.5%), so attacking every point leaves nothing to estimate and
    attacking all but one leaves one point of doubt. It is cut to [``certified``, ``clean``],
    the accuracies (%) known on all the points: a certified point survives every attack and a
    misclassified one none. The level holds per radius, not jointly over a grid."""
    from scipy.stats import hypergeom
    survivors = np.arange(points + 1)
    below = hypergeom.cdf(robust, points, survivors, attacked)          # P(X <= robust | K)
    above = hypergeom.sf(robust - 1, points, survivors, attacked)       # P(X >= robust | K)
    possible = survivors[(below > 0.025) & (above > 0.025)]
    low, high = 100.0 * possible.min() / points, 100.0 * possible.max() / points
    low = min(max(low, certified), clean)
    return float(low), float(max(min(high, clean), low))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lipcore.audit MODEL_FILE --arch NAME --data NAME``: audit a checkpoint."""
    from .data import load_dataset
    parser = argparse.ArgumentParser(prog="python -m lipcore.audit", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("model_file", help="a state dict saved with torch.save(model.state_dict()) "
                        "(read with weights_only=True: it cannot run code)")
    parser.add_argument("--arch", help="architecture of the state dict: a CRM name (4C3F, "
                        "6C2F, ...), dense widths like 784-256-10[:relu], resnet20, preresnet20, "
                        "preresnet32, or torchvision:NAME (e.g. torchvision:resnet18)")
    parser.add_argument("--allow-pickle", action="store_true", help="read MODEL_FILE as a whole "
                        "pickled nn.Module (torch.save(model)) with weights_only=False. This RUNS "
                        "ANY CODE THE FILE CONTAINS: use it only for a file you made yourself")
    parser.add_argument("--data", default="mnist", help="data set name (default mnist)")
    parser.add_argument("--data-dir", default=None, help="folder of the .npz files (else "
                        "$LIPCORE_DATA)")
    parser.add_argument("--eps", default="0.1,0.5,1.0", help="comma-separated l2 radii")
    parser.add_argument("--samples", type=int, default=1000, help="test points, the first of "
                        "the test set (default 1000)")
    parser.add_argument("--iterations", type=int, default=100, help="attack iterations "
                        "(default 100, AutoAttack's)")
    parser.add_argument("--attack-samples", type=int, default=None, help="attack only this "
                        "many test points, drawn at random (default: all); certificates cover all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attacks and the sample")
    parser.add_argument("--out", default="audit.html", help="the page to write")
    args = parser.parse_args(argv)
    for option, value in (("--samples", args.samples), ("--attack-samples", args.attack_samples)):
        if value is not None and value < 1:
            parser.error(f"{option} must be a positive number of test points, got {value}")
    if args.arch is None and not args.allow_pickle:
        parser.error("give --arch for a state dict (or --allow-pickle for a file you made)")
    dataset = load_dataset(args.data, args.data_dir)
    data = tuple(t[:args.samples] for t in dataset.test.tensors)
    if args.allow_pickle:
        model = torch.load(args.model_file, map_location="cpu", weights_only=False)
    else:
        model = architecture(args.arch, data[0].shape[1], dataset.num_classes)
        model.load_state_dict(safe_load(Path(args.model_file)))
    report = audit(model, data, [float(e) for e in args.eps.split(",")],
                   iterations=args.iterations, name=args.arch or Path(args.model_file).stem,
                   attack_samples=args.attack_samples, seed=args.seed)
    print(report.bounds.to_string(index=False))
    print(report.curves.to_string(index=False))
    print(f"wrote {report.save(args.out)}")


def architecture(spec: str, channels: int = 1, classes: int = 10) -> nn.Module:
    """A named architecture for a state dict: a CRM net (``4C3F``), dense widths (``784-256-10``,
    optionally ``:tanh``), lipcore's residual nets (``resnet20``, ``preresnet20``,
    ``preresnet32``) or a torchvision classifier (``torchvision:resnet18``, any name of
    ``torchvision.models.list_models``); the residual nets take ``channels`` and ``classes``."""
    from .models import CRM_ARCHITECTURES, crm_net, fully_connected
    from .resnets import DEPTHS, residual_net
    if spec in CRM_ARCHITECTURES:
        return crm_net(spec)
    if spec in DEPTHS:
        return residual_net(spec, classes, channels)
    if spec.startswith("torchvision:"):
        import torchvision
        name = spec.partition(":")[2]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"torchvision has no classifier {name!r}; choose one of "
                             "torchvision.models.list_models(module=torchvision.models)")
        return torchvision.models.get_model(name, num_classes=classes)
    widths, _, act = spec.partition(":")
    try:
        return fully_connected([int(w) for w in widths.split("-")], act or "relu")
    except ValueError as bad:
        raise ValueError(f"unknown architecture {spec!r}: give one of {sorted(CRM_ARCHITECTURES)}"
                         f", {sorted(DEPTHS)}, torchvision:NAME or dense widths like "
                         f"784-256-10[:relu] ({bad})") from None


if __name__ == "__main__":
    main()
