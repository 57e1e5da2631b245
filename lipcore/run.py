"""The run context every notebook opens: validated parameters and staged, atomic outputs.

``start_run`` checks the papermill parameters (profile, device, seed, data_dir, out_dir) and
returns a :class:`NotebookRun`. Figures, tables and the comparison go to a hidden staging
folder ``out_dir/.<notebook>.partial``; ``finish()`` writes ``comparison.csv`` and
``results.json`` and only then swaps the staging folder into ``out_dir/<notebook>``. A run that
fails half way therefore leaves the previous complete output untouched.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
import torch

from .deps import installed_versions
from .io import atomic_path, write_text

PROFILES = ("smoke", "cpu", "paper")
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCES = ("real", "generated", "synthetic")
COMPARISON_COLUMNS = ["artifact", "row", "metric", "paper", "reproduced", "unit", "profile", "note"]
REPO_ROOT = Path(__file__).resolve().parent.parent
SCRATCH_OUT = REPO_ROOT / "outputs" / "scratch"     # interactive runs (git ignores outputs/)
COMMITTED_OUT = REPO_ROOT / "figures"                # what ./reproduce.sh writes and git keeps


def quick_check() -> bool:
    """True in the quick check (``./reproduce.sh --quick`` sets ``LIPCORE_NO_TRAIN=1``): nothing
    is trained (:func:`lipcore.cache.cached`) and a notebook may skip a costly evaluation."""
    return os.environ.get("LIPCORE_NO_TRAIN") == "1"


def resolve_profile(profile: str | None) -> str:
    """``profile``, else ``$LIPCORE_PROFILE``, else ``paper`` with CUDA and ``cpu`` without."""
    chosen = profile or os.environ.get("LIPCORE_PROFILE") or (
        "paper" if torch.cuda.is_available() else "cpu")
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; choose one of {PROFILES} "
                         f"(smoke: seconds, for tests; cpu: real data, reduced budgets; "
                         f"paper: the papers' settings, GPU)")
    return chosen


def resolve_device(device: str | None) -> str:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an error."""
    chosen = device or os.environ.get("LIPCORE_DEVICE") or "auto"
    if chosen not in DEVICES:
        raise ValueError(f"unknown device {chosen!r}; choose one of {DEVICES}")
    if chosen == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if chosen == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; "
                         "use device='auto' or 'cpu'")
    return chosen


def parse_part_profiles(spec: str | dict[str, str] | None, notebook: str) -> dict[str, str]:
    """Per-part profile overrides of one notebook, e.g. CLIP's MNIST rows at ``paper`` while the
    rest runs at ``cpu``. ``spec`` is a dict ``{"MNIST": "paper"}``, a string
    ``"MNIST=paper,Fashion-MNIST=cpu"``, or ``None``: then ``$LIPCORE_PART_PROFILES``, whose
    entries name their notebook (``"clip:MNIST=paper,pauli_admm:2D=paper"``; reproduce.sh's
    ``--part-profile`` sets it) and only this notebook's are taken."""
    if spec is None:
        spec, prefix = os.environ.get("LIPCORE_PART_PROFILES", ""), f"{notebook}:"
        entries = [e[len(prefix):] for e in spec.split(",") if e.strip().startswith(prefix)]
        spec = ",".join(e.strip() for e in entries)
    if isinstance(spec, str):
        pairs = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            if "=" not in entry:
                raise ValueError(f"part profile {entry!r} must read PART=PROFILE, e.g. MNIST=paper")
            part, profile = (t.strip() for t in entry.split("=", 1))
            pairs[part] = profile
        spec = pairs
    if not isinstance(spec, dict):
        raise ValueError(f"part_profiles must be a dict, a 'PART=PROFILE,...' string or None, "
                         f"got {type(spec).__name__}")
    for part, profile in spec.items():
        if profile not in PROFILES:
            raise ValueError(f"part profile {part}={profile!r}: choose one of {PROFILES}")
    return dict(spec)


def git_commit(root: Path = REPO_ROOT) -> str:
    """HEAD of the repository, with '-dirty' if tracked files outside figures/ have uncommitted
    changes (a previous notebook's fresh outputs do not make the code dirty). A copy without
    git (a GPU machine's) takes it from ``$LIPCORE_GIT_COMMIT``, set by whoever sent the copy."""
    if os.environ.get("LIPCORE_GIT_COMMIT"):
        return os.environ["LIPCORE_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)figures"],      # outputs are not code
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what :mod:`platform` knows): float
    results such as solver bounds can move in the last digits from one CPU to another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str) -> str:
    """What a run computed on: the GPU, or the CPU model with its cores and torch's thread
    count (both change float results, and so trained nets: docs/crm_liplt.md)."""
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def machine() -> str:
    """The CPU (model, cores, torch's threads) and the GPU if one is visible."""
    gpu = f", {device_description('cuda')}" if torch.cuda.is_available() else ""
    return device_description("cpu") + gpu


class NotebookRun:
    """Outputs of one notebook execution; see the module docstring."""

    def __init__(self, notebook: str, profile: str, device: str, seed: int, data_dir,
                 out_dir: Path, part_profiles: dict[str, str] | None = None):
        self.notebook, self.profile, self.device, self.seed = notebook, profile, device, seed
        self.part_profiles = dict(part_profiles or {})
        self.used_profiles: dict[str, str] = {}
        self.data_dir = data_dir
        self.final_dir = out_dir / notebook
        self.dir = out_dir / f".{notebook}.partial"
        shutil.rmtree(self.dir, ignore_errors=True)        # leftovers of a failed run
        self.dir.mkdir(parents=True)
        self.data: dict[str, str] = {}
        self.comparison: list[dict[str, Any]] = []
        self.not_rederived: list[dict[str, str]] = []
        self.started = time.perf_counter()
        torch.manual_seed(seed)

    def __repr__(self) -> str:
        return (f"NotebookRun({self.notebook!r}, profile={self.profile!r}, "
                f"device={self.device!r}, seed={self.seed}, out={str(self.final_dir)!r})")

    def profiles(self, parts: list[str]) -> dict[str, str]:
        """The profile of each of the notebook's ``parts`` (data sets or tables): the run's
        profile unless ``part_profiles`` overrides it. An override naming no part is an error,
        so a typo never silently runs the wrong budget. Recorded in results.json."""
        unknown = set(self.part_profiles) - set(parts) - set(self.used_profiles)
        if unknown:
            raise ValueError(f"part_profiles names {sorted(unknown)}, which {self.notebook} does "
                             f"not have; its parts are {parts}")
        chosen = {part: self.part_profiles.get(part, self.profile) for part in parts}
        self.used_profiles.update(chosen)
        return chosen

    @property
    def quick(self) -> bool:
        """True in the quick check (:func:`quick_check`): it trains nothing and may skip a costly
        evaluation, naming it with :meth:`skip`. Such a run never writes to ``figures/``."""
        return quick_check()

    def skip(self, what: str, why: str) -> None:
        """Record that ``what`` (a table or column) was not re-derived by this run, and why;
        results.json lists it and the reproduction summary names it."""
        self.not_rederived.append(dict(what=what, why=why))

    def fit_parts(self, parts: Iterable[str], fit: Callable[[str], Any],
                  required: Iterable[str] = ()) -> dict[str, Any]:
        """``{part: fit(part)}`` for each of ``parts`` (e.g. a data set's nets). In the quick check
        a part whose nets are neither cached nor kept in figures/trained/ is left out and named
        (:meth:`skip`, with the net it lacked) instead of stopping the notebook, so the parts that
        can be re-derived are; if no part can be, or a ``required`` one (the notebook's main
        table) cannot, :class:`~lipcore.cache.NotTrained` is raised."""
        from .cache import NotTrained            # lipcore.cache imports this module
        fitted, lacking = {}, []
        for part in parts:
            try:
                fitted[part] = fit(part)
            except NotTrained as error:
                if not self.quick or part in required:
                    raise
                lacking.append(f"{part}: {error}")
                self.skip(f"{part} rows", str(error))     # names the net that is not kept
        if lacking and not fitted:
            raise NotTrained("no part of this notebook can be re-derived without training: "
                             + "; ".join(lacking))
        return fitted

    def budget(self, **per_profile: Any) -> Any:
        """The value for this run's profile: ``run.budget(smoke=10, cpu=1_000, paper=60_000)``."""
        missing = set(PROFILES) - set(per_profile)
        if missing:
            raise ValueError(f"budget needs a value for every profile; missing {sorted(missing)}")
        return per_profile[self.profile]

    def uses_data(self, name: str, source: str) -> None:
        """Record where dataset ``name`` came from (goes into results.json): ``real`` (the real
        dataset), ``generated`` (data the paper itself generates, such as its 2D or 1D toy
        problems, drawn as it describes) or ``synthetic`` (a stand-in for a real dataset that is
        not available; REPORT.md then warns that the numbers do not measure the paper's claims)."""
        if source not in DATA_SOURCES:
            raise ValueError(f"data source must be one of {DATA_SOURCES}, got {source!r}")
        self.data[name] = source

    def save_figure(self, fig, stem: str) -> Path:
        """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``; returns the png path."""
        for ext in ("png", "pdf"):
            with atomic_path(self.dir / f"{stem}.{ext}") as tmp:
                fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        return self.final_dir / f"{stem}.png"

    def save_table(self, table: pd.DataFrame, stem: str) -> None:
        """Save ``table`` as ``<stem>.csv`` and ``<stem>.md``."""
        write_text(self.dir / f"{stem}.csv", table.to_csv(index=False))
        write_text(self.dir / f"{stem}.md", table.to_markdown(index=False) + "\n")

    def save_model(self, model: torch.nn.Module, name: str) -> None:
        """Save ``model``'s state dict as ``models/<name>.pt`` (small nets, for independent
        checks)."""
        (self.dir / "models").mkdir(exist_ok=True)
        with atomic_path(self.dir / "models" / f"{name}.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)

    def compare(self, artifact: str, row: str, metric: str, paper: float | None,
                reproduced: float, unit: str = "", note: str = "", profile: str | None = None
                ) -> None:
        """One number the paper reports, beside the value this run produced and the profile
        (budget) that produced it: ``profile``, else the run's."""
        if reproduced is None or pd.isna(reproduced):
            raise ValueError(f"{artifact}/{row}/{metric}: reproduced value is missing or NaN")
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"{artifact}/{row}/{metric}: unknown profile {profile!r}")
        self.comparison.append(dict(artifact=artifact, row=row, metric=metric, paper=paper,
                                    reproduced=float(reproduced), unit=unit,
                                    profile=profile or self.profile, note=note))

    def finish(self, **fields: Any) -> dict[str, Any]:
        """Write comparison.csv and results.json, then publish the outputs atomically. A run that
        skipped anything (the quick check) is refused the committed ``figures/``: its results
        must never stand in for a full run's."""
        if self.not_rederived and _committed(self.final_dir):
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(
                f"{self.notebook}: this run skipped {[s['what'] for s in self.not_rederived]}, so "
                f"it may not replace the committed results in {COMMITTED_OUT}; use "
                f"./reproduce.sh --quick (writes outputs/quick/) or another out_dir")
        table = pd.DataFrame(self.comparison, columns=COMPARISON_COLUMNS)
        write_text(self.dir / "comparison.csv", table.to_csv(index=False))
        profiles = set(self.used_profiles.values()) or {self.profile}
        results = dict(notebook=self.notebook,
                       profile=self.profile if len(profiles) == 1 else "mixed",
                       profiles=self.used_profiles or None,
                       device=device_description(self.device), seed=self.seed,
                       git_commit=git_commit(), libraries=installed_versions(),
                       wall_seconds=round(time.perf_counter() - self.started, 2),
                       data=self.data,
                       setting=dict(profile=self.profile, part_profiles=self.part_profiles,
                                    seed=self.seed, device=self.device),   # lipcore.manifest
                       **({"not_rederived": self.not_rederived} if self.not_rederived else {}),
                       **fields)
        write_text(self.dir / "results.json", json.dumps(results, indent=2, default=float) + "\n")
        old = self.final_dir.with_name(f".{self.notebook}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final_dir.exists():
            self.final_dir.rename(old)
        self.dir.rename(self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.dir = self.final_dir
        return results


def _committed(folder: Path) -> bool:
    """Whether ``folder`` lies in the committed ``figures/`` (its variants included)."""
    return folder.resolve().is_relative_to(COMMITTED_OUT.resolve())


def start_run(notebook: str, profile: str | None = None, device: str | None = None,
              seed: int = 0, data_dir=None, out_dir=None,
              part_profiles: str | dict[str, str] | None = None) -> NotebookRun:
    """Validate a notebook's parameters and open its output folder.

    ``None`` means: profile from ``$LIPCORE_PROFILE`` (else paper on CUDA, cpu otherwise),
    out_dir from ``$LIPCORE_OUT``, else the scratch folder ``outputs/scratch/`` (ignored by git:
    opening and running a notebook never touches the committed ``figures/``, which only
    ``./reproduce.sh`` or an explicit ``out_dir`` writes); data_dir is resolved by lipcore.data;
    part_profiles from ``$LIPCORE_PART_PROFILES`` (:func:`parse_part_profiles`).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    out = Path(out_dir or os.environ.get("LIPCORE_OUT") or SCRATCH_OUT).resolve()
    if quick_check() and _committed(out):
        raise RuntimeError(f"the quick check (LIPCORE_NO_TRAIN=1) trains nothing and skips "
                           f"evaluations, so it may not write to {out}, inside the committed "
                           f"figures/; use ./reproduce.sh --quick (outputs/quick/) or another "
                           f"out_dir, or unset LIPCORE_NO_TRAIN")
    if out == SCRATCH_OUT.resolve():
        print(f"lipcore: outputs of this run go to the scratch folder {out}/{notebook} (ignored by "
              "git); ./reproduce.sh, or out_dir=..., writes the committed figures/")
    return NotebookRun(notebook, resolve_profile(profile), resolve_device(device), seed,
                       data_dir, out, parse_part_profiles(part_profiles, notebook))
