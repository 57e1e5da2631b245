"""Notebook parameters, atomic outputs, results.json, comparison.csv and REPORT.md."""
import importlib.metadata
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lipcore.report import build_report  # noqa: E402
from lipcore.run import COMPARISON_COLUMNS, cpu_model, resolve_device, resolve_profile, start_run  # noqa

REQUIRED = {"notebook", "profile", "device", "seed", "git_commit", "wall_seconds", "data"}


def test_unknown_profile_and_device_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        start_run("nb", profile="fast", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        start_run("nb", profile="smoke", device="tpu", out_dir=tmp_path)
    with pytest.raises(ValueError, match="seed must be an integer"):
        start_run("nb", profile="smoke", seed="1", out_dir=tmp_path)


def test_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LIPCORE_PROFILE", "smoke")
    assert resolve_profile(None) == "smoke"
    monkeypatch.delenv("LIPCORE_PROFILE")
    assert resolve_profile(None) == ("paper" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_is_an_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def _figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return fig


def test_finished_run_publishes_everything(tmp_path):
    run = start_run("nb", profile="smoke", device="cpu", seed=3, out_dir=tmp_path)
    assert run.budget(smoke=1, cpu=2, paper=3) == 1
    run.uses_data("mnist", "real")
    run.save_figure(_figure(), "fig_a")
    run.save_table(pd.DataFrame({"a": [1, 2]}), "table_a")
    run.compare("Table I", "Nom-NN", "accuracy", 96.65, 95.0, "%", "fewer epochs")
    run.finish(extra=1.5)
    out = tmp_path / "nb"
    for name in ("fig_a.png", "fig_a.pdf", "table_a.csv", "table_a.md", "comparison.csv",
                 "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert REQUIRED <= set(results) and results["data"] == {"mnist": "real"}
    assert results["profile"] == "smoke" and results["seed"] == 3 and results["extra"] == 1.5
    assert list(pd.read_csv(out / "comparison.csv").columns) == COMPARISON_COLUMNS
    assert not list(tmp_path.glob(".*"))                  # no staging leftovers


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path):
    first = start_run("nb", profile="smoke", out_dir=tmp_path)
    first.save_table(pd.DataFrame({"a": [1]}), "t")
    first.finish()
    before = (tmp_path / "nb" / "t.csv").read_text()
    second = start_run("nb", profile="smoke", out_dir=tmp_path)
    second.save_table(pd.DataFrame({"a": [2]}), "t")
    # ... the notebook fails here, before finish()
    assert (tmp_path / "nb" / "t.csv").read_text() == before
    assert (tmp_path / "nb" / "results.json").is_file()


def test_nan_reproduced_values_and_bad_data_labels_are_refused(tmp_path):
    run = start_run("nb", profile="smoke", out_dir=tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        run.compare("T", "r", "m", 1.0, float("nan"))
    with pytest.raises(ValueError, match="data source must be one of"):
        run.uses_data("cifar10", "fake")
    with pytest.raises(ValueError, match="missing"):
        run.budget(smoke=1)


def test_report_lists_every_number_with_its_deviation(tmp_path):
    run = start_run("nb", profile="smoke", out_dir=tmp_path)
    run.uses_data("cifar10", "synthetic")
    run.compare("Table 1", "CRM", "certified accuracy", 64.16, 60.0, "%")
    run.compare("Sec. II", "net", "smallest L", None, 1e-6)
    run.save_figure(_figure(), "fig_b")
    run.finish()
    text = build_report(tmp_path).read_text()
    assert "## nb" in text and "certified accuracy" in text and "-4.16" in text
    assert "-6.5%" in text and "Synthetic stand-in data" in text and "nb/fig_b.png" in text


def test_git_commit_ignores_fresh_outputs_but_not_code_changes(tmp_path):
    import subprocess

    from lipcore.run import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "out.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "figures" / "out.csv").write_text("b\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_data_the_paper_generates_is_not_called_a_synthetic_stand_in(tmp_path):
    run = start_run("toy", profile="smoke", out_dir=tmp_path)
    run.uses_data("pauli_2d", "generated")
    run.compare("Table I", "2D", "L", 1.0, 1.0)
    run.finish()
    text = build_report(tmp_path).read_text()
    assert "pauli_2d (generated)" in text and "Synthetic stand-in" not in text


def test_report_lists_the_claims_and_links_the_executed_notebook(tmp_path):
    run = start_run("nb", profile="smoke", out_dir=tmp_path)
    run.compare("T", "r", "m", 1.0, 1.0)
    run.finish(claims={"A beats B": True, "B beats A": False})
    (tmp_path / "nb" / "nb.ipynb").write_text("{}")
    text = build_report(tmp_path).read_text()
    assert "* holds: A beats B" in text and "* **does not hold**: B beats A" in text
    assert "(nb/nb.ipynb)" in text


def _result(figures, name, profile, profiles=None, device="cpu (x86_64, 2 cores)", rows=()):
    run = start_run(name, profile=profile, device="cpu", out_dir=figures,
                    part_profiles={k: v for k, v in (profiles or {}).items() if v != profile})
    if profiles:
        run.profiles(list(profiles))
    for i, value in enumerate(rows):
        run.compare("T", f"r{i}", "acc", None, value, "%")
    run.finish()
    return figures / name


def test_the_manifest_records_each_setting_and_reruns_it_unless_told_otherwise(tmp_path):
    """Issue 28: no options re-run the recorded setting; a lower profile goes beside, never over."""
    from lipcore.manifest import plan, recorded, write_manifest
    _result(tmp_path, "mixed_nb", "cpu", {"MNIST": "paper", "Fashion-MNIST": "cpu"})
    _result(tmp_path, "paper_nb", "paper")
    setting, parts = recorded(tmp_path / "mixed_nb")
    assert (setting.profile, setting.part_profiles) == ("cpu", {"MNIST": "paper"})
    assert parts == {"MNIST": "paper", "Fashion-MNIST": "cpu"} and setting.device == "cpu"
    again = plan("mixed_nb", tmp_path)
    assert again.out == tmp_path and again.setting.part_spec("mixed_nb") == "mixed_nb:MNIST=paper"
    lower = plan("mixed_nb", tmp_path, profile="cpu")
    assert lower.out == tmp_path / "variants" / "cpu" and "MNIST" in lower.note
    assert plan("paper_nb", tmp_path, profile="smoke").out == tmp_path / "variants" / "smoke"
    assert plan("mixed_nb", tmp_path, profile="paper").out == tmp_path      # only raises
    assert plan("paper_nb", tmp_path, profile="cpu", default_out=False).out == tmp_path
    assert plan("new_nb", tmp_path).setting.profile == "cpu"               # no record, no CUDA
    manifest = json.loads(write_manifest(tmp_path).read_text())["notebooks"]
    assert manifest["mixed_nb"]["command"].endswith("--part-profile mixed_nb:MNIST=paper")
    assert manifest["paper_nb"]["profile"] == "paper"


def test_a_result_made_on_a_gpu_is_not_silently_rerun_on_a_cpu(tmp_path):
    from lipcore.manifest import plan
    folder = _result(tmp_path, "gpu_nb", "paper")
    results = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps(results | {"device": "cuda (H200)"}))
    with pytest.raises(SystemExit, match="--device cpu"):
        plan("gpu_nb", tmp_path, cuda=False)
    assert plan("gpu_nb", tmp_path, device="cpu").setting.device == "cpu"


def test_the_summary_sorts_numbers_into_identical_within_tolerance_and_different(tmp_path):
    from lipcore.summary import compare, summary_lines
    old = _result(tmp_path / "a", "nb", "cpu", rows=[90.0, 80.0, 70.0])
    new = _result(tmp_path / "b", "nb", "cpu", rows=[90.0, 80.0 * (1 + 1e-12), 71.0, 5.0])
    s = compare(old, new)
    assert (s["identical"], s["within_tolerance"], s["different"]) == (1, 1, 2)
    assert [(d["row"], d["old"], d["new"]) for d in s["differences"]] == [
        ("r2", 70.0, 71.0), ("r3", None, 5.0)]
    assert json.loads((new / "reproduction.json").read_text()) == s
    text = "\n".join(summary_lines([s]))
    assert "1 identical, 1 within tolerance, 2 different" in text and "| 70 | 71 |" in text
    assert "deterministic: bit-identical" in text
    assert "How close" in build_report(tmp_path / "b").read_text()


def test_results_record_the_cpu_and_libraries_and_the_summary_names_a_change(tmp_path):
    """Bounds moved 2e-6 between two CPUs for the same nets and code: a results file records the
    CPU model and library versions, and the summary names what differs between two runs."""
    from lipcore.summary import compare, summary_lines
    old = _result(tmp_path / "a", "nb", "cpu", rows=[90.0])
    new = _result(tmp_path / "b", "nb", "cpu", rows=[90.0])
    recorded = json.loads((new / "results.json").read_text())
    assert recorded["libraries"]["torch"] == importlib.metadata.version("torch")
    assert set(recorded["libraries"]) >= {"torch", "torchvision", "numpy", "cvxpy", "scs"}
    assert recorded["device"] == (f"cpu ({cpu_model()}, {os.cpu_count()} cores, "
                                  f"{torch.get_num_threads()} threads)")
    assert compare(old, new)["environment_changes"] == []
    edited = json.loads((old / "results.json").read_text())
    edited["device"] = "cpu (Other CPU, 2 cores)"
    edited["libraries"] = edited["libraries"] | {"torch": "0.0.1"}
    (old / "results.json").write_text(json.dumps(edited))
    s = compare(old, new)
    assert s["environment_changes"] == [
        f"device: cpu (Other CPU, 2 cores) -> {recorded['device']}",
        f"torch: 0.0.1 -> {recorded['libraries']['torch']}"]
    assert "environment differs: torch: 0.0.1 ->" in "\n".join(summary_lines([s]))


def test_what_a_quick_run_skips_is_named_in_its_results_and_summary(tmp_path, monkeypatch):
    """Issue 28: the quick check may skip a costly evaluation, but never silently: a row it
    left out counts as not re-derived only where an entry it recorded covers that row."""
    from lipcore.summary import compare, summary_lines

    def result(out, rows, skips=()):
        run = start_run("nb", profile="cpu", device="cpu", out_dir=out)
        for row, metric in rows:
            run.compare("T", row, metric, None, 90.0, "%")
        for what in skips:
            run.skip(what, "skipped")
        return run, run.finish()
    result(tmp_path / "a", [("A x", "acc"), ("A x", "robust"), ("B x", "acc"), ("C x", "acc")])
    monkeypatch.setenv("LIPCORE_NO_TRAIN", "1")
    run, results = result(tmp_path / "b", [("A x", "acc")], ["T: robust", "B rows"])
    assert run.quick and results["not_rederived"][0] == dict(what="T: robust", why="skipped")
    s = compare(tmp_path / "a" / "nb", tmp_path / "b" / "nb")
    assert (s["identical"], s["different"], s["not_rederived_numbers"]) == (1, 1, 2)
    assert [d["row"] for d in s["differences"]] == ["C x"]      # vanished, and nobody said why
    text = "\n".join(summary_lines([s]))
    assert "1 identical, 0 within tolerance, 1 different, 2 not re-derived" in text
    assert "not re-derived: B rows (skipped)" in text
    monkeypatch.delenv("LIPCORE_NO_TRAIN")
    assert not start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path / "c").quick
    from lipcore.summary import _covered                 # a whole table, named by its artifact
    row = pd.Series(dict(artifact="Table 1", row="ResNet-20 standard", metric="confidence"))
    assert _covered(row, [dict(what="Table 1", why="stand-in nets not kept")])
    assert not _covered(row, [dict(what="Table 2", why="")])


def test_the_quick_check_leaves_out_a_part_whose_nets_are_not_kept(tmp_path, monkeypatch):
    """Issue 28: a missing net stops only its own part in the quick check, and is named; in a
    normal run nothing is left out silently."""
    from lipcore.cache import NotTrained

    def fit(part):
        if part == "CIFAR-10":
            raise NotTrained("no net")
        return f"nets of {part}"
    run = start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path)
    with pytest.raises(NotTrained):
        run.fit_parts(["MNIST", "CIFAR-10"], fit)
    monkeypatch.setenv("LIPCORE_NO_TRAIN", "1")
    assert run.fit_parts(["MNIST", "CIFAR-10"], fit) == {"MNIST": "nets of MNIST"}
    assert [d["what"] for d in run.not_rederived] == ["CIFAR-10 rows"]
    assert "no net" in run.not_rederived[0]["why"]          # which net was lacking, said
    with pytest.raises(NotTrained, match="no part .* CIFAR-10: no net"):   # nothing to show
        run.fit_parts(["CIFAR-10"], fit)
    with pytest.raises(NotTrained, match="no net"):                   # the main table is missing
        run.fit_parts(["MNIST", "CIFAR-10"], fit, required=["CIFAR-10"])


def test_a_run_that_skipped_anything_never_replaces_committed_results(tmp_path, monkeypatch):
    """The quick check (or any run that named a skipped column) may write anywhere but the
    committed figures/: its results must never stand in for a full run's."""
    import lipcore.run as run_module
    monkeypatch.setattr(run_module, "COMMITTED_OUT", tmp_path / "figures")
    run = start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path / "figures")
    run.skip("T: robust", "skipped")
    with pytest.raises(RuntimeError, match="may not replace the committed results"):
        run.finish()
    assert not (tmp_path / "figures" / "nb").exists()
    assert not (tmp_path / "figures" / ".nb.partial").exists()     # nothing half-made is left
    monkeypatch.setenv("LIPCORE_NO_TRAIN", "1")            # refused before anything is touched
    for inside in ("figures", "figures/variants/smoke"):
        with pytest.raises(RuntimeError, match="may not write to"):
            start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path / inside)
    assert start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path / "quick").finish()
    skipping = start_run("nb", profile="cpu", device="cpu", out_dir=tmp_path / "elsewhere")
    skipping.skip("T: robust", "the strong attacks were skipped")
    skipping.finish()
    from lipcore.report import notebook_section        # REPORT.md says so, beside the numbers
    assert "Not a full run: it did not re-derive** T: robust (the strong attacks were skipped)" \
        in notebook_section(tmp_path / "elsewhere" / "nb")


def test_a_normal_reproduce_run_refuses_the_quick_checks_switch():
    """LIPCORE_NO_TRAIN=1 makes every notebook run as the quick check (run.quick: strong attacks
    skipped, parts without nets left out); left set in the shell, it would otherwise write such
    results to figures/. Only --quick may use it. LIPCORE_PYTHON points nowhere and --data at
    nothing, so the script can never get as far as running a notebook."""
    import os
    import subprocess

    def reproduce(*args):
        return subprocess.run(
            [str(Path(__file__).resolve().parent.parent / "reproduce.sh"), *args,
             "--data", "/nonexistent/data"], capture_output=True, text=True, timeout=60,
            env={**os.environ, "LIPCORE_NO_TRAIN": "1", "LIPCORE_PYTHON": "/nonexistent/python"})
    normal = reproduce("--only", "lipsdp_counterexample")
    assert normal.returncode != 0 and "LIPCORE_NO_TRAIN=1 is set" in normal.stderr
    assert "--quick" in normal.stderr
    quick = reproduce("--quick", "--only", "lipsdp_counterexample")
    assert "LIPCORE_NO_TRAIN" not in quick.stderr and "--data directory" in quick.stderr
    remote = reproduce("--quick", "--grid-address", "tcp://elsewhere:8786")  # would train there
    assert remote.returncode != 0 and "takes no --grid-address" in remote.stderr


def test_timings_are_held_to_a_stated_band_not_to_bits():
    from lipcore.summary import kind_of, within
    row = pd.Series(dict(artifact="T", row="r", metric="train_seconds", unit="s"))
    assert kind_of(row, on_gpu=False) == "timing"
    assert within(10.0, 19.0, "timing") and not within(10.0, 25.0, "timing")
    assert not within(1.0, 1.0 + 1e-6, "deterministic")


def test_report_marks_a_result_whose_code_changed_since_its_commit():
    """Issue 28: REPORT.md says plainly when a committed result predates a code change."""
    import subprocess
    from lipcore.report import code_changed_since
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=root,
                           capture_output=True, text=True)
    if head.returncode or first.returncode or not first.stdout.strip():
        pytest.skip("no git history here")
    assert code_changed_since(head.stdout.strip()[:12], "pauli_admm") == []
    assert "lipcore/certify.py" in code_changed_since(first.stdout.split()[0], "pauli_admm")
    assert code_changed_since(None, "pauli_admm") == []


def test_a_docstring_or_comment_edit_does_not_mark_a_result_stale():
    """Between eba7f50 and f54f95a, lipcore/estimators/liplt_sound.py changed in its comments
    and docstrings only: the crm_liplt result is not stale on its account."""
    import subprocess
    from lipcore.report import code_changed_since
    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(["git", "diff", "--name-only", "eba7f507974a", "f54f95a", "--",
                            "lipcore/estimators/liplt_sound.py"], cwd=root, capture_output=True,
                           text=True)
    if names.returncode or not names.stdout.strip():
        pytest.skip("this clone lacks the commits")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    changed = subprocess.run(["git", "diff", "--name-only", "f54f95a", "HEAD", "--",
                              "lipcore/estimators/liplt_sound.py"], cwd=root,
                             capture_output=True, text=True).stdout.strip()
    if changed or not head.stdout.strip():
        pytest.skip("liplt_sound.py changed after f54f95a")
    stale = code_changed_since("eba7f507974a", "crm_liplt")
    assert "lipcore/estimators/liplt_sound.py" not in stale and "lipcore/trace.py" in stale
