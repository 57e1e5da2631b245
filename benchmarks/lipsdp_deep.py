"""LipSDP-neuron against its peers on deep and wide nets (issue 33), bound and seconds in one run.

    OMP_NUM_THREADS=1 python benchmarks/lipsdp_deep.py            # -> lipsdp_deep.json and .png
    python benchmarks/lipsdp_deep.py --depths 2 5 --widths 20     # a part of the grid
    python benchmarks/lipsdp_deep.py --markdown                   # the table of docs/benchmarks.md

Random ReLU nets ``fully_connected([w] + [w] * depth + [10], "relu", seed=0)`` for depth x width,
plus 784-w-w-10. Per net: lipcore's LipSDP-neuron (``lipsdp``, its time budget as the cap) and
its certified compositional start (``compositional_bound``), and eclipse-nn's ECLipsE-Fast and
ECLipsE (its default solver, SCS; run in a child process, stopped after ``--eclipse-cap``
seconds). Every lipcore bound is re-checked by the float64 certificate (``lmi_holds``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from eclipse_nn import ECLipsE, ECLipsE_Fast  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

from lipcore.estimators import compositional_bound, lipsdp  # noqa: E402
from lipcore.estimators.chain import lmi_holds  # noqa: E402
from lipcore.models import fully_connected  # noqa: E402
from lipcore.run import cpu_model, git_commit  # noqa: E402

HERE = Path(__file__).resolve().parent


def _eclipse(W: list[np.ndarray], queue) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    value, code = ECLipsE([torch.tensor(w) for w in W], [0.0] * (len(W) - 1), [1.0] * (len(W) - 1))
    queue.put((None if value is None else float(value), int(code), time.perf_counter() - start))


def eclipse_accurate(W: list[np.ndarray], cap: float) -> dict:
    """ECLipsE with its default solver in a child process, stopped after ``cap`` seconds."""
    queue = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=_eclipse, args=(W, queue))
    start = time.perf_counter()
    child.start()
    child.join(cap)
    if child.is_alive():
        child.terminate()
        child.join()
        return dict(bound=None, seconds=None, outcome=f"stopped after {cap:.0f} s")
    if queue.empty():
        return dict(bound=None, seconds=time.perf_counter() - start, outcome="crashed")
    value, code, seconds = queue.get()
    outcome = "solved" if code == 0 else f"failed (exit code {code}: numerical issue)"
    return dict(bound=value if code == 0 else None, seconds=seconds, outcome=outcome)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_net(widths: list[int], budget: float, eclipse_cap: float) -> dict:
    W = fully_connected(widths, "relu", seed=0).weights()
    start, start_s = timed(lambda: compositional_bound(W))
    r, lipsdp_s = timed(lambda: lipsdp(W, progress=False, time_budget=budget))
    fast, fast_s = timed(lambda: float(ECLipsE_Fast([torch.tensor(w) for w in W],
                                                    [0.0] * (len(W) - 1), [1.0] * (len(W) - 1))))
    row = dict(widths=f"{widths[0]}-{widths[1]}x{len(widths) - 2}-{widths[-1]}",
               input=widths[0], width=widths[1], depth=len(widths) - 2, neurons=sum(widths[1:-1]),
               lipsdp=dict(bound=r.bound, seconds=lipsdp_s, status=r.status, budget=budget,
                           certified=bool(lmi_holds(W, r.t, r.L2))),
               compositional=dict(bound=start.bound, seconds=start_s,
                                  certified=bool(lmi_holds(W, start.t, start.L2))),
               eclipse_fast=dict(bound=fast, seconds=fast_s),
               eclipse=eclipse_accurate(W, eclipse_cap))
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    grid = [r for r in rows if r["input"] == r["width"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = dict(lipsdp=("LipSDP-neuron (lipcore)", "-o"),
                  compositional=("compositional start (lipcore)", "--s"),
                  eclipse_fast=("ECLipsE-Fast (eclipse-nn)", ":^"))
    colours = dict(zip(sorted({r["width"] for r in grid}), ("C0", "C1", "C2", "C3")))
    for width, colour in colours.items():
        sub = sorted((r for r in grid if r["width"] == width), key=lambda r: r["depth"])
        depth = [r["depth"] for r in sub]
        for key, (label, style) in styles.items():
            axes[0].plot(depth, [r[key]["bound"] for r in sub], style, color=colour,
                         label=f"{label}, width {width}")
            axes[1].plot(depth, [r[key]["seconds"] for r in sub], style, color=colour)
    axes[0].set(xscale="log", yscale="log", xlabel="depth (hidden layers)",
                ylabel="certified l2 Lipschitz bound", title="bound (lower is tighter)")
    axes[1].set(xscale="log", yscale="log", xlabel="depth (hidden layers)", ylabel="seconds",
                title="time, one BLAS thread")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(results: dict) -> str:
    """The results as a table: bounds (certified ones checked by lmi_holds) and seconds."""
    def cell(entry: dict) -> str:
        if entry.get("bound") is None:
            return entry.get("outcome", "")
        return f"{entry['bound']:.4g} ({entry['seconds']:.2f} s)"

    lines = ["| net | LipSDP-neuron (lipcore) | status | compositional (lipcore) | "
             "ECLipsE-Fast | ECLipsE (SCS) |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        certified = r["lipsdp"]["certified"] and r["compositional"]["certified"]
        ok = "" if certified else " NOT CERTIFIED"
        lines.append(f"| {r['widths']} | {cell(r['lipsdp'])}{ok} | {r['lipsdp']['status']} | "
                     f"{cell(r['compositional'])} | {cell(r['eclipse_fast'])} | "
                     f"{cell(r['eclipse'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="*", default=[2, 5, 10, 20, 50, 100])
    parser.add_argument("--widths", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--wide", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--budget", type=float, default=20.0,
                        help="LipSDP's time budget per net (3x at depth 100 and width 1024)")
    parser.add_argument("--eclipse-cap", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=HERE / "lipsdp_deep.json")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    nets = [[w] + [w] * d + [10] for d in args.depths for w in args.widths]
    nets += [[784, w, w, 10] for w in args.wide]
    rows, start = [], time.perf_counter()
    for widths in nets:
        big = len(widths) - 2 >= 100 or widths[1] >= 1024
        rows.append(run_net(widths, args.budget * (3 if big else 1), args.eclipse_cap))
    meta = dict(commit=git_commit(), machine=cpu_model(),
                cores=mp.cpu_count(),
                blas_threads=[i.get("num_threads") for i in threadpool_info()],
                seconds=time.perf_counter() - start, net="fully_connected(widths, 'relu', seed=0)")
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
