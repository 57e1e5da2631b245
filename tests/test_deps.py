"""Issue 28: model cache keys cover every lipcore file a net depends on and the library versions
that matter; the quick check loads nets instead of training them and says where each came from."""
import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from lipcore import cache, deps
from lipcore.cache import NotTrained, cache_key, cached

ROOT = Path(__file__).resolve().parents[1]


def trainer(config):
    return config


def test_closure_follows_imports_but_not_unrelated_modules():
    files = deps.source_files("lipcore.trainers.admm")
    for needed in ("lipcore/trainers/admm.py", "lipcore/trainers/standard.py",
                   "lipcore/estimators/lipsdp.py", "lipcore/progress.py",
                   "lipcore/__init__.py", "lipcore/trainers/__init__.py"):
        assert needed in files
    assert not any(f.startswith("lipcore/lessons/") for f in files)
    assert "lipcore/report.py" not in files and "lipcore/cache.py" not in files
    assert {"cvxpy", "scs", "clarabel", "torch", "numpy"} <= set(deps.library_versions(
        "lipcore.trainers.admm"))
    assert "lipcore.counterexample" in deps.notebook_modules(
        ROOT / "notebooks" / "lipsdp_counterexample.ipynb")


def _fresh_copy(tmp_path, monkeypatch) -> Path:
    package = tmp_path / "lipcore"
    shutil.copytree(deps.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(deps, "PACKAGE_DIR", package)
    monkeypatch.setattr(deps, "REPO_ROOT", tmp_path)
    _clear()
    return package


def _clear():
    for cached_function in (deps.closure, deps.fingerprint, deps.lazy_exports):
        cached_function.cache_clear()


def test_fingerprint_changes_with_a_dependency_and_a_library_version_only(tmp_path, monkeypatch):
    package = _fresh_copy(tmp_path, monkeypatch)
    try:
        before = deps.fingerprint("lipcore.trainers.admm")
        (package / "lessons" / "balls.py").write_text("# unrelated\n", "utf-8")
        deps.fingerprint.cache_clear()
        assert deps.fingerprint("lipcore.trainers.admm") == before
        with open(package / "estimators" / "lipsdp.py", "a") as f:
            f.write("\n# a comment changes nothing a net computes\n")
        deps.fingerprint.cache_clear()
        assert deps.fingerprint("lipcore.trainers.admm") == before
        with open(package / "estimators" / "lipsdp.py", "a") as f:
            f.write("\nCHANGED = 1  # a change in the bound ADMM calls\n")
        deps.fingerprint.cache_clear()
        changed = deps.fingerprint("lipcore.trainers.admm")
        assert changed != before
        real = deps.importlib.metadata.version
        monkeypatch.setattr(deps.importlib.metadata, "version",
                            lambda lib: "0.0-other" if lib == "scs" else real(lib))
        deps.fingerprint.cache_clear()
        assert deps.fingerprint("lipcore.trainers.admm") != changed
    finally:
        _clear()


def test_a_lazy_package_counts_only_the_submodules_of_the_names_taken():
    """attacks, estimators and trainers attach their names lazily: ``from lipcore.attacks import
    pgd_l2`` runs attacks/pgd.py, not the ensemble; taking the package itself may reach all."""
    import ast
    def imported(code):
        return deps._imports(ast.parse(code), "lipcore")[0]
    assert imported("from lipcore.attacks import pgd_l2") == {"lipcore.attacks",
                                                             "lipcore.attacks.pgd"}
    assert imported("from .estimators import lipsdp, naive_bound") == {
        "lipcore.estimators", "lipcore.estimators.lipsdp", "lipcore.estimators.naive"}
    everything = {"lipcore.attacks", *(f"lipcore.attacks.{m}" for m in
                                       ("ensemble", "noise", "pgd", "sweep"))}
    assert imported("import lipcore.attacks") == everything
    assert imported("from lipcore import attacks") >= everything
    for package in ("lipcore.attacks", "lipcore.estimators", "lipcore.trainers"):
        loaded = importlib.import_module(package)
        for name, module in deps.lazy_exports(package).items():     # each name is where it says
            assert getattr(loaded, name) is vars(importlib.import_module(module))[name]


@pytest.mark.parametrize("notebook", ["clip", "crm_liplt", "lipschitz_loss", "pauli_admm"])
def test_a_change_to_evaluation_code_keeps_every_trained_net_while_training_code_does_not(
        notebook, tmp_path, monkeypatch):
    """Issue 31: the attacks, certificates and the audit change often; a net's key covers only
    the code its training runs (lipcore.experiments.training), so such a change re-evaluates kept
    nets instead of retraining them, while a change to a trainer still retrains."""
    module = f"lipcore.experiments.training.{notebook}"
    files = deps.source_files(module)
    for evaluation in ("lipcore/attacks/ensemble.py", "lipcore/attacks/sweep.py",
                       "lipcore/certify.py", "lipcore/audit.py", f"lipcore/experiments/{notebook}.py"):
        assert evaluation not in files
    package = _fresh_copy(tmp_path, monkeypatch)
    try:
        before = deps.fingerprint(module)
        for evaluation in ("attacks/ensemble.py", "certify.py", f"experiments/{notebook}.py"):
            with open(package / evaluation, "a") as f:
                f.write("\nEVALUATION_CHANGED = 1\n")
        _clear()
        assert deps.fingerprint(module) == before
        with open(package / "trainers" / "standard.py" if notebook != "crm_liplt" else
                  package / "trainers" / "crm.py", "a") as f:
            f.write("\nTRAINING_CHANGED = 1\n")
        _clear()
        assert deps.fingerprint(module) != before
    finally:
        _clear()


def test_comments_docstrings_and_blank_lines_are_not_code_but_everything_else_is():
    source = ('''"""Module doc."""\nimport math  # why\n\n\nclass A:\n    """Class\n    doc."""\n'''
              '''    def f(self, x):\n        "doc"\n        return "# not a comment" + x\n''')
    code = deps.code_text(source)
    assert code == ('import math\nclass A:\n    def f(self, x):\n'
                    '        return "# not a comment" + x\n')
    assert deps.code_text(source.replace("Class\n    doc.", "Other words")) == code
    assert deps.code_text(source.replace("# why", "# because")) == code
    assert deps.code_text(source.replace("+ x", "+ x * 2")) != code
    # a string that is not a docstring, or a docstring sharing its line with code, counts
    assert deps.code_text('x = 1\n"doc"\n') != deps.code_text('x = 1\n"other"\n')
    assert deps.code_text('def f(): "a"; return 1\n') != deps.code_text('def f(): "b"; return 1\n')
    # blank lines and trailing spaces inside a string are its value
    assert deps.code_text('x = """a\n\nb"""\n') != deps.code_text('x = """a\nb"""\n')
    assert deps.code_text('x = """a  \nb"""\n') != deps.code_text('x = """a\nb"""\n')
    assert deps.code_text('x = f"""{1}\n\n"""\n') != deps.code_text('x = f"""{1}\n"""\n')


def test_a_docstring_edit_keeps_the_key_and_a_net_stored_under_the_byte_form_is_found(
        tmp_path, monkeypatch):
    """Keys read the code without comments and docstrings; a net stored while keys hashed the
    files' bytes is found under that form and stored under its key, so it survives the next
    docstring edit."""
    package = _fresh_copy(tmp_path / "src", monkeypatch)
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "none")
    module = "lipcore.experiments.training.pauli_admm"
    try:
        before, raw_before = deps.fingerprint(module), deps.fingerprint(module, raw=True)
        assert before != raw_before
        admm = package / "trainers" / "admm.py"
        admm.write_text(admm.read_text().replace('"""', '"""Reworded. ', 1))
        _clear()
        assert deps.fingerprint(module) == before
        assert deps.fingerprint(module, raw=True) != raw_before
    finally:
        _clear()
    key = cache_key({"lr": 0.1}, "d", 0, trainer)
    key.byte_key = "b" * 24
    (tmp_path / "cache").mkdir()
    torch.save({"w": torch.full((1,), 7.0)}, tmp_path / "cache" / f"{key.byte_key}.pt")
    assert cached(key, lambda: pytest.fail("trained"))["w"].item() == 7.0
    assert (tmp_path / "cache" / f"{key}.pt").read_bytes() == \
        (tmp_path / "cache" / f"{key.byte_key}.pt").read_bytes()          # the same file
    (tmp_path / "cache" / f"{key.byte_key}.pt").unlink()
    assert cached(key, lambda: pytest.fail("trained"))["w"].item() == 7.0


def test_key_carries_recipe_and_legacy_form():
    a = cache_key({"lr": 0.1}, "d", 0, trainer)
    b = cache_key({"lr": 0.1}, "d", 0, trainer)
    assert a == b and a.recipe == b.recipe and a.recipe != a and a.legacy != a
    assert cache_key({"lr": 0.2}, "d", 0, trainer).recipe != a.recipe
    assert "seed 0" in a.describe


def test_quick_check_loads_older_nets_and_refuses_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(cache, "SHIPPED", shipped)
    log = tmp_path / "nets.jsonl"
    monkeypatch.setenv("LIPCORE_NET_LOG", str(log))
    key = cache_key({"lr": 0.1}, "d", 0, trainer)
    stored = cached(key, lambda: {"w": torch.ones(2)})             # trained, with provenance
    assert "_made" not in stored
    raw = cache.safe_load(tmp_path / "cache" / f"{key}.pt")
    assert raw["_made"]["recipe"] == key.recipe

    # ship it, then ask for the same recipe under another code version: only the quick check
    # may use it, and it says so
    cache.ship(tmp_path / "cache", shipped)
    index = json.loads((shipped / cache.INDEX).read_text())
    assert index[f"{key}.pt"]["recipe"] == key.recipe
    newer = cache.CacheKey("0" * 24)
    newer.recipe, newer.legacy, newer.describe = key.recipe, "1" * 24, "the same net, newer code"
    monkeypatch.setenv("LIPCORE_NO_TRAIN", "1")
    assert torch.equal(cached(newer, lambda: pytest.fail("the quick check trained"))["w"],
                       torch.ones(2))
    other = cache_key({"lr": 0.3}, "d", 0, trainer)
    with pytest.raises(NotTrained, match="lr"):
        cached(other, lambda: pytest.fail("the quick check trained"))
    sources = [json.loads(line)["source"] for line in log.read_text().splitlines()]
    assert sources[0] == "trained" and "older code" in sources[1]
    from lipcore.summary import net_sources
    assert net_sources(tmp_path) == {"trained": 1, "trained by older code": 1}


def test_quick_check_finds_a_net_stored_under_its_legacy_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "none")
    key = cache_key({"lr": 0.1}, "d", 0, trainer)
    torch.save({"w": torch.zeros(1)}, tmp_path / f"{key.legacy}.pt")
    monkeypatch.setenv("LIPCORE_NO_TRAIN", "1")
    assert torch.equal(cached(key, lambda: pytest.fail("trained"))["w"], torch.zeros(1))
    monkeypatch.delenv("LIPCORE_NO_TRAIN")
    assert cached(key, lambda: {"w": torch.ones(1)})["w"].item() == 1.0   # a normal run retrains


def test_missing_lists_the_logged_nets_the_quick_check_cannot_load(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "none")
    log = tmp_path / "nets.jsonl"
    monkeypatch.setenv("LIPCORE_NET_LOG", str(log))
    kept = cache_key({"lr": 0.1}, "d", 0, trainer)
    cached(kept, lambda: {"w": torch.ones(1)})
    gone = cache_key({"lr": 0.2}, "d", 0, trainer)
    cached(gone, lambda: {"w": torch.ones(1)})
    (tmp_path / "cache" / f"{gone}.pt").unlink()
    assert cache.missing([json.loads(line) for line in log.read_text().splitlines()]) == [str(gone)]
    # the command stops a notebook only when none of its nets is here (then no part can run)
    import subprocess
    import sys
    command = [sys.executable, "-m", "lipcore.cache", "missing", str(log)]
    some = subprocess.run(command, capture_output=True, text=True)
    assert some.returncode == 0 and "1 of 2 net(s)" in some.stdout
    (tmp_path / "cache" / f"{kept}.pt").unlink()
    assert subprocess.run(command, capture_output=True, text=True).returncode == 3


def test_summary_names_a_notebook_the_quick_check_could_not_re_derive(tmp_path):
    import nbformat
    from lipcore import summary
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("error", ename="NotTrained", evalue="no net for row A",
                                           traceback=[])]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "run.ipynb")
    out = summary.skipped(tmp_path / "clip", summary.not_trained_reason(tmp_path / "run.ipynb"))
    assert out["note"] == "not re-derived: no net for row A"
    assert "not re-derived: no net for row A" in "\n".join(summary.summary_lines([out]))
