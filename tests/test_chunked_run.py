"""Chunked runs (for GPU leases of 10-minute commands): a run stopped after its first chunk
resumes from the cache and produces the same outputs as an uninterrupted run."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lipcore import cache

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("comparison.csv", "table1.csv", "enforced_bounds.csv", "certified_and_attacked.csv")


def reproduce(out: Path, cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIPCORE_PYTHON": sys.executable, "LIPCORE_CACHE": str(cache_dir),
           "LIPCORE_PROGRESS": "0"}
    return subprocess.run([str(ROOT / "reproduce.sh"), "--profile", "smoke", "--only",
                           "pauli_admm", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def without_times(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    if "unit" in table:                                   # comparison.csv: drop timing rows
        table = table[table["unit"] != "s"]
    return table.drop(columns=[c for c in table if "seconds" in c]).reset_index(drop=True)


def test_an_interrupted_smoke_run_resumes_from_the_cache_with_identical_outputs(tmp_path):
    if not os.environ.get("LIPCORE_DATA"):
        pytest.skip("LIPCORE_DATA not set")
    whole = reproduce(tmp_path / "whole", tmp_path / "cache-whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    # a clean run logs no kernel noise (issue 18 saw "KeyboardInterrupt caught in kernel")
    assert "KeyboardInterrupt" not in whole.stdout + whole.stderr

    first = reproduce(tmp_path / "chunked", tmp_path / "cache-chunked", "--chunk-seconds", "0")
    assert first.returncode == 75, first.stderr[-2000:]
    assert "--resume" in first.stderr
    assert not (tmp_path / "chunked" / "pauli_admm").exists()      # no half-written output
    trained_first = len(list((tmp_path / "cache-chunked").glob("*.pt")))
    assert trained_first >= 1

    rest = reproduce(tmp_path / "chunked", tmp_path / "cache-chunked", "--resume")
    assert rest.returncode == 0, rest.stderr[-2000:]
    for name in TABLES:
        pd.testing.assert_frame_equal(without_times(tmp_path / "whole" / "pauli_admm" / name),
                                      without_times(tmp_path / "chunked" / "pauli_admm" / name))
    assert (tmp_path / "chunked" / "pauli_admm" / "pauli_admm.ipynb").is_file()
    assert (tmp_path / "chunked" / "site" / "index.html").is_file()


def test_the_deadline_stops_only_new_training_and_only_after_one_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    monkeypatch.setenv("LIPCORE_DEADLINE", "0")                     # long past
    monkeypatch.setattr(cache, "_builds_this_process", 0)
    assert cache.cached("a", lambda: {"v": 1}) == {"v": 1}         # the first build goes ahead
    with pytest.raises(cache.DeadlineReached, match="resumes"):
        cache.cached("b", lambda: {"v": 2})
    assert cache.cached("a", lambda: {"v": 3}) == {"v": 1}         # loading is always allowed
