"""Part of a notebook at one profile, the rest at another (issue 20), shipped models for runs
resumed elsewhere, and the safe default output folder of interactive runs (issue 18)."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from lipcore import cache
from lipcore.experiments import clip as cx
from lipcore.report import build_report
from lipcore.run import REPO_ROOT, SCRATCH_OUT, parse_part_profiles, start_run


def test_part_profiles_parse_from_dicts_strings_and_the_environment(monkeypatch):
    assert parse_part_profiles({"MNIST": "paper"}, "clip") == {"MNIST": "paper"}
    assert parse_part_profiles("MNIST=paper, Fashion-MNIST=cpu", "clip") == {
        "MNIST": "paper", "Fashion-MNIST": "cpu"}
    monkeypatch.setenv("LIPCORE_PART_PROFILES", "clip:MNIST=paper,pauli_admm:2D=smoke")
    assert parse_part_profiles(None, "clip") == {"MNIST": "paper"}
    assert parse_part_profiles(None, "crm_liplt") == {}
    with pytest.raises(ValueError, match="choose one of"):
        parse_part_profiles("MNIST=fast", "clip")
    with pytest.raises(ValueError, match="PART=PROFILE"):
        parse_part_profiles("MNIST", "clip")


def test_each_row_and_results_json_say_which_profile_produced_them(tmp_path):
    run = start_run("nb", profile="cpu", out_dir=tmp_path, part_profiles={"MNIST": "paper"})
    with pytest.raises(ValueError, match=r"does not have; its parts are \['A'\]"):
        run.profiles(["A"])
    profiles = run.profiles(["MNIST", "Fashion-MNIST"])
    assert profiles == {"MNIST": "paper", "Fashion-MNIST": "cpu"}
    run.compare("T", "MNIST row", "acc", 1.0, 2.0, profile=profiles["MNIST"])
    run.compare("T", "F row", "acc", 1.0, 2.0)
    with pytest.raises(ValueError, match="unknown profile"):
        run.compare("T", "x", "acc", 1.0, 2.0, profile="fast")
    results = run.finish()
    assert results["profile"] == "mixed" and results["profiles"] == profiles
    table = pd.read_csv(tmp_path / "nb" / "comparison.csv")
    assert list(table.profile) == ["paper", "cpu"]
    report = build_report(tmp_path).read_text()
    assert "MNIST: `paper`, Fashion-MNIST: `cpu`" in report
    assert "| paper |" in report and "| cpu |" in report


def test_clip_settings_per_half_follow_each_profile():
    S = cx.table_settings({"MNIST": "paper", "Fashion-MNIST": "cpu"})
    assert (S["MNIST"].epochs, S["MNIST"].n_train, S["MNIST"].n_test_pgd) == (100, None, None)
    assert S["MNIST"].profile == "paper" and S["Fashion-MNIST"].profile == "cpu"
    assert S["Fashion-MNIST"] == cx.table_settings("cpu")["Fashion-MNIST"]


def test_a_shipped_model_is_found_when_the_local_cache_lacks_it(tmp_path, monkeypatch):
    source, shipped = tmp_path / "run-cache", tmp_path / "trained"
    monkeypatch.setenv("LIPCORE_CACHE", str(source))
    cache.cached("k1", lambda: {"w": torch.ones(2)})
    assert [p.name for p in cache.ship(source, shipped)] == ["k1.pt"]
    assert cache.ship(source, shipped) == []                 # nothing new
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "empty"))   # another machine
    monkeypatch.setattr(cache, "SHIPPED", shipped)
    loaded = cache.cached("k1", lambda: pytest.fail("retrained a shipped model"))
    assert torch.equal(loaded["w"], torch.ones(2))
    monkeypatch.setenv("LIPCORE_CACHE", str(source))       # ship only the nets a table needs
    cache.cached("k2", lambda: {"w": torch.ones(2)})
    cache.cached("k3", lambda: {"w": torch.ones(2)})
    assert [p.name for p in cache.ship(source, shipped, keys=["k3"])] == ["k3.pt"]
    with pytest.raises(FileNotFoundError, match="no net k4.pt"):
        cache.ship(source, shipped, keys=["k4"])


def test_shipping_a_retrained_net_with_replace_removes_the_older_net_of_its_recipe(
        tmp_path, monkeypatch):
    """After a change of keys the retrained nets replace the kept ones of the same recipe
    (files, SHA256SUMS and INDEX.json), and a net of another recipe stays."""
    source, shipped = tmp_path / "run-cache", tmp_path / "trained"
    monkeypatch.setenv("LIPCORE_CACHE", str(source))

    def key(name, recipe):
        k = cache.CacheKey(name)
        k.recipe = recipe
        return k
    cache.cached(key("old", "r1"), lambda: {"w": torch.ones(2)})
    cache.cached(key("other", "r2"), lambda: {"w": torch.ones(2)})
    cache.ship(source, shipped)
    cache.cached(key("new", "r1"), lambda: {"w": torch.ones(2)})
    assert [p.name for p in cache.ship(source, shipped, keys=["new"], replace=True)] == ["new.pt"]
    assert sorted(p.name for p in shipped.glob("*.pt")) == ["new.pt", "other.pt"]
    assert sorted(cache.pinned_digests(shipped)) == ["new.pt", "other.pt"]
    assert sorted(cache.shipped_index(shipped)) == ["new.pt", "other.pt"]


def test_an_interactive_run_writes_to_the_ignored_scratch_folder(monkeypatch, capsys):
    monkeypatch.delenv("LIPCORE_OUT", raising=False)
    run = start_run("demo_scratch", profile="smoke")
    assert run.final_dir == SCRATCH_OUT.resolve() / "demo_scratch"
    assert "scratch folder" in capsys.readouterr().out
    ignored = subprocess.run(["git", "check-ignore", "-q", str(run.final_dir / "x.png")],
                             cwd=REPO_ROOT).returncode == 0
    assert ignored, "the scratch folder must be ignored by git"
    run.dir.rmdir()


def _reproduce(*args, **env):
    return subprocess.run(["./reproduce.sh", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "LIPCORE_PYTHON": "/nonexistent/python", **env})


@pytest.mark.parametrize("args,message", [
    (["--only", "nosuch"], "no notebook named 'nosuch'"),
    (["--data", "/nonexistent/data"], "--data directory '/nonexistent/data' does not exist"),
    (["--part-profile", "clip:MNIST=fast"], "must read NOTEBOOK:PART=smoke|cpu|paper"),
    (["--part-profile", "nosuch:MNIST=paper"], "names notebook 'nosuch'"),
    (["--quick", "--profile", "cpu"], "--quick re-derives the recorded settings"),
    (["--quick", "--out", "/tmp/elsewhere"], "it takes no --out"),
])
def test_reproduce_rejects_bad_options_before_looking_for_python(args, message):
    """LIPCORE_PYTHON points nowhere: the option errors must come first, in a second."""
    result = _reproduce(*args)
    assert result.returncode != 0 and message in result.stderr
    assert "LIPCORE_PYTHON" not in result.stderr


def test_executing_a_notebook_with_jupyters_defaults_leaves_git_status_clean(tmp_path):
    """Issue 18: nbconvert --execute (what JupyterLab's "run all" does) with no out_dir and no
    LIPCORE_OUT must not touch the committed figures/."""
    def status():
        return subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout
    before = status()
    env = {k: v for k, v in os.environ.items() if k != "LIPCORE_OUT"}
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--output-dir", str(tmp_path), "notebooks/lipsdp_counterexample.ipynb"],
        cwd=REPO_ROOT, env={**env, "LIPCORE_PROFILE": "smoke"}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert status() == before
    executed = (tmp_path / "lipsdp_counterexample.ipynb").read_text()
    assert "outputs/scratch" in executed          # and it said where its outputs went


def test_a_run_at_the_recorded_setting_reproduces_the_record(tmp_path):
    """Issue 28, the manifest round trip: a smoke run records its setting; ./reproduce.sh with no
    options re-runs exactly that and its summary finds every number identical. (About 3 min.)"""
    def reproduce(*args):
        result = subprocess.run(["./reproduce.sh", "--only", "lipsdp_counterexample",
                                 "--out", str(tmp_path), *args], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=900,
                                env={**os.environ, "LIPCORE_PROGRESS": "0"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout
    reproduce("--profile", "smoke")
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())["notebooks"]
    assert manifest["lipsdp_counterexample"]["profile"] == "smoke"
    before = pd.read_csv(tmp_path / "lipsdp_counterexample" / "comparison.csv")
    out = reproduce()
    assert "(the recorded setting)" in out and '"profile": "smoke"' in out
    assert f"{len(before)} identical, 0 within tolerance, 0 different" in out
    after = json.loads((tmp_path / "MANIFEST.json").read_text())["notebooks"]
    setting = {k: v for k, v in manifest["lipsdp_counterexample"].items() if k != "git_commit"}
    assert {k: v for k, v in after["lipsdp_counterexample"].items() if k != "git_commit"} == setting
    report = (tmp_path / "REPORT.md").read_text()
    assert f"{len(before)} identical" in report


def test_the_quick_check_re_derives_a_committed_result_without_writing_figures():
    """Issue 28: ./reproduce.sh --quick re-runs a committed result at its recorded setting with
    training switched off, into outputs/quick/, and finds every number identical. (About 1 min.)"""
    figures = REPO_ROOT / "figures" / "lipsdp_counterexample"
    before = {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()}
    result = subprocess.run(["./reproduce.sh", "--quick", "--only", "lipsdp_counterexample"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "LIPCORE_PROGRESS": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = len(pd.read_csv(figures / "comparison.csv"))
    assert f"{rows} identical, 0 within tolerance, 0 different" in result.stdout
    assert "quick check done" in result.stdout
    assert (REPO_ROOT / "outputs" / "quick" / "SUMMARY.md").is_file()
    assert {p.name: p.read_bytes() for p in figures.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("notebook, not_kept, left_out", [
    ("clip", '"dataset": "fashion_mnist"', ["Fashion-MNIST rows", "Table 1: robust"]),
    ("lipschitz_loss", '"dataset": "cifar10"', ["cifar10 rows", "Table 1", "Section 7", "claims"]),
])
def test_the_quick_check_re_derives_the_parts_whose_nets_are_kept(notebook, not_kept, left_out,
                                                                  tmp_path):
    """Issue 28: a notebook run normally (smoke), then as the quick check with one data set's nets
    gone: every number of the other parts comes out identical, and what was left out is named
    (the part, the skipped attacks, the tables that read the missing nets). About 1 min each."""
    from lipcore.summary import compare
    env = {**os.environ, "LIPCORE_PROFILE": "smoke", "LIPCORE_CACHE": str(tmp_path / "cache"),
           "LIPCORE_PROGRESS": "0", "LIPCORE_GRID_ADDRESS": "serial", "MPLBACKEND": "Agg",
           "LIPCORE_NET_LOG": str(tmp_path / "nets.jsonl")}

    def run(out, **extra):
        done = subprocess.run([sys.executable, "-m", "papermill", f"{notebook}.ipynb",
                               str(tmp_path / f"{out}.ipynb"), "-p", "out_dir", str(tmp_path / out),
                               "--kernel", "python3"], cwd=REPO_ROOT / "notebooks", text=True,
                              capture_output=True, env={**env, **extra}, timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]
    run("full")
    gone = {e["key"] for e in map(json.loads, (tmp_path / "nets.jsonl").read_text().splitlines())
            if not_kept in e["net"]}
    assert gone, f"no net of {not_kept} was logged"
    for key in gone:
        (tmp_path / "cache" / f"{key}.pt").unlink()
    run("quick", LIPCORE_NO_TRAIN="1")
    summary = compare(tmp_path / "full" / notebook, tmp_path / "quick" / notebook)
    assert summary["identical"] > 0 and summary["different"] == 0, summary["differences"]
    skipped = json.loads((tmp_path / "quick" / notebook / "results.json").read_text())
    assert [s["what"] for s in skipped["not_rederived"]] == left_out
