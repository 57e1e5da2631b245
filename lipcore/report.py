"""figures/REPORT.md: every paper-vs-reproduced number of every notebook, with its deviation.

Run ``python -m lipcore.report [FIGURES_DIR]`` (reproduce.sh does this after the notebooks).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import deps
from .ablations import not_run
from .io import write_text
from .ledger import build_ledger, committed_claims, ledger_markdown
from .summary import load, summary_lines

ABLATIONS = ("ablations", "ablations_crm")     # the notebooks whose outcomes decide the claims


def deviation_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``deviation`` (reproduced - paper) and ``relative`` (in % of |paper|) columns."""
    table = table.copy()
    paper = pd.to_numeric(table["paper"], errors="coerce")
    table["deviation"] = table["reproduced"] - paper
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 100.0 * table["deviation"] / paper.abs()
    table["relative"] = rel.where(paper.abs() > 0).map(
        lambda v: "" if pd.isna(v) else f"{v:+.1f}%")
    return table


def _format(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def code_changed_since(commit: str | None, notebook: str) -> list[str]:
    """The files a notebook's results depend on (the notebook and every lipcore file its imports
    reach, :func:`lipcore.deps.notebook_sources`) that differ between ``commit`` and HEAD (empty
    when they agree, or where git or the commit is not available). A Python file whose code
    (:func:`lipcore.deps.code_text`: without comments and docstrings) is the same is not counted."""
    if not commit:
        return []
    root = Path(__file__).resolve().parent.parent
    notebooks = list(root.glob(f"notebooks/**/{notebook}.ipynb"))
    paths = [str(p.relative_to(root)) for p in notebooks]
    paths += sorted({f for p in notebooks for f in deps.notebook_sources(p)})
    commit = commit.removesuffix("-dirty")

    def git(*args: str) -> str | None:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None

    try:
        names = git("diff", "--name-only", commit, "HEAD", "--", *paths)
    except OSError:
        return []
    changed = [line for line in (names or "").splitlines() if line.endswith((".py", ".ipynb"))]
    return [path for path in changed if not path.endswith(".py")
            or _code(git("show", f"{commit}:{path}")) != _code(git("show", f"HEAD:{path}"))]


def _code(source: str | None) -> str | None:
    """A Python file's code as the stale mark compares it (None where the file is absent)."""
    return None if source is None else deps.code_text(source)


def notebook_section(folder: Path) -> str:
    """The REPORT.md section of one notebook's output folder."""
    results = json.loads((folder / "results.json").read_text())
    profiles = results.get("profiles") or {}
    per_part = (" (" + ", ".join(f"{k}: `{v}`" for k, v in profiles.items()) + ")"
                if len(set(profiles.values())) > 1 else "")
    lines = [f"## {results['notebook']}", "",
             f"profile `{results['profile']}`{per_part} on {results['device']}, seed {results['seed']}, "
             f"commit `{results['git_commit']}`, {results['wall_seconds']:.0f} s; data: "
             + (", ".join(f"{k} ({v})" for k, v in results.get("data", {}).items()) or "none"),
             ""]
    changed = code_changed_since(results.get("git_commit"), results["notebook"])
    if changed:
        lines += [f"**Stale: computed at `{results['git_commit']}`; lipcore's code or the notebook "
                  f"has changed since** ({len(changed)} files: {', '.join(changed[:6])}"
                  f"{', ...' if len(changed) > 6 else ''}). Today's code may give other numbers; "
                  f"`./reproduce.sh --only {results['notebook']}` re-runs it and says which moved.",
                  ""]
    skipped = results.get("not_rederived") or []
    if skipped:
        lines += ["**Not a full run: it did not re-derive** " + "; ".join(
            f"{s['what']} ({s['why']})" for s in skipped) + ".", ""]
    if any(v == "synthetic" for v in results.get("data", {}).values()):
        lines += ["**Synthetic stand-in data: these numbers do not measure the paper's claims.**",
                  ""]
    claims = results.get("claims", {})
    if claims:
        lines.append("The paper's claims on this run's numbers:")
        lines += [f"* {'holds' if ok else '**does not hold**'}: {claim}"
                  for claim, ok in claims.items()]
        lines.append("")
    executed = folder / f"{folder.name}.ipynb"
    if executed.is_file():
        lines += [f"The executed notebook, with its prose and figures: [{executed.name}]"
                  f"({folder.name}/{executed.name}).", ""]
    comparison = folder / "comparison.csv"
    if comparison.is_file():
        table = pd.read_csv(comparison)
        if len(table):
            table = deviation_columns(table)
            if "profile" not in table:              # outputs written before per-row profiles
                table["profile"] = results["profile"]
            cols = ["artifact", "row", "metric", "paper", "reproduced", "deviation", "relative",
                    "unit", "profile", "note"]
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            for _, r in table[cols].iterrows():
                lines.append("| " + " | ".join(_format(r[c]) for c in cols) + " |")
            lines.append("")
    figures = sorted(folder.glob("*.png"))
    if figures:
        lines.append("Figures: " + ", ".join(f"[{p.stem}]({folder.name}/{p.name})"
                                             for p in figures))
        lines.append("")
    return "\n".join(lines)


def build_report(figures_dir: str | Path) -> Path:
    """Write ``figures_dir/REPORT.md`` from every ``*/results.json`` below it."""
    figures_dir = Path(figures_dir)
    folders = sorted(p.parent for p in figures_dir.glob("*/results.json"))
    header = ["# Reproduction report", "",
              "Generated by `lipcore.report` from the notebooks' `comparison.csv` and "
              "`results.json`. `paper` is the value printed in the paper; `reproduced` is what "
              "this repository computed; `deviation` = reproduced - paper.", ""]
    if not folders:
        header.append(f"No notebook outputs found in {figures_dir}.")
    reproduced = load(folders)
    if reproduced:
        header += ["## How close the last re-run of each notebook came", "",
                   "Each notebook's numbers against the result its last run replaced "
                   "(`lipcore.summary`; the commits say which code made each).", "",
                   *summary_lines(reproduced), ""]
    header += ledger_section(figures_dir)
    path = figures_dir / "REPORT.md"
    write_text(path, "\n".join(header + [notebook_section(f) for f in folders]) + "\n")
    return path


def ledger_section(figures_dir: Path) -> list[str]:
    """The claims ledger (lipcore.ledger): every committed claim, with the verdict of the
    ablation notebooks' outcomes where they have any, each row naming the command that
    re-runs its experiment."""
    committed = committed_claims(figures_dir)
    if committed.empty:
        return []
    found = [pd.read_csv(path).assign(experiment=f"./reproduce.sh --only {name}")
             for name in ABLATIONS for path in [figures_dir / name / "outcomes.csv"]
             if path.is_file()]
    outcomes = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    ledger = build_ledger(committed, outcomes, not_run(figures_dir))
    return ["## Claims ledger", "",
            "Every claim of the four papers that a notebook checks: the committed run's result, "
            "and for each claim an experiment re-ran (`notebooks/ablations.ipynb`, "
            "`notebooks/ablations_crm.ipynb`, `lipcore.ablations`) the verdict of "
            "`lipcore.ledger.verdict` over its seeds and "
            "variants (the evidence gives holds/seeds and the mean ± standard deviation of the "
            "number the claim turns on). `docs/claims.md` explains each "
            "verdict.", "", ledger_markdown(ledger), ""]


if __name__ == "__main__":
    print(build_report(sys.argv[1] if len(sys.argv) > 1 else "figures"))
