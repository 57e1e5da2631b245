"""What only a GPU can settle, in one short device call (issue 22; docs/gpu.md).

    python benchmarks/gpu_check.py --out DIR [--scale 1.0] [--repeats 5]

1. CRM training steps with LipLT pairwise constants against steps with the naive bound's, on
   4C3F, 6C2F and 8C2F at the paper's batch sizes (warm-up excluded, CUDA-synchronised, median of
   ``--repeats``); the spec is LipLT <= 2x naive.
2. One epoch of every ``paper``-profile training setting, with the data resident on the device,
   and from it each notebook's predicted ``paper`` training time on this device (epochs x nets,
   as the notebooks' settings list them; evaluation is not included and is said to be so).
3. (benchmarks/gpu_run.sh check) the minutes left go to CLIP's Fashion-MNIST ``paper`` rows
   through the chunked path, so that a second call can finish them.
4. ``gpu_results.json`` and ``gpu_results.md`` in ``--out``, naming the device, torch, commit.

Data are synthetic stand-ins of the real shapes (timing depends only on shapes), so nothing
needs carrying for 1-2. ``--scale`` shrinks every epoch (a fraction of the images) and is how the
tests run the whole script on a CPU in seconds; predictions scale back up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipcore.data import synthetic_dataset  # noqa: E402
from lipcore.estimators import liplt_ops as lo  # noqa: E402
from lipcore.models import crm_net, fully_connected, madry_cnn, pauli_mnist_net  # noqa: E402
from lipcore.resnets import residual_net  # noqa: E402
from lipcore.run import cpu_model, git_commit  # noqa: E402
from lipcore.trainers import TrainConfig, train  # noqa: E402
from lipcore.trainers.clip import CLIPConfig, LipschitzSet, clip_train  # noqa: E402
from lipcore.trainers.crm import CRMConfig, crm_term, crm_train  # noqa: E402

# (arch, input shape, batch size, power iterations, lam): the paper's / official code's settings
CRM_STEPS = [("4C3F", (1, 28, 28), 512, 10, 30.0), ("6C2F", (3, 32, 32), 512, 5, 15.0),
             ("8C2F", (3, 64, 64), 256, 5, 150.0)]


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], None], device: str, repeats: int, warmup: int = 2
                   ) -> float:
    """Median wall time of ``step`` after ``warmup`` untimed calls, synchronised on CUDA."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        step()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def crm_step_rows(device: str, repeats: int, batch_scale: float = 1.0) -> list[dict]:
    """One whole CRM training step (forward, CE + lam * CRM term, backward, Adam) with the
    pairwise constants from LipLT and from the naive bound, both by warm-started power iteration
    as in training."""
    rows = []
    for arch, shape, batch, iterations, lam in CRM_STEPS:
        batch = max(2, int(batch * batch_scale))
        model = crm_net(arch, 0).to(device)
        chain = lo.operator_chain(model, shape)
        classes = 200 if arch == "8C2F" else 10
        x = torch.rand(batch, *shape, device=device)
        y = torch.randint(0, classes, (batch,), device=device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
        powers = {"LipLT": lo.PowerIteration(chain),
                  "naive": lo.PowerIteration(chain, pairs=[(k, k) for k in range(chain.depth)])}
        pairwise = {
            "LipLT": lambda: lo.liplt_bounds(chain, powers["LipLT"].norms(chain, iterations),
                                             sound=False).pairwise,
            "naive": lambda: lo.naive_pairwise_estimate(chain, powers["naive"], iterations)}
        row = dict(arch=arch, batch=batch, power_iterations=iterations, device=device)
        for name, constants in pairwise.items():
            def step(constants=constants):
                logits = model(x)
                loss = F.cross_entropy(logits, y) + lam * crm_term(logits, y, constants(), 5.0,
                                                                   0.2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            row[f"{name} step (s)"] = median_seconds(step, device, repeats)
        row["LipLT / naive"] = row["LipLT step (s)"] / row["naive step (s)"]
        rows.append(row)
    return rows


@dataclass
class EpochSetting:
    """One training setting of the paper profile: what one epoch costs, and how many epochs of
    it the notebook runs (over all its nets)."""

    notebook: str
    name: str
    epochs_in_notebook: int        # epochs x nets at the paper profile
    run_epoch: Callable[[float], float]   # scale -> seconds for one epoch at that scale


def _images(name: str, n: int, device: str) -> TensorDataset:
    data = synthetic_dataset(name, max(n, 16), 16, seed=0).train
    return TensorDataset(*(t.to(device) for t in data.tensors))


def epoch_settings(device: str) -> list[EpochSetting]:
    """The paper profile's training settings (lipcore.experiments.*: settings(\"paper\"))."""
    def timed(fn: Callable[[], object]) -> float:       # one synchronised run (its warm-up is
        return median_seconds(fn, device, repeats=1, warmup=0)   # epoch_rows' smaller epoch)

    def standard(model_fn, dataset, n, cfg):
        return lambda scale: timed(lambda: train(model_fn().to(device), _images(
            dataset, int(n * scale), device), cfg, device))

    def clip(model_fn, dataset, n, regulariser):
        def run(scale):
            data = _images(dataset, int(n * scale), device)
            pairs = LipschitzSet.from_images(data.tensors[0][:256].cpu(), noise=0.1)
            cfg = CLIPConfig(epochs=1, lam0=0.1, regulariser=regulariser)
            return timed(lambda: clip_train(model_fn().to(device), data, cfg,
                                            pairs if regulariser == "clip" else None, device))
        return run

    def crm(arch, dataset, n, batch):
        cfg = CRMConfig(loss="crm", epochs=1, robust_start=0, decay_epoch=1, batch_size=batch)
        return lambda scale: timed(lambda: crm_train(crm_net(arch, 0), _images(
            dataset, int(n * scale), device), cfg, device))

    adam100 = TrainConfig(epochs=1, batch_size=100, lr=0.01, optimizer="adam")
    sgd128 = TrainConfig(epochs=1, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9,
                         augment="crop_flip")
    return [
        # Pauli et al.: Nom + L2 10 epochs each; Lip-NN <= 30 ADMM iterations of 5-epoch W-steps;
        # 3 enforced levels x 5 iterations x 5 epochs
        EpochSetting("pauli_admm", "MNIST 196-50-10 W-step epoch (Adam, batch 100)",
                     10 + 10 + 30 * 5 + 3 * 5 * 5,
                     standard(lambda: pauli_mnist_net("tanh", seed=0), "mnist", 60_000, adam100)),
        # CLIP: 7 rows x 100 epochs per data set, + 2 MNIST sensitivity nets
        EpochSetting("clip", "MNIST MLP standard epoch", 2 * 100,
                     clip(lambda: fully_connected([784, 64, 64, 10], "sigmoid", seed=0),
                          "mnist", 54_000, "none")),
        EpochSetting("clip", "MNIST MLP CLIP epoch", 7 * 100,
                     clip(lambda: fully_connected([784, 64, 64, 10], "sigmoid", seed=0),
                          "mnist", 54_000, "clip")),
        EpochSetting("clip", "Fashion-MNIST CNN standard epoch", 2 * 100,
                     clip(lambda: madry_cnn("relu", seed=0), "fashion_mnist", 54_000, "none")),
        EpochSetting("clip", "Fashion-MNIST CNN CLIP epoch", 5 * 100,
                     clip(lambda: madry_cnn("relu", seed=0), "fashion_mnist", 54_000, "clip")),
        # CRM: standard, GloRo, CRM per data set (400 epochs MNIST / CIFAR, 300 Tiny-ImageNet)
        EpochSetting("crm_liplt", "MNIST 4C3F CRM epoch", 3 * 400,
                     crm("4C3F", "mnist", 60_000, 512)),
        EpochSetting("crm_liplt", "CIFAR-10 6C2F CRM epoch", 3 * 400,
                     crm("6C2F", "cifar10", 50_000, 512)),
        # Usama & Chang: 57 nets x 300 epochs, most of them ResNet-20-sized on CIFAR-10
        EpochSetting("lipschitz_loss", "CIFAR-10 ResNet-20 epoch (SGD, batch 128)", 57 * 300,
                     standard(lambda: residual_net("resnet20", seed=0), "cifar10", 50_000,
                              sgd128)),
    ]


def epoch_rows(device: str, scale: float) -> list[dict]:
    rows = []
    for s in epoch_settings(device):
        s.run_epoch(min(scale, 0.02))                      # warm-up: kernels, allocator
        seconds = s.run_epoch(scale) / scale
        rows.append(dict(notebook=s.notebook, setting=s.name, epoch_seconds=seconds,
                         epochs_in_notebook=s.epochs_in_notebook,
                         predicted_hours=seconds * s.epochs_in_notebook / 3600))
    return rows


def predicted_per_notebook(rows: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["notebook"]] = totals.get(r["notebook"], 0.0) + r["predicted_hours"]
    return totals


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']}; torch {results['torch']}; commit "
             f"`{results['commit']}`; scale {results['scale']}.", "",
             "| net | batch | LipLT step (s) | naive step (s) | LipLT / naive |", "|---|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['batch']} | {r['LipLT step (s)']:.4g} | "
              f"{r['naive step (s)']:.4g} | {r['LipLT / naive']:.2f} |" for r in results["crm_steps"]]
    lines += ["", "| notebook | setting | one epoch (s) | epochs at `paper` | predicted (h) |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['notebook']} | {r['setting']} | {r['epoch_seconds']:.3g} | "
              f"{r['epochs_in_notebook']} | {r['predicted_hours']:.2f} |" for r in results["epochs"]]
    lines += ["", "Predicted `paper` training time per notebook (evaluation not included): " +
              ", ".join(f"{k} {v:.1f} h" for k, v in results["predicted_hours"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and table")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of each epoch's images (and of the CRM batches) to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed CRM steps (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    start = time.perf_counter()
    print(f"gpu_check: CRM steps on {args.device} ...", file=sys.stderr, flush=True)
    steps = crm_step_rows(args.device, args.repeats, batch_scale=args.scale)
    print("gpu_check: one epoch of every paper setting ...", file=sys.stderr, flush=True)
    epochs = epoch_rows(args.device, args.scale)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"cpu ({cpu_model()})"
    results = dict(device=name, torch=torch.__version__, commit=git_commit(),
                   date=time.strftime("%Y-%m-%d"), scale=args.scale, crm_steps=steps,
                   epochs=epochs, predicted_hours=predicted_per_notebook(epochs),
                   seconds=time.perf_counter() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "gpu_results.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
