"""benchmarks/gpu_check.py (issue 22) end to end on the CPU at a tiny scale: every row, the
predicted paper time per notebook, and the JSON and markdown it leaves for the device tool."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check          # its dataclasses look their module up
spec.loader.exec_module(gpu_check)


def test_gpu_check_runs_on_the_cpu_at_a_tiny_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "CRM_STEPS", gpu_check.CRM_STEPS[:2])   # 8C2F: seconds more
    results = gpu_check.main(["--out", str(tmp_path), "--scale", "0.003", "--repeats", "1",
                              "--device", "cpu"])
    saved = json.loads((tmp_path / "gpu_results.json").read_text())
    assert saved["device"].startswith("cpu") and saved["torch"] and saved["commit"]
    assert [r["arch"] for r in saved["crm_steps"]] == ["4C3F", "6C2F"]
    for r in saved["crm_steps"]:
        assert r["LipLT step (s)"] > 0 and r["naive step (s)"] > 0
        assert r["LipLT / naive"] == r["LipLT step (s)"] / r["naive step (s)"]
    notebooks = {r["notebook"] for r in saved["epochs"]}
    assert notebooks == {"pauli_admm", "clip", "crm_liplt", "lipschitz_loss"}
    for r in saved["epochs"]:       # an epoch at scale s is extrapolated to the whole data set
        assert r["predicted_hours"] == r["epoch_seconds"] * r["epochs_in_notebook"] / 3600
    assert saved["predicted_hours"] == results["predicted_hours"]
    # per-notebook sums, then their total: the same numbers added in another order
    assert sum(saved["predicted_hours"].values()) == pytest.approx(
        sum(r["predicted_hours"] for r in saved["epochs"]), rel=1e-12)
    table = (tmp_path / "gpu_results.md").read_text()
    assert "| 4C3F |" in table and "Predicted `paper` training time per notebook" in table
