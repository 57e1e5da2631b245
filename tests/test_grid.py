"""The Dask grid: cells run on a local cluster of two workers give exactly the serial results
(with the same torch threads per cell), and a grid killed half way resumes from the cache without
retraining the finished cells."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipcore.experiments.lipschitz_loss import Cell, run_cell
from lipcore.grid import local_workers, run_grid
from lipcore.trainers import LipschitzLossConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def cells(epochs: int = 1, n: int = 4) -> list[Cell]:
    """Small MNIST-shaped cells on a synthetic stand-in (no data files needed)."""
    train = TrainConfig(epochs=epochs, batch_size=50, lr=1e-3, shuffle=True)
    return [Cell("mnist", "mnist_cnn", LipschitzLossConfig(beta=float(b), sigma=0.5, L_n=0.01),
                 train, 200, 100, (400, 100), (0.0, 0.5), seed=0)
            for b in range(n)]


def results_without_timing(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "trained_now")}
            for r in results]


def test_two_local_workers_reproduce_the_serial_run_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "serial"))
    serial = run_grid(run_cell, cells(), address="serial", threads=1)
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "dask"))
    spread = run_grid(run_cell, cells(), address=None, workers=2, threads=1)
    assert all(r["trained_now"] for r in serial + spread)
    assert results_without_timing(spread) == results_without_timing(serial)
    assert len(list((tmp_path / "dask").glob("*.pt"))) == len(cells())
    again = run_grid(run_cell, cells(), address=None, workers=2)       # all cached now
    assert not any(r["trained_now"] for r in again)


KILLED_GRID = """
import sys
from lipcore.grid import run_grid
from lipcore.experiments.lipschitz_loss import run_cell
sys.path.insert(0, {tests!r})
from test_grid import cells
if __name__ == "__main__":
    run_grid(run_cell, cells(epochs=4, n=6), address=None, workers=1, threads=1)
"""


def test_a_grid_killed_half_way_resumes_without_retraining_finished_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "cache"))
    script = tmp_path / "grid.py"
    script.write_text(KILLED_GRID.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "LIPCORE_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "cache").glob("*.pt")):
        assert proc.poll() is None, "the grid ended before it was killed"
        assert time.time() < deadline, "no cell finished within 5 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                  # the driver and its Dask workers
    proc.wait()
    finished = {p.name for p in (tmp_path / "cache").glob("*.pt")}
    assert 1 <= len(finished) < 6

    resumed = run_grid(run_cell, cells(epochs=4, n=6), address="serial", threads=1)
    assert sum(not r["trained_now"] for r in resumed) == len(finished)
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "fresh"))
    uninterrupted = run_grid(run_cell, cells(epochs=4, n=6), address="serial", threads=1)
    assert results_without_timing(resumed) == results_without_timing(uninterrupted)


def test_bad_worker_counts_are_refused():
    with pytest.raises(ValueError, match="workers"):
        local_workers(0)
    assert local_workers(3) == 3
