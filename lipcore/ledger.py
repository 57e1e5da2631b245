"""The claims ledger: every claim of the four papers that a notebook checks, whether it holds,
over how many seeds, and for each that does not, the verdict of the experiment that decided it.

An experiment (``lipcore.ablations``) evaluates the notebooks' own claim functions on nets
trained under *variants* of the committed setting, each over several seeds, and hands back one
row per (claim, variant, seed): the number the claim turns on and whether it holds. The verdict
follows from those rows by a fixed rule (:func:`verdict`), never by hand:

1. the claim holds on most seeds of the committed setting: *seed spread* (it holds; the
   committed run was an unlucky seed);
2. else it holds on most seeds of a variant that only gives more budget: *budget*;
3. else of a variant that sets something the paper leaves open: *setting*;
4. else of a variant that follows the original code where it differs from the text: *paper vs
   code*;
5. else, where the committed setting is the paper's stated one: *does not replicate* (with the
   spread over seeds); where it is a reduced budget: *open* (the paper's budget is not tried).

Claims about CIFAR-10, STL-10 or Tiny-ImageNet measured on synthetic stand-ins get *stand-in
data*; a failing claim no experiment has decided yet stays *open* and says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = ("committed", "budget", "setting", "paper vs code")
STAND_IN = "[synthetic stand-in]"


@dataclass(frozen=True)
class Variant:
    """One way of training the nets a claim compares. ``kind`` is one of KINDS: ``committed``
    (the setting of the committed result), ``budget`` (only more epochs or iterations),
    ``setting`` (a choice the paper leaves open), ``paper vs code`` (the original code's choice
    where the text says otherwise)."""

    name: str
    kind: str
    description: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"variant kind must be one of {KINDS}, got {self.kind!r}")


def outcome_rows(paper: str, evidence: dict[str, tuple[float, bool]], variant: Variant,
                 seed: int, quantities: dict[str, str], profile: str) -> list[dict]:
    """One row per claim of ``evidence`` ({claim: (number, holds)}) for one trained seed.
    ``quantities`` maps the end of a claim's text to what its number is; ``profile`` is the
    budget of the committed-setting variant ("paper" where it is the paper's own)."""
    def quantity(claim: str) -> str:
        return next((q for end, q in quantities.items() if claim.endswith(end)), "")
    return [dict(paper=paper, claim=claim, variant=variant.name, kind=variant.kind,
                 description=variant.description, seed=seed, value=float(value),
                 holds=bool(ok), quantity=quantity(claim), profile=profile)
            for claim, (value, ok) in evidence.items()]


def _spread(group: pd.DataFrame) -> str:
    values = group["value"].to_numpy(dtype=float)
    spread = f" ± {values.std(ddof=1):.3g}" if len(values) > 1 else ""
    return (f"{group['holds'].sum()}/{len(group)} seeds hold; {group['quantity'].iloc[0]}: "
            f"{values.mean():.4g}{spread}")


def verdict(outcomes: pd.DataFrame, committed_is_paper: bool) -> tuple[str, str]:
    """(verdict, evidence) for one claim from its rows of :func:`outcome_rows` (module
    docstring, rules 1-5). A variant "holds" when the claim holds on more than half its seeds."""
    def holds(group: pd.DataFrame) -> bool:
        return 2 * int(group["holds"].sum()) > len(group)
    by_variant = {name: g for name, g in outcomes.groupby("variant", sort=False)}
    committed = [g for g in by_variant.values() if g["kind"].iloc[0] == "committed"]
    if not committed:
        raise ValueError(f"no committed-setting rows for {outcomes['claim'].iloc[0]!r}")
    base = committed[0]
    if holds(base):
        return "seed spread", f"committed setting: {_spread(base)}"
    for kind in ("budget", "setting", "paper vs code"):
        for name, group in by_variant.items():
            if group["kind"].iloc[0] == kind and holds(group):
                others = "".join(f"; {other}: {_spread(g)}" for other, g in by_variant.items()
                                 if other != name and g is not base)
                return kind, (f"holds with {name} ({group['description'].iloc[0]}): "
                              f"{_spread(group)}; committed setting: {_spread(base)}{others}")
    tried = "; ".join(f"{name}: {_spread(g)}" for name, g in by_variant.items())
    if committed_is_paper:
        return "does not replicate", tried
    return "open", f"only reduced budgets tried: {tried}"


def committed_claims(figures_dir: Path) -> pd.DataFrame:
    """Every claim in the committed ``*/results.json``: paper (notebook), claim, holds,
    profile (of the part the claim is about, where the result records per-part profiles)."""
    rows = []
    for path in sorted(Path(figures_dir).glob("*/results.json")):
        results = json.loads(path.read_text())
        for claim, ok in results.get("claims", {}).items():
            rows.append(dict(paper=results["notebook"], claim=claim, committed=bool(ok),
                             profile=_claim_profile(claim, results)))
    return pd.DataFrame(rows, columns=["paper", "claim", "committed", "profile"])


# claim prefixes that name a figure rather than the part (data set) of a result they are about
PART_OF_FIGURE = {"clip": {"Fig. 2": "regression"},
                  "lipschitz_loss": {"Fig. 1": "MNIST", "Section 7": "cifar10"}}


def _claim_profile(claim: str, results: dict) -> str:
    """The profile of the part of a result a claim is about: the longest part name in the
    claim's prefix (before the first colon), or the part its figure belongs to."""
    parts = results.get("profiles") or {}
    prefix = claim.split(":")[0]
    named = [part for part in parts if part.lower() in prefix.lower()]
    named += [part for figure, part in PART_OF_FIGURE.get(results["notebook"], {}).items()
              if prefix.startswith(figure) and part in parts]
    if named:
        return parts[max(named, key=len)]
    return results.get("profile", "")


def build_ledger(committed: pd.DataFrame, outcomes: pd.DataFrame,
                 not_run: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """One row per committed claim: committed result, verdict and evidence, and the command
    that re-runs its experiment (the outcomes' ``experiment`` column). ``not_run`` maps
    (paper, claim prefix) to why a failing claim has no experiment yet."""
    rows = []
    for claim in committed.itertuples(index=False):
        mine = outcomes[(outcomes["paper"] == claim.paper) & (outcomes["claim"] == claim.claim)] \
            if len(outcomes) else outcomes
        seeds = ""
        if STAND_IN in claim.claim:
            decided, evidence = "stand-in data", ("the claim is about a data set that is not "
                                                  "on this machine; the run used a synthetic "
                                                  "stand-in")
        elif len(mine):
            decided, evidence = verdict(mine, committed_is_paper=mine["profile"].iloc[0] == "paper")
            base = mine[mine["kind"] == "committed"]
            seeds = f"{base['seed'].nunique()}"
            if claim.committed and decided == "seed spread":
                decided = "holds"
            elif claim.committed:
                decided = f"holds on the committed seed only; over seeds: {decided}"
        elif claim.committed:
            decided, evidence = "holds", "committed run (one seed)"
        else:
            decided, evidence = "open", next(
                (why for (paper, prefix), why in (not_run or {}).items()
                 if paper == claim.paper and claim.claim.startswith(prefix)),
                "no experiment yet")
        rows.append(dict(paper=claim.paper, claim=claim.claim,
                         committed="holds" if claim.committed else "does not hold",
                         profile=claim.profile, seeds=seeds, verdict=decided, evidence=evidence,
                         experiment=str(mine["experiment"].iloc[0]) if len(mine) else ""))
    return pd.DataFrame(rows)


def ledger_markdown(ledger: pd.DataFrame) -> str:
    """The ledger as a markdown table (REPORT.md and the book)."""
    cols = ["paper", "claim", "committed", "profile", "seeds", "verdict", "evidence", "experiment"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ledger[cols].itertuples(index=False):
        cells = [str(v).replace("|", "\\|") for v in r]
        cells[5] = f"**{cells[5]}**" if cells[5] not in ("holds",) else cells[5]
        cells[7] = f"`{cells[7]}`" if cells[7] else ""
        lines.append("| " + " | ".join(cells) + " |")
    counts = ledger["verdict"].value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + "."]
    return "\n".join(lines)


def seed_summary(table: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of ``metrics``, grouped by ``by``."""
    grouped = table.groupby(by, sort=False)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    out["seeds"] = grouped.size()
    return out.reset_index()[by + [c for m in metrics for c in (f"{m}_mean", f"{m}_std")]
                             + ["seeds"]].replace({np.nan: None})
