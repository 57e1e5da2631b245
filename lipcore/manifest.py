"""How each committed result was made, and what ``./reproduce.sh`` runs to make it again.

A notebook's record is read from what its run left in ``figures/<name>/``: ``results.json``
(profile of each part, seed, device, commit) and the executed notebook's papermill parameters
(any option the run was given). ``figures/MANIFEST.json`` lists every record in one place, with
the command that re-makes it; reproduce.sh rewrites it after each run.

:func:`plan` turns reproduce.sh's options into one run per notebook. With no ``--profile`` or
``--part-profile`` a notebook re-runs at its recorded setting. An explicit setting that would put
any part of a committed result at a lower profile (or at ``smoke``) is written beside it, to
``figures/variants/<profile>/``, never over it; one that only raises profiles replaces it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from .io import write_text
from .run import COMMITTED_OUT, PROFILES, REPO_ROOT

GIVEN_BY_REPRODUCE = {"profile", "part_profiles", "device", "seed", "out_dir", "data_dir"}
RANK = {profile: i for i, profile in enumerate(PROFILES)}      # smoke < cpu < paper


@dataclass
class Setting:
    """What a notebook run is asked for: the profile, per-part overrides, seed, device kind and
    any other notebook parameter (a paper-vs-code option)."""
    profile: str
    part_profiles: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    parameters: dict[str, Any] = field(default_factory=dict)

    def part_spec(self, notebook: str) -> str:
        """``$LIPCORE_PART_PROFILES`` for this notebook (``clip:MNIST=paper,...``)."""
        return ",".join(f"{notebook}:{part}={p}" for part, p in sorted(self.part_profiles.items()))

    def command(self, notebook: str) -> str:
        """The reproduce.sh command line that asks for exactly this setting."""
        cmd = f"./reproduce.sh --only {notebook} --profile {self.profile} --device {self.device}"
        if self.part_profiles:
            cmd += f" --part-profile {self.part_spec(notebook)}"
        if self.seed != 0 or self.parameters:
            cmd += f"  # and the notebook parameters {json.dumps(self.parameters | {'seed': self.seed})}"
        return cmd


def is_lesson(notebook: str, root: Path = REPO_ROOT) -> bool:
    return (root / "notebooks" / "lessons" / f"{notebook}.ipynb").is_file()


def recorded(folder: Path) -> tuple[Setting, dict[str, str]] | None:
    """The setting that made the result in ``folder`` and the profile of each of its parts, or
    None where there is no result (no ``results.json``)."""
    results_path = folder / "results.json"
    if not results_path.is_file():
        return None
    results = json.loads(results_path.read_text())
    executed = folder / f"{folder.name}.ipynb"
    given = (nbformat.read(executed, as_version=4).metadata.get("papermill", {})
             .get("parameters", {}) if executed.is_file() else {})
    parts = results.get("profiles") or {}
    base = (results.get("setting") or {}).get("profile") or given.get("profile")
    if base not in PROFILES:
        base = results["profile"] if results["profile"] in PROFILES else max(
            set(parts.values()), key=list(parts.values()).count)   # the parts' usual profile
    setting = Setting(
        profile=base, part_profiles={k: v for k, v in parts.items() if v != base},
        seed=results.get("seed", 0),
        device="cuda" if str(results.get("device", "")).startswith("cuda") else "cpu",
        parameters={k: v for k, v in given.items() if k not in GIVEN_BY_REPRODUCE})
    return setting, dict(parts)


def write_manifest(figures: Path) -> Path:
    """``figures/MANIFEST.json``: every result's setting, commit, device and re-run command."""
    entries = {}
    for results in sorted(figures.glob("*/results.json")):
        name = results.parent.name
        setting, parts = recorded(results.parent)
        run = json.loads(results.read_text())
        entries[name] = dict(asdict(setting), parts=parts or None, git_commit=run.get("git_commit"),
                             made_on=run.get("device"), command=setting.command(name))
    lessons = sorted(p.parent.name for p in figures.glob("*/*.ipynb")
                     if p.stem == p.parent.name and is_lesson(p.stem))
    manifest = dict(notebooks=entries, lessons=lessons,
                    note="Written by lipcore.manifest from each results.json and executed "
                         "notebook; ./reproduce.sh with no options re-runs every entry as recorded.")
    path = figures / "MANIFEST.json"
    write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


@dataclass
class Plan:
    """One notebook's run: where its outputs go and what it is given."""
    notebook: str
    out: Path
    setting: Setting | None            # None: a lesson (no parameters)
    note: str


def plan(notebook: str, figures: Path, *, profile: str | None = None,
         part_profiles: dict[str, str] | None = None, device: str | None = None,
         default_out: bool = True, cuda: bool = False) -> Plan:
    """The run reproduce.sh makes of ``notebook`` given its options (None: not given).
    ``figures`` is the output root; ``default_out`` says it is the committed ``figures/``
    (only there are lower-profile results sent to ``variants/``)."""
    if is_lesson(notebook):
        return Plan(notebook, figures, None, "a lesson, no parameters")
    found = recorded(figures / notebook)
    explicit = profile is not None or bool(part_profiles)
    if found is None:
        base = profile or ("paper" if cuda else "cpu")
        return Plan(notebook, figures, Setting(base, dict(part_profiles or {}), 0, device or "auto"),
                    "no recorded result: " + ("as asked" if explicit else f"the default, {base}"))
    old, parts = found
    if not explicit:
        chosen = Setting(old.profile, old.part_profiles, old.seed, device or old.device,
                         old.parameters)
        if chosen.device == "cuda" and not cuda:
            raise SystemExit(
                f"reproduce.sh: {notebook}'s committed result was made on a GPU and torch sees "
                f"none here; run it where one is (docs/gpu.md), leave it out (--only), or re-run "
                f"it on this CPU explicitly: --only {notebook} --device cpu")
        return Plan(notebook, figures, chosen, "the recorded setting")
    base = profile or old.profile
    new = Setting(base, dict(part_profiles or {}) if profile else {**old.part_profiles,
                                                                   **(part_profiles or {})},
                  old.seed, device or "auto", old.parameters)
    recorded_parts = parts or {"(all)": old.profile}
    lower = [p for p, was in recorded_parts.items()
             if RANK[new.part_profiles.get(p, base)] < RANK[was]]
    if base == "smoke":
        lower = lower or ["(all)"]
    same = (new.profile, new.part_profiles) == (old.profile, old.part_profiles)
    if lower and default_out:
        return Plan(notebook, figures / "variants" / base, new,
                    f"lower than the committed profile for {', '.join(lower)}: written beside it, "
                    f"to variants/{base}/")
    return Plan(notebook, figures, new, "the recorded setting" if same else
                "replaces the committed result (no part at a lower profile)")


def _parse_parts(spec: str | None) -> dict[str, dict[str, str]]:
    per_notebook: dict[str, dict[str, str]] = {}
    for entry in filter(None, (e.strip() for e in (spec or "").split(","))):
        name, rest = entry.split(":", 1)
        part, profile = rest.split("=", 1)
        per_notebook.setdefault(name, {})[part] = profile
    return per_notebook


def main(argv: list[str] | None = None) -> None:
    """``plan``: one tab-separated line per notebook (name, output root, papermill parameters as
    JSON, $LIPCORE_PART_PROFILES, note) for reproduce.sh; ``write``: figures/MANIFEST.json."""
    parser = argparse.ArgumentParser(prog="python -m lipcore.manifest")
    parser.add_argument("command", choices=("plan", "write"))
    parser.add_argument("--out", type=Path, default=COMMITTED_OUT)
    parser.add_argument("--default-out", action="store_true")
    parser.add_argument("--profile")
    parser.add_argument("--part-profile")
    parser.add_argument("--device")
    parser.add_argument("--cuda", action="store_true", help="torch sees a CUDA device")
    parser.add_argument("--only", default="", help="notebooks, comma-separated")
    args = parser.parse_args(argv)
    if args.command == "write":
        print(write_manifest(args.out))
        return
    parts = _parse_parts(args.part_profile)
    for name in filter(None, args.only.split(",")):
        p = plan(name, args.out, profile=args.profile, part_profiles=parts.get(name),
                 device=args.device, default_out=args.default_out, cuda=args.cuda)
        params = "" if p.setting is None else json.dumps(
            dict(p.setting.parameters, profile=p.setting.profile, device=p.setting.device,
                 seed=p.setting.seed))
        spec = "" if p.setting is None else p.setting.part_spec(name)
        print("\t".join([name, str(p.out), params or "-", spec or "-", p.note]))


if __name__ == "__main__":
    main(sys.argv[1:])
