"""Notebook parameters, atomic outputs, results.json, comparison.csv and REPORT.md."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lipcore.report import build_report  # noqa: E402
from lipcore.run import COMPARISON_COLUMNS, resolve_device, resolve_profile, start_run  # noqa

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
