"""CRM against GloRo on MNIST 4C3F by training length (issue 29; ``notebooks/ablations_crm``).

The paper's claim "CRM certifies more test points than GloRo" fails in the committed
``crm_liplt`` run by a fraction of a point, after 8 epochs on 30,000 images; the paper trains
400 on 54,000. Here both losses are trained again at the committed setting and, as *budget*
variants, on the paper's 54,000 images for each length of :func:`lengths` (the paper's schedule
shortened in proportion: :func:`lipcore.experiments.crm_liplt.shortened`). Each net is scored
by its clean accuracy and its certified accuracy at eps 1.58 under the sound LipLT bound (the
certificate of ``crm_liplt``), so the table shows how the gap moves with training. The claim's
outcomes are those of the committed setting and of the longest length, the most budget tried:
a claim that holds at a shorter length but fails at a longer one has not been shown to hold
with more budget.

Standard training is not retrained: unregularised, it certifies 0.00% at eps 1.58 in the
committed run, so the claim turns on the gap to GloRo. One epoch on 54,000 images takes 30-40
s per net on 2 cores; every net is cached, so a chunked run resumes, and a GPU lease can train
the lengths of :data:`EPOCHS` (``python -m lipcore.ablations.crm train``,
``benchmarks/gpu_run.sh crm-epochs``; not yet timed on a GPU).
"""
from __future__ import annotations

import argparse

import pandas as pd

from ..certify import certified_accuracy, certified_radii
from ..experiments import crm_liplt as cx
from ..ledger import Variant, outcome_rows
from ..trainers.standard import evaluate

PAPER = "crm_liplt"
CLAIM = "MNIST: CRM certifies more test points than GloRo and standard training"
QUANTITY = "CRM - GloRo certified accuracy at eps 1.58 (points)"
EPOCHS = (10, 25, 50)           # every length the study is meant to reach (paper profile)
METHODS = ("GloRo", "CRM")


def lengths(profile: str) -> tuple[int, ...]:
    """Training lengths (epochs on all training images) of the budget variants: ``paper``
    all of :data:`EPOCHS`; ``cpu`` the first two (about 70 min of training on 2 cores);
    ``smoke`` one short run."""
    return {"smoke": (2,), "cpu": EPOCHS[:2], "paper": EPOCHS}[profile]


def setting(epochs: int, profile: str = "paper") -> cx.CRMSetting:
    """The paper's MNIST setting (all 54,000 training images) shortened to ``epochs``; at
    ``smoke``, the smoke setting's few images."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    base = cx.crm_settings("smoke" if profile == "smoke" else "paper")["MNIST"]
    return cx.shortened(base, epochs)


def committed_profile(profile: str) -> str:
    """The profile of ``crm_liplt``'s committed MNIST part that the study at ``profile`` starts
    from: ``smoke`` for smoke, else ``cpu``."""
    return "smoke" if profile == "smoke" else "cpu"


def variants(profile: str) -> list[tuple[Variant, cx.CRMSetting]]:
    """(variant, setting) pairs: the committed ``crm_liplt`` MNIST setting (``cpu`` profile:
    8 epochs on 30,000 images; ``smoke`` at smoke), then one budget variant per length."""
    if profile not in ("smoke", "cpu", "paper"):
        raise ValueError(f"profile must be smoke, cpu or paper, got {profile!r}")
    committed = cx.crm_settings(committed_profile(profile))["MNIST"]
    n = committed.n_train
    out = [(Variant("committed", "committed",
                    f"the committed crm_liplt run's MNIST setting (epochs: "
                    f"{committed.train.epochs}, training images: {n:,})"), committed)]
    for e in lengths(profile):
        s = setting(e, profile)
        images = f"{s.n_train:,}" if s.n_train else "all 54,000"
        out.append((Variant(f"{e} epochs", "budget",
                            f"epochs: {e}, training images: {images}; the paper's schedule "
                            "shortened in proportion"), s))
    return out


def train(epochs: tuple[int, ...], methods: tuple[str, ...], seed: int = 0, device: str = "cpu",
          data_dir: str | None = None) -> None:
    """Train (or find cached) every (epochs, method) net of the paper-setting lengths,
    shortest first."""
    split = cx.load_split(setting(epochs[0]), data_dir)
    for e in sorted(epochs):
        for method in methods:
            cx.fit(setting(e), split, method, seed, device)


def net_row(s: cx.CRMSetting, split: cx.Split, method: str, seed: int, device: str) -> dict:
    """Train (or load) one net and score it: clean and soundly certified accuracy (%)."""
    net = cx.fit(s, split, method, seed, device)
    radii = certified_radii(net.model, split.test, cx.sound_liplt(s, net).pairwise, device)
    return dict(method=method, epochs=s.train.epochs, n_train=s.n_train or len(split.train),
                seed=seed, clean=evaluate(net.model, split.test, device)[1],
                certified=certified_accuracy(radii, s.eps), train_seconds=net.seconds)


def run(seeds: tuple[int, ...], profile: str, data_dir: str | None = None, device: str = "cpu",
        log=print) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every variant over ``seeds``: (nets: one row per trained net, outcomes: one row per
    seed of the committed setting and of the longest length for the ledger, the data sources
    read)."""
    nets, outcomes, sources = [], [], []
    ladder = variants(profile)
    decisive = (ladder[0][0].name, ladder[-1][0].name)
    for variant, s in ladder:
        split = cx.load_split(s, data_dir)
        sources.append(split.source)
        for seed in seeds:
            log(f"crm_liplt, {variant.name}, seed {seed} ...")
            rows = {m: net_row(s, split, m, seed, device) for m in METHODS}
            nets += [dict(r, variant=variant.name) for r in rows.values()]
            gap = rows["CRM"]["certified"] - rows["GloRo"]["certified"]
            if variant.name in decisive:
                outcomes += outcome_rows(PAPER, {CLAIM: (gap, gap > 0)}, variant, seed,
                                         {CLAIM: QUANTITY}, committed_profile(profile))
    return pd.DataFrame(nets), pd.DataFrame(outcomes), sources


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lipcore.ablations.crm", description=(
        "Train the CRM-vs-GloRo nets into the model cache (LIPCORE_CACHE), shortest first."))
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--epochs", default=",".join(map(str, EPOCHS)),
                        help="comma-separated training lengths (default: %(default)s)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="folder of mnist.npz (else LIPCORE_DATA)")
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(","))
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    train(tuple(int(e) for e in args.epochs.split(",")), methods, args.seed, args.device,
          args.data)


if __name__ == "__main__":
    main()
