"""Time every lesson: end to end (a fresh kernel, as JupyterLab's "Run All" or reproduce.sh runs
it: imports, training, attacks, figures) and its slowest redraw after a control moves.

    python benchmarks/lessons.py                  # all lessons -> benchmarks/lessons.json
    python benchmarks/lessons.py --only lesson3_coupled_lipsdp
    python benchmarks/lessons.py --markdown       # the README table from lessons.json

A redraw is timed twice: the first time a control takes a new value (a retrain where the lesson
trains a net, with the busy label showing) and the same value again (the lessons cache their
nets per session). Before it, the settings the lesson's static figure draws are drawn, as Run
All does, so a control value that the static figure already computed is not a first time.
Needs $LIPCORE_DATA for the MNIST lessons (4, 6, 7).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lipcore import lessons  # noqa: E402
from lipcore.run import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("lessons.json")
# lesson: (draw function, the settings its static figure draws first (so cached when the
# controls appear), the controls' first values, control changes a user makes)
REDRAWS = {
    "lesson1_certified_balls": (lessons.draw_certified_balls, [],
                                dict(method="l2", strength=0.003),
                                [dict(bound="naive"), dict(strength=0.01),
                                 dict(method="clip", strength=0.001)]),
    "lesson2_bound_ladder": (lessons.draw_bound_ladder, [], dict(),
                             [dict(depth=3), dict(width=64), dict(activation="relu")]),
    "lesson3_coupled_lipsdp": (lessons.draw_counterexample, [], dict(coupling=0.0),
                               [dict(coupling=0.9)]),
    "lesson4_weak_attack": (lessons.draw_weak_attack,
                            [dict(method=m) for m in lessons.METHODS_MNIST],
                            dict(method="standard", eps=1.0),
                            [dict(eps=0.5), dict(method="l2")]),
    "lesson5_crm_margins": (lessons.draw_margins,
                            [dict(strength=s) for s in lessons.CRM_STRENGTHS],
                            dict(strength=1.0), [dict(strength=3.0), dict(eps=0.1)]),
    "lesson6_noise_lipschitz_loss": (lessons.draw_noise, [dict(sigma=0.8, clamp=True)],
                                     dict(sigma=0.8),
                                     [dict(sigma=1.0), dict(image=7), dict(clamp=True),
                                      dict(beta=10.0), dict(sigma_train=0.5)]),
    "lesson7_bring_your_own_net": (lessons.draw_accuracy_against_eps, [],   # a sweep's radii
                                   dict(radii={"certified": torch.linspace(0.0, 1.0, 100),
                                               "strong": torch.linspace(0.0, 2.0, 100)},
                                        eps=0.5, max_eps=2.0), [dict(eps=1.0)]),
    "lesson8_what_lipsdp_is": (lessons.draw_lmi_feasibility,
                               [dict(t1=5.0, t2=5.0, L=3.2), dict(t1=5.0, t2=5.0, L=2.2),
                                dict(t1=4.0, t2=2.0, L=2.05), dict(t1=1.5, t2=6.0, L=1.0)],
                               dict(t1=5.0, t2=5.0, L=3.2),
                               [dict(L=2.2), dict(t1=4.0, t2=2.0), dict(t1=1.5), dict(L=2.05)]),
    "lesson9_steepest_ascent": (lessons.draw_attacks_against_eps,
                                [dict(eps=1.0, step=7.0), dict(eps=2.0, step=0.05)],
                                dict(eps=1.0, step=7.0),
                                [dict(eps=2.0), dict(step=0.25), dict(step=0.05)]),
    "lesson10_liplt_depth": (lessons.draw_loop_transformation, [], dict(alpha=0.0),
                             [dict(alpha=0.6), dict(alpha=1.0)]),
    "lesson11_clip_algorithm": (lessons.draw_clip, [], dict(lam=1.0, target=0.9),
                                [dict(lam=10.0), dict(target=0.85)]),
    "lesson12_lipschitz_training": (lessons.draw_constrained,
                                    [dict(L_des=L) for L in (30.0, 20.0, 10.0)],
                                    dict(L_des=20.0), [dict(L_des=5.0), dict(L_des=30.0)]),
}


def end_to_end(lesson: str) -> float:
    """Seconds to execute the lesson in a fresh kernel (jupyter nbconvert --execute)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                        "--execute", str(ROOT / "notebooks" / "lessons" / f"{lesson}.ipynb"),
                        "--output-dir", out], check=True, capture_output=True)
        return time.perf_counter() - start


def redraws(lesson: str) -> dict[str, float]:
    """The slowest first redraw after a control change, and the slowest repeated one."""
    draw, static, first, changes = REDRAWS[lesson]
    fig, ax = plt.subplots()
    for setting in static + [first]:
        draw(ax, **setting)
    slowest = dict(first=0.0, repeated=0.0)
    for change in changes:
        for kind in ("first", "repeated"):
            start = time.perf_counter()
            draw(ax, **{**first, **change})
            slowest[kind] = max(slowest[kind], time.perf_counter() - start)
    plt.close(fig)
    return slowest


def markdown(results: dict) -> str:
    lines = [f"Measured {results['date']} on {results['cores']} cores, commit "
             f"`{results['commit']}`.", "",
             "| lesson | run, fresh kernel | slowest redraw: new value | same value again |",
             "|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['lesson']} | {r['end_to_end_s']:.0f} s | {r['first_redraw_s']:.2f} s"
                     f" | {r['repeated_redraw_s']:.2f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(REDRAWS), help=f"comma list of {list(REDRAWS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--markdown", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    chosen = args.only.split(",")
    if set(chosen) - REDRAWS.keys():
        parser.error(f"unknown lessons {sorted(set(chosen) - REDRAWS.keys())}; choose from "
                     f"{list(REDRAWS)}")
    rows = []
    for lesson in chosen:
        print(f"timing {lesson} ...", file=sys.stderr)
        slowest = redraws(lesson)
        rows.append(dict(lesson=lesson, end_to_end_s=end_to_end(lesson),
                         first_redraw_s=slowest["first"], repeated_redraw_s=slowest["repeated"]))
    results = dict(date=str(date.today()), cores=os.cpu_count(), commit=git_commit(), rows=rows)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
