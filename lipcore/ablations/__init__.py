"""Experiments that decide the papers' failing claims (issue 29): each module trains the nets a
claim compares under variants of the committed setting (more budget, an open setting, the
original code's choice), over several seeds, and returns the claim outcomes that
``lipcore.ledger`` turns into verdicts. Training is cached, so an interrupted run resumes.

* ``pauli``: Pauli et al.'s Table I claims (W-step length, ADMM iterations, L2 penalty) and
  what sets the nominal 2D net's bound.
* ``clip``: CLIP's Fig. 2 over seeds and lengths, the lambda schedule of Table 1, and what its
  noise and PGD columns measure.
* ``lipschitz_loss``: Usama & Chang's Fig. 1 at small fractions, over seeds and two readings
  of its training length.
* ``crm``: CRM against GloRo on MNIST by training length (``notebooks/ablations_crm.ipynb``,
  a notebook of its own so that its long training resumes in chunks without re-running the
  others; not imported here, so that its changes leave ``notebooks/ablations.ipynb`` current).

:func:`budgets` gives what one run of ``notebooks/ablations.ipynb`` trains at each profile.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..ledger import Variant
from . import clip, lipschitz_loss, pauli


@dataclass(frozen=True)
class Budgets:
    """What the ablations notebook trains: seeds, and the profile and variants of each part."""

    seeds: tuple[int, ...]
    pauli: str                                  # pauli_admm.settings profile
    pauli_variants: tuple[Variant, ...]
    nominal_steps: tuple[int, ...]              # 2D Nom-NN training lengths
    regression: str                             # clip.regression_settings profile
    regression_variants: tuple[Variant, ...]
    clip_table: str                             # clip.table_settings profile (MNIST)
    attacked: int                               # test images attacked for the PGD columns
    attack_iterations: int                      # of every attack on those columns
    usama: str                                  # lipschitz_loss.mnist_setting profile
    fractions: tuple[float, ...]

    def describe(self) -> str:
        return (f"Pauli et al. at the `{self.pauli}` settings ({len(self.pauli_variants)} "
                f"variants); CLIP regression at `{self.regression}`, Table 1 rows at "
                f"`{self.clip_table}`; Usama & Chang at `{self.usama}`, fractions "
                f"{list(self.fractions)}.")

    def record(self) -> dict:
        return dict(seeds=list(self.seeds), pauli=self.pauli,
                    pauli_variants=[v.name for v in self.pauli_variants],
                    nominal_steps=list(self.nominal_steps), regression=self.regression,
                    regression_variants=[v.name for v in self.regression_variants],
                    clip_table=self.clip_table, attacked=self.attacked,
                    attack_iterations=self.attack_iterations, usama=self.usama,
                    fractions=list(self.fractions))


def budgets(profile: str, first_seed: int = 0, n_seeds: int = 3) -> Budgets:
    """``smoke``: tiny nets, one seed, few variants, only to exercise the pipeline. ``paper``:
    Pauli et al. at the paper profile's settings with every variant, the CLIP regression at the
    committed lengths, CLIP's MNIST rows at the paper's 100 epochs, Usama & Chang's fractions
    1-5% at the paper profile, every part over ``n_seeds`` seeds. ``cpu`` (what one session on
    2 cores affords): the same settings, but Pauli et al.'s first two variants only (committed,
    W-step x4)."""
    if n_seeds < 1:
        raise ValueError(f"need at least one seed, got {n_seeds}")
    if profile == "smoke":
        return Budgets((first_seed,), "smoke", pauli.VARIANTS[:2], (100, 200), "smoke",
                       clip.REGRESSION_VARIANTS[:1], "smoke", 64, 5, "smoke", (0.5,))
    seeds = tuple(range(first_seed, first_seed + n_seeds))
    full = profile == "paper"
    return Budgets(seeds, "paper", pauli.VARIANTS if full else pauli.VARIANTS[:2],
                   (2500, 5000, 10_000, 20_000, 40_000), "cpu", clip.REGRESSION_VARIANTS,
                   "paper", 1000, 100, "paper", lipschitz_loss.FRACTIONS)


def not_run(figures_dir: Path) -> dict[tuple[str, str], str]:
    """{(paper, claim prefix): why no experiment decides it yet}, for the failing claims whose
    experiment is beyond this machine, with the cost estimated from the committed run's own
    training times."""
    reasons = {}
    clip_results = figures_dir / "clip" / "results.json"
    if clip_results.is_file():
        results = json.loads(clip_results.read_text())
        setting = results["settings"]["Fashion-MNIST"]
        rows = [r for r in results["table1"] if r["setting"] == "Fashion-MNIST"]
        scale = (100 / setting["epochs"]) * (54_000 / (setting["n_train"] or 54_000))
        hours = sum(r["train_seconds"] for r in rows) * scale / 3600
        reasons[("clip", "Table 1, Fashion-MNIST")] = (
            f"not run: the committed Fashion-MNIST rows are at the `cpu` budget "
            f"({setting['epochs']} epochs on {setting['n_train']} images); the paper's 100 "
            f"epochs on 54,000 images take about {hours:.0f} h for the 7 rows of one seed on 2 "
            "cores (the Madry CNN), at the committed per-epoch times; `./reproduce.sh --only "
            "clip --part-profile clip:MNIST=paper,clip:Fashion-MNIST=paper --chunk-seconds N` "
            "runs them in chunks (`--resume` continues)")
    return reasons
