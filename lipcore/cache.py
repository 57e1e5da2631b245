"""Content-addressed cache of trained models.

A model is stored under ``.cache/lipcore/<key>.pt`` (or ``$LIPCORE_CACHE``), where the key hashes
everything that determines it: the config, the data fingerprint, the seed, the trainer, and the
code that trained it: every lipcore file that the module asking for the key imports, directly or
not, read without its comments and docstrings (:mod:`lipcore.deps`), with the versions of the
libraries that can change the weights (torch, numpy, cvxpy and its solvers, ...). Changing any
of them trains a new model; re-running a notebook with the same settings and code loads the
stored one. Each stored net records how it was made (``_made``: its *recipe*, the key without
the code, the code fingerprint, the commit and the machine, :func:`lipcore.run.machine`).

The quick check (``LIPCORE_NO_TRAIN=1``, ``./reproduce.sh --quick``) never trains: a net that is
neither cached nor shipped under its key is looked up by recipe (the same config, data and seed
trained by older code, listed in ``figures/trained/INDEX.json``) or by the key it had before keys
covered the imported code (:attr:`CacheKey.legacy`); else :class:`NotTrained` names it. Every net
the quick check loads is logged to ``$LIPCORE_NET_LOG`` (JSON lines) with where it came from, so
the summary can say which numbers come from nets trained by older code.

A net stored while keys hashed the files' bytes (comments and docstrings included) is found
under that form of its key (:attr:`CacheKey.byte_key`): the code is then byte for byte the code
that trained it. The net is also stored under its key, so a later comment or docstring edit
still finds it.

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
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from numpy._core import multiarray

from . import deps
from .io import atomic_path, write_text
from .run import COMMITTED_OUT, REPO_ROOT, git_commit, machine, quick_check

SHIPPED = COMMITTED_OUT / "trained"               # committed nets of long runs' finished cells
DIGESTS = "SHA256SUMS"                            # in SHIPPED: the digest of every shipped net
INDEX = "INDEX.json"                              # in SHIPPED: recipe and provenance of each net
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


def code_version(module: str, raw: bool = False) -> str:
    """Fingerprint of the code that module ``module`` runs: for a lipcore module, every lipcore
    file it imports and the library versions that matter (:func:`lipcore.deps.fingerprint`;
    ``raw``: of the files' bytes); for any other module (a test's trainer), its own source."""
    if deps.module_file(module) is not None:
        return deps.fingerprint(module, raw)
    return hashlib.sha256(inspect.getsource(sys.modules[module]).encode()).hexdigest()[:16]


class CacheKey(str):
    """A cache key (the file name's stem) that also knows its *recipe* (the same hash without
    the code), the key the same net had while keys hashed the files' bytes (``byte_key``) and
    before keys covered imported code (``legacy``), and a short description for messages."""
    recipe: str
    byte_key: str
    legacy: str
    describe: str


def _digest(payload: dict[str, Any]) -> str:
    try:
        text = json.dumps(payload, sort_keys=True)
    except TypeError as exc:
        raise TypeError(f"cache config must be JSON-serialisable (plain numbers, strings, "
                        f"lists, dicts): {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_key(config: dict[str, Any], data_fingerprint: str, seed: int, trainer: Callable
              ) -> CacheKey:
    """Hash of (config, data, seed, trainer, code). The code is that of the trainer's module and
    of the module calling ``cache_key`` (whose ``build`` makes the model), each with everything
    it imports. ``config`` must be JSON-serialisable."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    recipe = {"config": config, "data": data_fingerprint, "seed": seed,
              "trainer": f"{trainer.__module__}.{trainer.__qualname__}"}
    key = CacheKey(_digest(dict(recipe, code=[code_version(trainer.__module__),
                                              code_version(caller)])))
    key.recipe = _digest(recipe)
    key.byte_key = _digest(dict(recipe, code=[code_version(trainer.__module__, raw=True),
                                              code_version(caller, raw=True)]))
    # before keys covered imported code: the source of the trainer's own module only
    key.legacy = _digest(dict(recipe, code=hashlib.sha256(inspect.getsource(
        inspect.getmodule(trainer)).encode()).hexdigest()[:16]))
    # the whole config (a prefix can be the same for every row of a table); the data set's
    # subset is in the fingerprint only
    key.describe = (f"{recipe['trainer']}, seed {seed}, data {data_fingerprint}, "
                    f"config {json.dumps(config)}")
    return key


class NotTrained(RuntimeError):
    """The quick check (``LIPCORE_NO_TRAIN=1``) needs a net that is neither cached nor shipped."""


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


def _read(path: Path, pinned: bool) -> dict[str, Any] | None:
    """The net stored at ``path``, or None (with a warning) where it is missing, unreadable, or
    shipped without its digest listed (``pinned``)."""
    if not path.is_file():
        return None
    if pinned and pinned_digests(path.parent).get(path.name) != sha256(path):
        warnings.warn(f"{path} is not listed with its SHA-256 in {path.parent / DIGESTS}; "
                      "refused (python -m lipcore.cache ship lists the nets it ships)",
                      stacklevel=4)
        return None
    try:
        return safe_load(path)
    except UnreadableModel as bad:
        if pinned:
            warnings.warn(f"{bad}; refused, training it again", stacklevel=4)
        else:
            aside = quarantine(path)
            warnings.warn(f"{bad}; moved it to {aside} and training it again", stacklevel=4)
        return None


def shipped_index(folder: Path | None = None) -> dict[str, dict[str, str]]:
    """File name -> how the shipped net was made (recipe, key, commit), from ``INDEX.json`` in
    ``folder`` (default :data:`SHIPPED`)."""
    path = Path(folder or SHIPPED) / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


OLDER = "trained by older code"                  # how the quick check's fallbacks are counted


def _stored(key: str) -> tuple[dict[str, Any], str, str] | None:
    """The net stored under ``key`` (cached, or shipped and pinned), its kind ("cache" or
    "shipped") and the log's description of where it came from (the same word)."""
    for path, pinned, kind in ((cache_dir() / f"{key}.pt", False, "cache"),
                               (SHIPPED / f"{key}.pt", True, "shipped")):
        obj = _read(path, pinned)
        if obj is not None:
            return obj, kind, kind
    return None


def _stored_under_byte_key(key: str) -> tuple[dict[str, Any], str, str] | None:
    """The net stored under the byte form of ``key`` (the same code, comments and docstrings
    included), as :func:`_stored` gives it, now also copied (byte for byte) to the cache under
    ``key`` itself."""
    byte_key = getattr(key, "byte_key", None)
    found = _stored(byte_key) if byte_key and byte_key != key else None
    if found is not None:
        source = (cache_dir() if found[1] == "cache" else SHIPPED) / f"{byte_key}.pt"
        path = cache_dir() / f"{key}.pt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                shutil.copyfile(source, tmp)
        except OSError as exc:              # a read-only cache: the net is still the right one
            warnings.warn(f"could not also store {byte_key}.pt as {path} ({exc}); a later "
                          "comment or docstring edit will retrain it")
    return found


def _older(key: str) -> tuple[dict[str, Any], str, str] | None:
    """For the quick check: the same recipe trained by older code (shipped), or the net stored
    under the key's legacy form (cached or shipped), as :func:`_stored` gives it."""
    recipe, legacy = getattr(key, "recipe", None), getattr(key, "legacy", None)
    for name, made in sorted(shipped_index().items()):
        if recipe and made.get("recipe") == recipe:
            obj = _read(SHIPPED / name, pinned=True)
            if obj is not None:
                return obj, OLDER, (f"shipped {name}, trained by older code (commit "
                                    f"{made.get('commit')})")
    if legacy:
        found = _stored(legacy)
        if found is not None:
            return found[0], OLDER, f"{legacy}.pt, trained before keys covered imported code"
    return None


def _log(key: str, kind: str, source: str) -> None:
    """Append where the net for ``key`` came from to ``$LIPCORE_NET_LOG`` (if set)."""
    log = os.environ.get("LIPCORE_NET_LOG")
    if log:
        entry = {"key": str(key), "recipe": getattr(key, "recipe", None),
                 "byte_key": getattr(key, "byte_key", None),
                 "legacy": getattr(key, "legacy", None), "kind": kind, "source": source,
                 "net": getattr(key, "describe", None)}
        with open(log, "a") as out:
            out.write(json.dumps(entry) + "\n")


def missing(entries: list[dict[str, Any]]) -> list[str]:
    """Of the nets a run logged (the lines of its ``nets.jsonl``), those the quick check could not
    load here: neither cached nor shipped under their key (or its byte form), recipe or legacy
    key."""
    absent = []
    for entry in entries:
        key = CacheKey(entry["key"])
        key.recipe, key.legacy = entry.get("recipe"), entry.get("legacy")
        here = any((folder / f"{name}.pt").is_file() for folder in (cache_dir(), SHIPPED)
                   for name in {key, entry.get("byte_key") or key})
        if not here and _older(key) is None:
            absent.append(str(key))
    return absent


def _made(key: str) -> dict[str, str]:
    return {"recipe": getattr(key, "recipe", ""), "key": str(key), "commit": git_commit(),
            "made_on": machine()}


def cached(key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load the object stored under ``key``, or call ``build()`` and store its result atomically
    with how it was made (``_made``, dropped again on loading).

    ``build`` returns a dict of tensors / plain values (e.g. a state dict plus training history).
    Raises :class:`DeadlineReached` instead of building once ``LIPCORE_DEADLINE`` has passed, and
    :class:`NotTrained` instead of building under ``LIPCORE_NO_TRAIN=1`` when no older net of
    the same recipe is shipped either.
    """
    global _builds_this_process
    found = _stored(key) or _stored_under_byte_key(key)
    if found is None and quick_check():
        found = _older(key)
        if found is None:
            raise NotTrained(f"the quick check trains nothing, and no net of this recipe is "
                             f"cached or shipped in {SHIPPED}: {getattr(key, 'describe', key)}")
    if found is not None:
        obj, kind, source = found
        _log(key, kind, source)
        obj.pop("_made", None)
        return obj
    _check_deadline()
    _builds_this_process += 1
    obj = build()
    path = cache_dir() / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(obj, _made=_made(key)), tmp)
    _log(key, "trained", "trained")
    return obj


def quarantine(path: Path) -> Path:
    """Move a bad cache entry to ``<cache>/quarantine/`` (kept for inspection, not deleted)."""
    folder = path.parent / "quarantine"
    folder.mkdir(exist_ok=True)
    target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
    os.replace(path, target)
    return target


def ship(source: Path, target: Path = SHIPPED, max_bytes: int = 5 * 2 ** 20,
         keys: list[str] | None = None, replace: bool = False) -> list[Path]:
    """Copy every cached model of ``source`` that ``target`` lacks (atomically) and that is at
    most ``max_bytes`` (large nets are quicker to retrain than to keep in git), or only those
    stored under ``keys``; returns the new files. Point it at a cache that only the run to be
    shipped has used. ``replace``: a new net removes the kept nets of its recipe stored under
    other keys (trained by older code), so that retraining does not double the weight."""
    new = []
    paths = sorted(Path(source).glob("*.pt")) if keys is None else \
        [Path(source) / f"{key}.pt" for key in keys]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no net {path.name} in {source}: nothing to ship under "
                                    "that key")
        size = path.stat().st_size
        if size > max_bytes and keys is not None:           # asked for by key: never dropped
            raise ValueError(f"{path.name} is {size / 2**20:.1f} MB, over the "
                             f"{max_bytes / 2**20:.1f} MB limit; raise --max-mb to ship it")
        if size <= max_bytes and not (target / path.name).is_file():
            safe_load(path)                          # never ship what cannot be read safely
            target.mkdir(parents=True, exist_ok=True)
            with atomic_path(target / path.name) as tmp:
                tmp.write_bytes(path.read_bytes())
            new.append(target / path.name)
    digests = {**pinned_digests(target), **{p.name: sha256(p) for p in new}}
    index = shipped_index(target)
    for p in new:
        made = safe_load(p).get("_made")
        if isinstance(made, dict):
            index[p.name] = made
    if replace:
        fresh = {index[p.name]["recipe"]: p.name for p in new if p.name in index}
        for name in [n for n, made in index.items()
                     if fresh.get(made.get("recipe"), n) != n]:      # same recipe, older key
            (target / name).unlink(missing_ok=True)
            digests.pop(name, None)
            del index[name]
    write_digests(target, digests)
    write_text(target / INDEX, json.dumps(dict(sorted(index.items())), indent=1) + "\n")
    return new


def write_digests(folder: Path, digests: dict[str, str]) -> None:
    """Write ``folder/SHA256SUMS`` (``sha256sum`` format, sorted by name)."""
    write_text(Path(folder) / DIGESTS,
               "".join(f"{digests[name]}  {name}\n" for name in sorted(digests)))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Ship a run's trained models to figures/trained/ "
                                     "so a resumed run on another machine finds them.")
    parser.add_argument("command", choices=["ship", "missing"],
                        help="ship: copy a run's nets; missing: count the nets of a run's "
                             "nets.jsonl that the quick check could not load here (exit 3 when "
                             "it could load none, so no part of the notebook can be re-derived)")
    parser.add_argument("cache", type=Path, help="ship: the run's cache folder ($LIPCORE_CACHE); "
                                                 "missing: a result's nets.jsonl")
    parser.add_argument("--max-mb", type=float, default=5.0, help="skip larger models")
    parser.add_argument("--key", action="append", help="ship only the net of this key "
                        "(repeat for several; nets.jsonl gives each key's recipe)")
    parser.add_argument("--replace", action="store_true", help="remove the kept nets of the "
                        "same recipes stored under older keys (retrained by newer code)")
    args = parser.parse_args()
    if args.command == "missing":
        logged = [json.loads(line) for line in args.cache.read_text().splitlines()]
        absent = missing(logged)
        print(f"{len(absent)} of {len(logged)} net(s) neither cached nor kept in {SHIPPED}" +
              (f", e.g. {absent[0]}" if absent else ""))
        sys.exit(3 if absent and len(absent) == len(logged) else 0)
    if not args.cache.is_dir():
        parser.error(f"cache folder {args.cache} does not exist")
    shipped = ship(args.cache, max_bytes=int(args.max_mb * 2 ** 20), keys=args.key,
                   replace=args.replace)
    print(f"shipped {len(shipped)} new model(s) to {SHIPPED} "
          f"({sum(p.stat().st_size for p in shipped) / 2**20:.1f} MB)")
