"""Content-addressed cache of trained models.

A model is stored under ``.cache/lipcore/<key>.pt`` (or ``$LIPCORE_CACHE``), where the key hashes
everything that determines it: the config, the data fingerprint, the seed and the source code of
the function that trains it. Changing any of them trains a new model; re-running a notebook with
the same settings loads the stored one.

Loading never runs code. Every entry is read with ``torch.load(weights_only=True)``, which
unpickles only tensors, plain containers and numbers, plus the few numpy types training
histories hold (:data:`SAFE_NUMPY`); a pickle that would call anything else is refused. A cached
entry that cannot be read that way (damaged, truncated, or crafted) is moved aside to
``<cache>/quarantine/``, named in a warning, and rebuilt. A shipped net in ``figures/trained/``
is used only if its SHA-256 digest is listed in ``figures/trained/SHA256SUMS`` (written by
``python -m lipcore.cache ship``); any other is refused, named, and left for the run to rebuild.
Cache files get the permissions of the user's umask, so a group can share a cache folder.

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
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from numpy._core import multiarray

from .io import atomic_path, write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "figures" / "trained"       # committed nets of long runs' finished cells
DIGESTS = "SHA256SUMS"                            # in SHIPPED: the digest of every shipped net
# numpy arrays of numbers in training histories (LipSDP's T, for example); no other globals
SAFE_NUMPY = [multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.Float64DType,
              np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.BoolDType]


class UnreadableModel(RuntimeError):
    """A model file that cannot be read without running code, or not at all."""


def safe_load(path: Path) -> Any:
    """``torch.load`` that cannot run code (``weights_only=True`` with :data:`SAFE_NUMPY`), or
    :class:`UnreadableModel` naming the file."""
    try:
        with torch.serialization.safe_globals(SAFE_NUMPY):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (damaged zip, refused global, truncated file, ...)
        raise UnreadableModel(f"{path} cannot be read safely ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pinned_digests(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of every shipped net listed in ``folder/SHA256SUMS``."""
    listing = Path(folder) / DIGESTS
    if not listing.is_file():
        return {}
    return {name: digest for digest, name in
            (line.split() for line in listing.read_text().splitlines() if line.strip())}


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
    if path.is_file():
        try:
            return safe_load(path)
        except UnreadableModel as bad:
            aside = quarantine(path)
            warnings.warn(f"{bad}; moved it to {aside} and training it again", stacklevel=2)
    shipped = SHIPPED / path.name
    if shipped.is_file():
        if pinned_digests(SHIPPED).get(shipped.name) != sha256(shipped):
            warnings.warn(f"{shipped} is not listed with its SHA-256 in {SHIPPED / DIGESTS}; "
                          "refused (python -m lipcore.cache ship lists the nets it ships)",
                          stacklevel=2)
        else:
            try:
                return safe_load(shipped)
            except UnreadableModel as bad:
                warnings.warn(f"{bad}; refused, training it again", stacklevel=2)
    _check_deadline()
    _builds_this_process += 1
    obj = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return obj


def quarantine(path: Path) -> Path:
    """Move a bad cache entry to ``<cache>/quarantine/`` (kept for inspection, not deleted)."""
    folder = path.parent / "quarantine"
    folder.mkdir(exist_ok=True)
    target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
    os.replace(path, target)
    return target


def ship(source: Path, target: Path = SHIPPED, max_bytes: int = 5 * 2 ** 20) -> list[Path]:
    """Copy every cached model of ``source`` that ``target`` lacks (atomically) and that is at
    most ``max_bytes`` (large nets are quicker to retrain than to keep in git); returns the new
    files. Point it at a cache that only the run to be shipped has used."""
    new = []
    for path in sorted(Path(source).glob("*.pt")):
        if not (target / path.name).is_file() and path.stat().st_size <= max_bytes:
            safe_load(path)                          # never ship what cannot be read safely
            target.mkdir(parents=True, exist_ok=True)
            with atomic_path(target / path.name) as tmp:
                tmp.write_bytes(path.read_bytes())
            new.append(target / path.name)
    write_digests(target, {**pinned_digests(target), **{p.name: sha256(p) for p in new}})
    return new


def write_digests(folder: Path, digests: dict[str, str]) -> None:
    """Write ``folder/SHA256SUMS`` (``sha256sum`` format, sorted by name)."""
    write_text(Path(folder) / DIGESTS,
               "".join(f"{digests[name]}  {name}\n" for name in sorted(digests)))


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
