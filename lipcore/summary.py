"""How close a re-run came: every reported number of a notebook against the result it replaced.

reproduce.sh keeps a copy of each notebook's ``comparison.csv`` and ``results.json`` before the
run (``outputs/previous/<name>/``); after it, :func:`compare` sorts every number (a row of
``comparison.csv``, keyed by artifact, row and metric) into

* **identical**: the same float, bit for bit (CSV round-trips a float exactly);
* **within tolerance**: inside the band of its kind (:data:`BANDS`);
* **different**: outside it, or a row only one of the two runs has;
* **not re-derived**: a row the new run left out and said so: an entry of its
  ``not_rederived`` (``NotebookRun.skip``) that reads ``"<artifact>: <metric>"`` covers that
  column (the quick check's skipped attacks), one that reads ``"<artifact>"`` all of that
  table or figure, one that reads ``"<part> rows"`` every row named
  ``"<part> ..."`` (a part whose nets are not kept, ``NotebookRun.fit_parts``). A row that no
  entry covers stays **different**, so nothing vanishes unnoticed.

Which band applies is stated for every number: ``timing`` for wall-clock seconds (they depend on
the machine and its load), ``gpu`` where either run used CUDA (cuDNN kernels are not
bit-deterministic), else ``deterministic`` (a CPU run of the same code and seed repeats itself;
only the summation order of a multi-threaded BLAS may move the last bits). The result goes to
``<name>/reproduction.json``, which REPORT.md shows; ``python -m lipcore.summary`` prints it.

The quick check (``./reproduce.sh --quick``) compares against the committed ``figures/<name>``,
counts where its nets came from (``nets.jsonl``, :mod:`lipcore.cache`): a net trained by older
code than the result's can move a number for that reason alone. A notebook it cannot re-derive
gets a ``reproduction.json`` that says why (:func:`skipped`); a table or column a run chose not
to re-derive (``NotebookRun.skip``, e.g. the quick check's skipped strong attacks) is named.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .io import write_text
from .manifest import is_lesson

KEY = ["artifact", "row", "metric"]
# kind: (relative band, absolute band, what it means)
BANDS: dict[str, tuple[float, float, str]] = {
    "deterministic": (1e-9, 1e-12, "bit-identical expected; 1e-9 relative for BLAS summation order"),
    "gpu": (1e-2, 0.5, "1% relative or 0.5 absolute (percentage points): GPU kernels are not "
                       "bit-deterministic"),
    "timing": (1.0, 0.0, "wall-clock seconds: within a factor of 2"),
}


def kind_of(row: pd.Series, on_gpu: bool) -> str:
    """The band a reported number is held to (see the module docstring)."""
    unit = "" if pd.isna(row.get("unit")) else str(row.get("unit"))
    metric = str(row["metric"]).lower()
    if unit in ("s", "ms", "min") or "seconds" in metric or "time" in metric:
        return "timing"
    return "gpu" if on_gpu else "deterministic"


def within(old: float, new: float, kind: str) -> bool:
    rel, abs_, _ = BANDS[kind]
    if kind == "timing":
        return old > 0 and new > 0 and max(old, new) / min(old, new) <= 1 + rel
    return abs(new - old) <= max(abs_, rel * abs(old))


def _same(old: float, new: float) -> bool:
    return old == new or (math.isnan(old) and math.isnan(new))


def _table(folder: Path) -> pd.DataFrame | None:
    path = folder / "comparison.csv"
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def _results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def net_sources(folder: Path) -> dict[str, int]:
    """How many nets of the run in ``folder`` came from each place (``nets.jsonl``)."""
    path = folder / "nets.jsonl"
    if not path.is_file():
        return {}
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        kind = entry.get("kind", entry["source"])     # logs before kinds: "trained" and the like
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def not_trained_reason(executed: Path) -> str:
    """The message of the :class:`lipcore.cache.NotTrained` error that stopped a notebook."""
    import nbformat
    for cell in nbformat.read(executed, as_version=4).cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") == "NotTrained":
                return out.get("evalue", "")
    return "a net it needs is neither cached nor kept in figures/trained/"


def skipped(folder: Path, reason: str) -> dict[str, Any]:
    """The reproduction.json of a notebook the run could not re-derive, saying why."""
    summary = dict(notebook=folder.name, identical=0, within_tolerance=0, different=0,
                   differences=[], bands={}, note=f"not re-derived: {reason}")
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "reproduction.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _covered(row: pd.Series, not_rederived: list[dict[str, str]]) -> bool:
    """Whether an entry of a run's ``not_rederived`` names ``row`` (module docstring)."""
    for entry in not_rederived:
        what = entry["what"]
        if what.endswith(" rows") and str(row["row"]).startswith(what[:-len("rows")]):
            return True
        if what in (f"{row['artifact']}: {row['metric']}", str(row["artifact"])):
            return True
    return False


def environment_changes(old_run: dict[str, Any], new_run: dict[str, Any]) -> list[str]:
    """What differs between the machines and library versions of two runs (``a -> b``), so that
    a number that moved in its last digits can be read against a change of CPU or library;
    libraries are compared only where both runs recorded them."""
    changes = []
    if old_run.get("device") and old_run.get("device") != new_run.get("device"):
        changes.append(f"device: {old_run['device']} -> {new_run.get('device')}")
    old_libs, new_libs = old_run.get("libraries") or {}, new_run.get("libraries") or {}
    changes += [f"{lib}: {old_libs[lib]} -> {new_libs[lib]}" for lib in sorted(old_libs)
                if lib in new_libs and old_libs[lib] != new_libs[lib]]
    return changes


def compare(previous: Path, current: Path) -> dict[str, Any]:
    """Sort every number of ``current``'s comparison.csv against ``previous``'s; writes and
    returns ``current/reproduction.json``."""
    old_run, new_run = _results(previous), _results(current)
    summary: dict[str, Any] = dict(
        notebook=current.name, previous_commit=old_run.get("git_commit"),
        previous_profile=old_run.get("profile"), commit=new_run.get("git_commit"),
        profile=new_run.get("profile"), identical=0, within_tolerance=0, different=0,
        not_rederived_numbers=0, differences=[], bands={}, nets=net_sources(current),
        not_rederived=new_run.get("not_rederived", []),
        environment_changes=environment_changes(old_run, new_run))
    old, new = _table(previous), _table(current)
    if new is None:
        summary["note"] = "no comparison.csv: this run reports no numbers"
    elif old is None:
        summary["note"] = "no earlier result to compare with"
        summary["new"] = len(new)
    else:
        on_gpu = any(str(r.get("device", "")).startswith("cuda") for r in (old_run, new_run))
        merged = old.merge(new, on=KEY, how="outer", suffixes=("_old", "_new"), indicator=True)
        for _, r in merged.iterrows():
            unit = r["unit_new"] if pd.notna(r["unit_new"]) else r["unit_old"]
            kind = kind_of(pd.Series(dict(metric=r["metric"], unit=unit)), on_gpu)
            summary["bands"][kind] = BANDS[kind][2]
            a, b = r.get("reproduced_old"), r.get("reproduced_new")
            if r["_merge"] == "left_only" and _covered(r, summary["not_rederived"]):
                verdict = "not_rederived_numbers"     # left out by a run that said so
            elif r["_merge"] != "both":
                verdict = "different"
            elif _same(float(a), float(b)):
                verdict = "identical"
            else:
                verdict = "within_tolerance" if within(float(a), float(b), kind) else "different"
            summary[verdict] += 1
            if verdict == "different":
                summary["differences"].append(dict(
                    artifact=r["artifact"], row=r["row"], metric=r["metric"], kind=kind,
                    old=None if pd.isna(a) else float(a), new=None if pd.isna(b) else float(b)))
    write_text(current / "reproduction.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _count(s: dict[str, Any]) -> str:
    if "note" in s and not s.get("new") and s["identical"] + s["different"] == 0:
        return s["note"]
    if s.get("new"):
        return f"{s['new']} numbers, {s['note']}"
    nets = s.get("nets") or {}
    return (f"{s['identical']} identical, {s['within_tolerance']} within tolerance, "
            f"{s['different']} different"
            + (f", {s['not_rederived_numbers']} not re-derived" if s.get("not_rederived_numbers")
               else "") + (" (nets: " + ", ".join(
                f"{n} {where}" for where, n in sorted(nets.items())) + ")" if nets else "")
            + "".join(f"; not re-derived: {d['what']} ({d['why']})"
                      for d in s.get("not_rederived", []))
            + "".join(f"; environment differs: {c}" for c in s.get("environment_changes", [])))


def _number(v: float | None) -> str:
    return "(none)" if v is None else f"{v:.6g}"


def summary_lines(summaries: list[dict[str, Any]], lessons: list[str] = ()) -> list[str]:
    """The summary as markdown lines: per notebook and in total, then every differing number."""
    lines = ["| notebook | compared with | result |", "|---|---|---|"]
    for s in summaries:
        was = (f"`{s['previous_commit']}` ({s['previous_profile']})" if s.get("previous_commit")
               else "nothing")
        lines.append(f"| {s['notebook']} | {was} | {_count(s)} |")
    lines += [f"| {name} | - | a lesson: executed, reports no numbers |" for name in lessons]
    total = {k: sum(s.get(k, 0) for s in summaries)
             for k in ("identical", "within_tolerance", "different", "not_rederived_numbers")}
    lines += ["", f"**In total: {total['identical']} identical, {total['within_tolerance']} within "
                  f"tolerance, {total['different']} different"
                  + (f", {total['not_rederived_numbers']} not re-derived" if
                     total["not_rederived_numbers"] else "") + ".**"]
    bands = {k: v for s in summaries for k, v in s.get("bands", {}).items()}
    if bands:
        lines += ["", "Tolerances: " + "; ".join(f"{k}: {v}" for k, v in sorted(bands.items()))
                  + "."]
    for s in summaries:
        if s["differences"]:
            lines += ["", f"{s['notebook']}, numbers that differ:", "",
                      "| artifact | row | metric | band | before | now |", "|---|---|---|---|---|---|"]
            lines += [f"| {d['artifact']} | {d['row']} | {d['metric']} | {d['kind']} | "
                      f"{_number(d['old'])} | {_number(d['new'])} |" for d in s["differences"]]
    return lines


def load(folders: list[Path]) -> list[dict[str, Any]]:
    """The reproduction.json of each folder that has one."""
    return [json.loads((f / "reproduction.json").read_text()) for f in folders
            if (f / "reproduction.json").is_file()]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "skip":     # FOLDER (EXECUTED_NOTEBOOK | REASON)
        why = Path(sys.argv[3])
        skipped(Path(sys.argv[2]), not_trained_reason(why) if why.suffix == ".ipynb"
                and why.is_file() else sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "print":
        folders = [Path(p) for p in sys.argv[2:]]
        done = load(folders)
        seen = {s["notebook"] for s in done}
        lessons = [f.name for f in folders if is_lesson(f.name) and f.name not in seen]
        print("\n".join(["Reproduction summary (how close this run came to the results it "
                         "replaced):", ""] + summary_lines(done, lessons)))
    else:
        sys.exit("usage: python -m lipcore.summary compare PREVIOUS CURRENT | "
                 "skip FOLDER (NOTEBOOK | REASON) | print FOLDER...")
