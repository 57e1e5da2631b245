"""Content-addressed cache of trained models.

A model is stored under ``.cache/lipcore/<key>.pt`` (or ``$LIPCORE_CACHE``), where the key hashes
everything that determines it: the config, the data fingerprint, the seed and the source code of
the function that trains it. Changing any of them trains a new model; re-running a notebook with
the same settings loads the stored one.

Chunked runs. With ``LIPCORE_DEADLINE`` (a Unix time) set, :func:`cached` refuses to *start*
training once that time has passed, raising :class:`DeadlineReached`; models already trained
stay in the cache, so running the same notebook again resumes where it stopped. Each process
trains at least one model before it stops, so every chunk makes progress. ``reproduce.sh
--chunk-seconds N`` uses this to split long runs (a GPU lease of 10-minute commands).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .io import atomic_path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "figures" / "trained"       # committed nets of long runs' finished cells


def cache_dir() -> Path:
    """``$LIPCORE_CACHE`` if set, else ``.cache/lipcore`` in the repository."""
    return Path(os.environ.get("LIPCORE_CACHE") or REPO_ROOT / ".cache" / "lipcore")


def code_version(fn: Callable) -> str:
    """Hash of the source of the module that defines a trainer (the trainer and its helpers),
    so an edited trainer never reuses a stale model."""
    return hashlib.sha256(inspect.getsource(inspect.getmodule(fn)).encode()).hexdigest()[:16]


def cache_key(config: dict[str, Any], data_fingerprint: str, seed: int, trainer: Callable) -> str:
    """Hash of (config, data, seed, trainer source). ``config`` must be JSON-serialisable."""
    try:
        payload = json.dumps({"config": config, "data": data_fingerprint, "seed": seed,
                              "trainer": f"{trainer.__module__}.{trainer.__qualname__}",
                              "code": code_version(trainer)}, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"cache config must be JSON-serialisable (plain numbers, strings, "
                        f"lists, dicts): {exc}") from exc
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class DeadlineReached(RuntimeError):
    """The chunk's time (``LIPCORE_DEADLINE``) is up; run again to resume from the cache."""


_builds_this_process = 0


def _check_deadline() -> None:
    """Raise DeadlineReached if ``LIPCORE_DEADLINE`` has passed and this process has already
    trained a model (so that every chunk makes progress)."""
    deadline = os.environ.get("LIPCORE_DEADLINE")
    if deadline and _builds_this_process > 0 and time.time() > float(deadline):
        raise DeadlineReached(f"the chunk's time budget ended after {_builds_this_process} "
                              "trained model(s); they are cached, so running the same command "
                              "again resumes from here")


def cached(key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load the object stored under ``key``, or call ``build()`` and store its result atomically.

    ``build`` returns a dict of tensors / plain values (e.g. a state dict plus training history).
    Raises :class:`DeadlineReached` instead of building once ``LIPCORE_DEADLINE`` has passed.
    """
    global _builds_this_process
    path = cache_dir() / f"{key}.pt"
    for stored in (path, SHIPPED / f"{key}.pt"):
        if stored.is_file():
            return torch.load(stored, map_location="cpu", weights_only=False)
    _check_deadline()
    _builds_this_process += 1
    obj = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return obj


def ship(source: Path, target: Path = SHIPPED, max_bytes: int = 5 * 2 ** 20) -> list[Path]:
    """Copy every cached model of ``source`` that ``target`` lacks (atomically) and that is at
    most ``max_bytes`` (large nets are quicker to retrain than to keep in git); returns the new
    files. Point it at a cache that only the run to be shipped has used."""
    new = []
    for path in sorted(Path(source).glob("*.pt")):
        if not (target / path.name).is_file() and path.stat().st_size <= max_bytes:
            target.mkdir(parents=True, exist_ok=True)
            with atomic_path(target / path.name) as tmp:
                tmp.write_bytes(path.read_bytes())
            new.append(target / path.name)
    return new


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Ship a run's trained models to figures/trained/ "
                                     "so a resumed run on another machine finds them.")
    parser.add_argument("command", choices=["ship"])
    parser.add_argument("cache", type=Path, help="the run's cache folder ($LIPCORE_CACHE)")
    parser.add_argument("--max-mb", type=float, default=5.0, help="skip larger models")
    args = parser.parse_args()
    if not args.cache.is_dir():
        parser.error(f"cache folder {args.cache} does not exist")
    shipped = ship(args.cache, max_bytes=int(args.max_mb * 2 ** 20))
    print(f"shipped {len(shipped)} new model(s) to {SHIPPED} "
          f"({sum(p.stat().st_size for p in shipped) / 2**20:.1f} MB)")
