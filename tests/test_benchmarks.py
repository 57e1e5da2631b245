"""benchmarks/run.py on a tiny net: every upper bound (ours and ECLipsE-Fast) >= the lower bound."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_benchmark_rows_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.SIZES, "tiny", ([12, 10, 8, 3], "tanh", "test"))
    out = tmp_path / "results.json"
    bench.main(["--sizes", "tiny", "--out", str(out), "--parts", "estimators"])
    results = json.loads(out.read_text())
    rows = {r["estimator"]: r for r in results["rows"]}
    lower = rows["empirical lower bound"]["bound"]
    assert {"naive", "LipSDP-neuron (SCS)", "LipSDP-layer (SCS)", "LipSDP-neuron (first-order)",
            "LipSDP-layer (first-order)", "ECLipsE-Fast (eclipse-nn)"} <= set(rows)
    assert all(r["bound"] >= lower for r in rows.values())
    assert rows["LipSDP-neuron (SCS)"]["bound"] <= rows["naive"]["bound"]
    assert abs(rows["LipSDP-neuron (first-order)"]["gap_to_scs"]) < 0.01
    assert results["machine"]["cores"] and results["commit"]
    bench.main(["--markdown", "--out", str(out)])
    table = capsys.readouterr().out
    assert "| 12-10-8-3 tanh | LipSDP-neuron (SCS) |" in table
    assert "| 12-10-8-3 tanh | LipSDP-neuron (first-order) |" in table and "% |" in table
    # a partial run keeps the other parts' rows, each with the commit that measured it
    results["rows"].append({**rows["naive"], "size": "old", "commit": "0ld", "date": "2020-01-01"})
    out.write_text(json.dumps(results))
    bench.main(["--sizes", "tiny", "--out", str(out), "--parts", "estimators"])
    again = json.loads(out.read_text())["rows"]
    assert [r["commit"] for r in again if r["size"] == "old"] == ["0ld"]
    assert all(r["commit"] == results["commit"] for r in again if r["size"] == "tiny")


def test_clip_epoch_benchmark_reports_a_cost_ratio():
    rows = bench.bench_clip_epoch(3, n_images=1024)    # best of 3: robust to a slow spell
    assert [r["estimator"] for r in rows] == [
        "standard epoch", "clip epoch (default: ascent on every 4th minibatch)",
        "clip epoch, ascent on every minibatch"]
    assert rows[0]["ratio_to_lower"] == 1.0 and rows[0]["median_ratio"] == 1.0
    assert all(r["ratio_to_lower"] > 1.0 for r in rows[1:])     # CLIP does strictly more work


def test_lesson_benchmark_times_a_run_and_its_redraws(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "lesson_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "lessons.py")
    lesson_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lesson_bench)
    monkeypatch.setattr(lesson_bench, "end_to_end", lambda lesson: 12.5)   # nbval runs them
    out = tmp_path / "lessons.json"
    lesson_bench.main(["--only", "lesson3_coupled_lipsdp", "--out", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert row["lesson"] == "lesson3_coupled_lipsdp" and row["end_to_end_s"] == 12.5
    assert 0 < row["repeated_redraw_s"] < 5 and 0 < row["first_redraw_s"] < 5
    assert "| lesson3_coupled_lipsdp | 12 s |" in capsys.readouterr().out
    assert set(lesson_bench.REDRAWS) == {p.stem for p in Path("notebooks/lessons").glob("*.ipynb")}
