"""Grids of independent training runs on Dask distributed: one laptop to a GPU cluster.

Each grid cell is a plain function call ``fn(cell)`` whose result is cached by content hash
(:mod:`lipcore.cache`), so an interrupted grid resumes where it stopped and a finished cell is
never trained twice. :func:`run_grid` hands the cells to Dask:

* ``address=None`` (default): a ``LocalCluster`` on this machine, no setup; one worker process
  per local GPU, or ``workers`` CPU workers when there is none;
* ``address="tcp://host:8786"`` (or ``$LIPCORE_GRID_ADDRESS``): a running Dask scheduler, e.g.
  ``dask scheduler`` plus ``dask worker`` on every GPU node, or a SLURM cluster from
  dask-jobqueue;
* ``address="serial"``: no engine at all, the cells run one after another in this process.

Why Dask and not Ray: both are maintained engines, but Dask is pure Python wheels of a few MB
(Ray's wheel alone is over 60 MB, more than a GPU lease can carry), its ``LocalCluster`` needs no
setup, and dask-jobqueue reaches SLURM/PBS clusters. A worker picks its GPU with
:func:`worker_device`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import torch

from .progress import bar

SERIAL = "serial"


def resolve_address(address: str | None) -> str | None:
    """``address``, else ``$LIPCORE_GRID_ADDRESS``; None means a local cluster."""
    return address or os.environ.get("LIPCORE_GRID_ADDRESS") or None


def worker_device(device: str) -> str:
    """The device a grid cell should use. On a local cluster with several GPUs, worker i takes
    GPU i mod the number of GPUs; elsewhere ``device`` unchanged (workers of a remote cluster are
    pinned to their GPU by ``CUDA_VISIBLE_DEVICES``, see the README)."""
    if device != "cuda" or torch.cuda.device_count() <= 1:
        return device
    try:
        from distributed import get_worker
        name = get_worker().name
    except ValueError:                      # not inside a Dask worker
        return device
    return f"cuda:{name % torch.cuda.device_count()}" if isinstance(name, int) else device


def local_workers(workers: int | None) -> int:
    """One worker per GPU, or ``workers`` (default 1) CPU workers."""
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    return torch.cuda.device_count() or 1


def run_grid(fn: Callable[[Any], Any], cells: Sequence[Any], address: str | None = None,
             workers: int | None = None, desc: str = "grid cells",
             threads: int | None = None) -> list[Any]:
    """``[fn(cell) for cell in cells]``, computed on Dask (see the module docstring) with a
    progress bar; results come back in the order of ``cells``. ``fn`` must be importable
    (a module-level function) and ``cells`` picklable. A failing cell raises here, after the
    cells that finished have been cached.

    ``threads``: torch threads per cell (default: this machine's cores shared among the local
    workers, or torch's setting when serial). Float reductions depend on the thread count, so a
    grid reproduces a serial run bit for bit when both use the same ``threads``."""
    address = resolve_address(address)
    progress = bar(len(cells), desc)
    if address == SERIAL:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            results = []
            for cell in cells:
                results.append(fn(cell))
                progress.update()
            return results
        finally:
            torch.set_num_threads(before)
            progress.close()
    from distributed import Client, LocalCluster, as_completed

    if address is None:
        n = local_workers(workers)
        per_worker = threads or max(1, (os.cpu_count() or 1) // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.CRITICAL,
                               env={"OMP_NUM_THREADS": str(per_worker), "LIPCORE_PROGRESS": "0"})
        client = Client(cluster)
    else:
        cluster, client = None, Client(address)
        per_worker = threads
    try:
        if per_worker:
            client.run(torch.set_num_threads, per_worker)
        futures = client.map(fn, list(cells), pure=False)
        for _ in as_completed(futures):
            progress.update()
        return client.gather(futures)
    finally:
        progress.close()
        client.close()
        if cluster is not None:
            cluster.close()
