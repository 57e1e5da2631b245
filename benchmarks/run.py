"""Time the Lipschitz estimators at named sizes and compare bounds side by side.

    python benchmarks/run.py                 # all sizes, writes benchmarks/results.json
    python benchmarks/run.py --sizes mnist196 --repeat 3
    python benchmarks/run.py --markdown      # print the README table from results.json

Also times the trainers' expensive steps: the ADMM Lipschitz step of Pauli et al., and a CLIP
epoch against a standard epoch (the "cheap" claim of Bungert et al.), issue 31's audit of a
trained MNIST 4C3F net (``--parts audit``) and the sound bounds of a ResNet-20 and torchvision's
ResNet-18 (``--parts resnet``).
Estimators: naive (product of spectral norms), LipSDP-neuron and -layer (lipcore, certified),
ECLipsE-Fast (the eclipse-nn package, a published peer estimator), and the empirical lower
bound that every upper bound must exceed. Nets are randomly initialised (PyTorch default init,
seed 0), so the numbers measure the estimators, not trained models.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from lipcore.estimators import empirical_lower_bound, lipsdp, naive_bound
from lipcore.models import fully_connected
from lipcore.run import cpu_model, git_commit

SIZES = {  # name: (widths, activation, what the spec asks)
    "mnist196": ([196, 50, 10], "tanh", "LipSDP-neuron < 2 s (Pauli et al. MNIST net)"),
    "mnist784": ([784, 64, 64, 10], "relu", "LipSDP-neuron < 5 s (CLIP MNIST MLP size)"),
    "wide256": ([784, 256, 256, 10], "relu", "LipSDP-neuron within 1% of SCS in <= 20 s"),
    "wide1024": ([784, 1024, 1024, 10], "relu",
                 "LipSDP-neuron in <= 5 min, tighter than ECLipsE-Fast"),
    "deep64": ([784] + [64] * 10 + [10], "relu", "a deep narrow net (10 layers of 64)"),
}
NEURON_ONLY = {"wide256", "wide1024", "deep64"}   # layer coupling: minutes of SCS there
NO_SCS = {"wide1024"}                   # SCS: each iteration an eigendecomposition of 2,832 rows
RESULTS = Path(__file__).with_name("results.json")
PARTS = {"estimators": set(), "trainers": {"admm_step", "clip_epoch"},     # estimators: --sizes
         "crm": {"crm_step", "crm_epoch"}, "certificate": {"crm_certificate"},
         "audit": {"audit"}, "resnet": {"resnet20_bound", "resnet18_bound"}}
AUDIT_ATTACKED = 100     # of the audit's 10,000 MNIST test images, those attacked
CERTIFICATE_BUDGET_S = 40.0   # the budgeted 6C2F certificate's sweeps (issue 31: <= 45 s in all)


def timed(fn, repeat: int):
    """(result of the last call, fastest wall time in seconds)."""
    best, out = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def eclipse_fast(weights: list[np.ndarray], alpha: float, beta: float) -> float:
    from eclipse_nn import ECLipsE_Fast
    hidden = len(weights) - 1
    bound = ECLipsE_Fast([torch.from_numpy(w) for w in weights], [alpha] * hidden, [beta] * hidden)
    return float(bound)


def bench_size(name: str, repeat: int) -> list[dict]:
    widths, act, spec = SIZES[name]
    net = fully_connected(widths, act, seed=0)
    W, (alpha, beta) = net.weights(), net.slope_bounds
    lower = empirical_lower_bound(net, widths[0], n_random=512, seed=0).value
    rows = []

    def add(estimator, value, seconds, sound):
        rows.append(dict(size=name, widths="-".join(map(str, widths)), activation=act,
                         estimator=estimator, bound=value, seconds=round(seconds, 4),
                         sound=sound, ratio_to_lower=value / lower, spec=spec))
    value, seconds = timed(lambda: naive_bound(W, beta), repeat)
    add("naive", value, seconds, "yes")
    for coupling in ("neuron",) if name in NEURON_ONLY else ("neuron", "layer"):
        fo, seconds = timed(lambda: lipsdp(W, alpha, beta, coupling, solver="first-order",
                                           progress=False), repeat)
        add(f"LipSDP-{coupling} (first-order)", fo.bound, seconds, "yes, certified")
        if name in NO_SCS:
            continue
        scs, seconds = timed(lambda: lipsdp(W, alpha, beta, coupling, solver="SCS"),
                             1 if name == "wide256" else repeat)
        add(f"LipSDP-{coupling} (SCS)", scs.bound, seconds, "yes, certified")
        rows[-2]["gap_to_scs"] = fo.bound / scs.bound - 1.0
    value, seconds = timed(lambda: eclipse_fast(W, alpha, beta), repeat)
    add("ECLipsE-Fast (eclipse-nn)", value, seconds, "per its paper")
    add("empirical lower bound", lower, float("nan"), "lower bound")
    for row in rows:
        if row["estimator"] != "empirical lower bound" and row["bound"] < lower:
            raise AssertionError(f"{row['estimator']} on {name} is below the lower bound")
    return rows


def bench_admm_step(repeat: int) -> list[dict]:
    """One ADMM Lipschitz step (9b) on the Pauli et al. MNIST net 196-50-10 (spec: < 15 s):
    the first (cold, loose-then-tight) solve and a warm-started re-solve after a W-step-sized
    change of the weights."""
    from lipcore.trainers import ADMMConfig, LipschitzStep

    W = fully_connected([196, 50, 10], "tanh", seed=0).weights()
    t = [np.diag(lipsdp(W).T)]
    rng = np.random.default_rng(0)
    cold, warm = [], []
    for _ in range(repeat):
        step = LipschitzStep([w.shape for w in W], ADMMConfig(rho=0.25, mu=0.01))
        cold.append(step.solve(W, t)[1])
        warm.append(step.solve([w + 0.01 * rng.normal(size=w.shape) for w in W], t)[1])
    spec = "ADMM Lipschitz step < 15 s (Pauli et al. MNIST)"
    return [dict(size="admm196", widths="196-50-10", activation="tanh", estimator=name,
                 bound=float("nan"), seconds=round(min(times), 4), sound="n/a",
                 ratio_to_lower=float("nan"), spec=spec)
            for name, times in [("ADMM Lipschitz step, first (cold)", cold),
                                ("ADMM Lipschitz step, warm start", warm)]]


def bench_clip_epoch(repeat: int, n_images: int = 54_000) -> list[dict]:
    """Cost of one CLIP epoch vs one standard epoch for the CLIP MNIST MLP 784-64-64-10 sigmoid
    (spec: at most 2x). Real MNIST when $LIPCORE_DATA has it, else a synthetic stand-in. The
    variants take turns within each repeat, so a slow spell of a shared machine hits them all;
    the best of each is kept, and the median ratio is reported beside it."""
    from lipcore.data import load_dataset, synthetic_dataset
    from lipcore.trainers.clip import CLIPConfig, LipschitzSet, clip_train

    try:
        data, source = load_dataset("mnist"), "real MNIST"
    except Exception:                                    # offline without data: say so
        data, source = synthetic_dataset("mnist", 60000, 10, seed=0), "synthetic stand-in"
    x, y = data.train.tensors
    train_set = torch.utils.data.TensorDataset(x[:n_images], y[:n_images])
    held_out = x[54000:55000]
    warm_up = torch.utils.data.TensorDataset(x[:2048], y[:2048])     # first calls pay set-up
    clip_train(fully_connected([784, 64, 64, 10], "sigmoid", seed=0), warm_up,
               CLIPConfig(epochs=1, regulariser="none"))
    variants = {"standard epoch": dict(regulariser="none"),
                "clip epoch (default: ascent on every 4th minibatch)": dict(regulariser="clip"),
                "clip epoch, ascent on every minibatch": dict(regulariser="clip", ascent_every=1)}
    times = {name: [] for name in variants}
    for _ in range(repeat):
        for name, options in variants.items():
            net = fully_connected([784, 64, 64, 10], "sigmoid", seed=0)
            pairs = LipschitzSet.from_images(held_out, noise=0.1)
            cfg = CLIPConfig(epochs=1, lam0=0.1, **options)
            start = time.perf_counter()
            clip_train(net, train_set, cfg, pairs if cfg.regulariser == "clip" else None)
            times[name].append(time.perf_counter() - start)
    standard = times["standard epoch"]
    spec = f"CLIP epoch <= 2x standard epoch ({source}, {n_images} images, batch 128)"
    return [dict(size="clip_epoch", widths="784-64-64-10", activation="sigmoid",
                 estimator=name, bound=float("nan"), seconds=round(min(t), 4), sound="n/a",
                 ratio_to_lower=min(t) / min(standard),
                 median_ratio=float(np.median(t) / np.median(standard)), spec=spec)
            for name, t in times.items()]


def bench_crm(repeat: int, n_images: int = 10_000) -> list[dict]:
    """CRM on 4C3F: the pairwise constants per training step (LipLT vs naive power iteration, on
    4C3F and 6C2F; spec: at most 2x), a CRM epoch vs a standard epoch on real MNIST (or a
    stand-in)."""
    from lipcore.data import load_dataset, synthetic_dataset
    from lipcore.experiments.crm_liplt import step_timings
    from lipcore.models import crm_net
    from lipcore.trainers.crm import CRMConfig, crm_train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    steps = [step_timings(device) for _ in range(repeat)]
    for arch_rows in zip(*steps):
        arch = arch_rows[0]["arch"]
        for label in ("LipLT pairwise", "naive pairwise"):
            best = min(r[f"{label} (s)"] for r in arch_rows)
            naive = min(r["naive pairwise (s)"] for r in arch_rows)
            gflop = arch_rows[0][f"{label} (GFLOP)"]
            rows.append(dict(size="crm_step", widths=arch, activation="relu",
                             estimator=f"{label}, one training step ({arch_rows[0]['power_iterations']} power iterations, with gradient; {gflop:.2f} GFLOP)",
                             bound=float("nan"), seconds=round(best, 4), sound="estimate",
                             ratio_to_lower=best / naive, spec="LipLT step <= 2x naive step"))
    try:
        data, source = load_dataset("mnist"), "real MNIST"
    except Exception:                                    # offline without data: say so
        data, source = synthetic_dataset("mnist", n_images, 10, seed=0), "synthetic stand-in"
    x, y = data.train.tensors
    subset = torch.utils.data.TensorDataset(x[:n_images], y[:n_images])
    times = {"standard": [], "crm": []}
    for _ in range(repeat):
        for loss in times:
            cfg = CRMConfig(loss=loss, epochs=1, robust_start=0, decay_epoch=1)
            out = crm_train(crm_net("4C3F", 0), subset, cfg, device)
            times[loss].append(out["seconds"])
    for loss, t in times.items():
        rows.append(dict(size="crm_epoch", widths="4C3F", activation="relu",
                         estimator=f"{loss} epoch ({source}, {n_images} images, batch 512)",
                         bound=float("nan"), seconds=round(min(t), 3), sound="n/a",
                         ratio_to_lower=min(t) / min(times["standard"]),
                         median_ratio=float(np.median(t) / np.median(times["standard"])),
                         spec="CRM epoch vs standard epoch"))
    return rows


def bench_crm_certificate() -> list[dict]:
    """The sound LipLT certificate of random 4C3F and 6C2F nets (one-off per trained net, CPU):
    its global L over the power-iteration estimate (300 iterations, from below)."""
    from lipcore.estimators import liplt_ops, liplt_sound
    from lipcore.models import crm_net

    rows = []
    for arch, shape in (("4C3F", (1, 28, 28)), ("6C2F", (3, 32, 32))):
        chain = liplt_ops.operator_chain(crm_net(arch, 0), shape)
        with torch.no_grad():
            estimate = liplt_ops.liplt_bounds(
                chain, liplt_ops.PowerIteration(chain).norms(chain, 300), sound=False)
        budgets = (None, CERTIFICATE_BUDGET_S) if arch == "6C2F" else (None,)
        for budget in budgets:
            with warnings.catch_warnings():     # the budgeted run warns that it cut sweeps
                warnings.filterwarnings("ignore", message="sound_norms: the time budget")
                bound, seconds = timed(lambda: liplt_ops.liplt_bounds(
                    chain, liplt_sound.sound_norms(chain, time_budget_s=budget), sound=True), 1)
            rows.append(dict(
                size="crm_certificate", widths=arch, activation="relu",
                estimator="sound LipLT (one sweep per start, Gram matrices <= 8192 dims, DFT, "
                          "splits), CPU" + ("" if budget is None else
                                            f", sweeps cut at time_budget_s={budget:g}"),
                bound=float(bound.L), seconds=round(seconds, 2), sound=True,
                ratio_to_lower=float(bound.L / estimate.L),
                spec="<= 1.05x (4C3F), 1.15x (6C2F) the estimate in <= 2 min" if budget is None
                else "issue 31: <= 45 s and <= 1.15x the estimate"))
    return rows


def bench_audit() -> list[dict]:
    """Issue 31's audit spec: the whole ``lipcore.audit`` of an MNIST 4C3F net (one epoch of
    standard training on real MNIST, not timed) on the 10,000 test images: every bound and the
    certificates on all of them, the default AutoAttack ensemble at 100 iterations on
    AUDIT_ATTACKED of them drawn at random; what all 10,000 would take under attack is
    extrapolated from the measured time per attacked point."""
    from lipcore.audit import audit
    from lipcore.data import load_dataset
    from lipcore.models import crm_net
    from lipcore.trainers import TrainConfig, train

    mnist = load_dataset("mnist")
    model = crm_net("4C3F", 0)
    train(model, mnist.train, TrainConfig(epochs=1, batch_size=128, lr=1e-3, optimizer="adam"))
    images, labels = mnist.test.tensors
    report, seconds = timed(lambda: audit(model, (images, labels), eps=[0.5, 1.0, 1.58],
                                          attack_samples=AUDIT_ATTACKED), 1)
    per_point = report.attack_seconds / AUDIT_ATTACKED
    everything = (seconds - report.attack_seconds + per_point * len(images)) / 3600
    widest = float((report.curves.robust_high - report.curves.robust_low).max())
    return [dict(size="audit", widths="4C3F", activation="relu",
                 estimator=f"lipcore.audit: every bound, certificates on {len(images)} MNIST "
                           f"test images, AutoAttack at 3 radii on {AUDIT_ATTACKED} of them (clean "
                           f"{report.curves.clean.iloc[0]:.1f}%)",
                 bound=float(report.bounds[report.bounds.sound].value.min()),
                 seconds=round(seconds, 1), sound=True, ratio_to_lower=float("nan"),
                 spec=f"10,000 images in <= 5 min: {seconds / 60:.1f} min with "
                      f"{AUDIT_ATTACKED} attacked (robust accuracy's 95% interval up to "
                      f"{widest:.0f} points wide); attacks {per_point:.2f} s per point, so "
                      f"{everything:.1f} h with all {len(images)} attacked")]


def bench_resnet_bounds() -> list[dict]:
    """Issue 31's ResNet spec: the sound layer-wise bound, through the skip connections, of a
    random CIFAR ResNet-20 (0.27M parameters, lipcore's) and of torchvision's ResNet-18 (11M) on
    32 x 32 images."""
    from torchvision.models import resnet18

    from lipcore.certify import lipschitz_bound
    from lipcore.resnets import residual_net
    rows = []
    torch.manual_seed(0)                                     # torchvision's init, as lipcore's
    for size, label, net in (("resnet20_bound", "ResNet-20", residual_net("resnet20", seed=0)),
                             ("resnet18_bound", "torchvision ResNet-18",
                              resnet18(num_classes=10))):
        bound = lipschitz_bound(net.eval(), "naive", (3, 32, 32))
        rows.append(dict(size=size, widths=label, activation="relu",
                         estimator="naive (layer-wise through the skip connections), sound, "
                                   "random init", bound=bound.value,
                         seconds=round(bound.seconds, 2), sound=True,
                         ratio_to_lower=float("nan"),
                         spec="a sound bound for a CIFAR ResNet-20 in <= 2 min"))
    return rows


def machine() -> dict:
    return dict(platform=platform.platform(), processor=cpu_model(),
                cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                device="cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available()
                else "cpu")


def markdown(results: dict) -> str:
    lines = [f"Last run {results['date']} on {results['machine']['processor']} "
             f"({results['machine']['cores']} cores), commit `{results['commit']}`; "
             f"best of {results['repeat']}. Rows of parts it did not run keep their own commit.",
             "", "| net | estimator | bound | bound / lower (epochs: cost ratio) | seconds | "
             "vs SCS | measured at |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        seconds = "" if r["seconds"] != r["seconds"] else f"{r['seconds']:.3g}"
        bound = "" if r["bound"] != r["bound"] else f"{r['bound']:.5g}"
        ratio = "" if r["ratio_to_lower"] != r["ratio_to_lower"] else f"{r['ratio_to_lower']:.3f}"
        if "median_ratio" in r:
            ratio += f" (median {r['median_ratio']:.2f})"
        gap = f"{100 * r['gap_to_scs']:+.3f}%" if "gap_to_scs" in r else ""
        lines.append(f"| {r['widths']} {r['activation']} | {r['estimator']} | {bound} | "
                     f"{ratio} | {seconds} | {gap} | {r['commit']} ({r['date']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {list(SIZES)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per timing (best is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="print the table of --out")
    parser.add_argument("--parts", default="estimators,trainers,crm,certificate,audit,resnet",
                        help="comma list of estimators, trainers, crm, certificate, audit, resnet; "
                             "rows of parts not run are kept from --out")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}; choose from {list(SIZES)}")
    parts = set(args.parts.split(","))
    if parts - PARTS.keys():
        parser.error(f"unknown parts {sorted(parts - PARTS.keys())}; choose from {list(PARTS)}")
    ran = set().union(*(set(args.sizes.split(",")) if p == "estimators" else PARTS[p]
                        for p in parts))
    rows = []
    if "estimators" in parts:
        for name in args.sizes.split(","):
            print(f"benchmarking {name} ...", file=sys.stderr)
            rows += bench_size(name, args.repeat)
    if "trainers" in parts:
        print("benchmarking the ADMM Lipschitz step ...", file=sys.stderr)
        rows += bench_admm_step(args.repeat)
        print("benchmarking a CLIP epoch against a standard one ...", file=sys.stderr)
        rows += bench_clip_epoch(args.repeat)
    if "crm" in parts:
        print("benchmarking CRM's LipLT steps, epochs and certificate ...", file=sys.stderr)
        rows += bench_crm(args.repeat)
    if "certificate" in parts:
        print("benchmarking the sound LipLT certificate of 4C3F and 6C2F ...", file=sys.stderr)
        rows += bench_crm_certificate()
    if "audit" in parts:
        print("benchmarking the audit of a 4C3F net ...", file=sys.stderr)
        rows += bench_audit()
    if "resnet" in parts:
        print("benchmarking the sound bounds of ResNet-20 and ResNet-18 ...", file=sys.stderr)
        rows += bench_resnet_bounds()
    stamp = dict(commit=git_commit(), date=time.strftime("%Y-%m-%d"))
    rows = [{**row, **stamp} for row in rows]          # each row says when it was measured
    if parts != set(PARTS) and args.out.is_file():
        kept = [r for r in json.loads(args.out.read_text())["rows"] if r["size"] not in ran]
        rows = kept + rows
    results = dict(**stamp, repeat=args.repeat, machine=machine(), rows=rows)
    text = json.dumps(results, indent=2)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
