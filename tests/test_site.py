"""The committed results: every notebook has an executed copy with its outputs, and the HTML book
builds offline from them with every link and figure in place."""
import json
import re
from pathlib import Path

import pytest

from lipcore.site import build_site, executed_notebooks

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "figures"
MAX_NOTEBOOK_BYTES = 5 * 2 ** 20         # executed notebooks embed their figures; keep them small


def test_every_notebook_has_an_executed_copy_with_outputs_and_images():
    sources = sorted(p.stem for p in (ROOT / "notebooks").glob("**/*.ipynb"))   # lessons too
    executed = {p.stem: p for p in executed_notebooks(FIGURES)}
    assert sorted(executed) == sources
    for name, path in executed.items():
        assert path.stat().st_size <= MAX_NOTEBOOK_BYTES, f"{name}: executed notebook too large"
        cells = json.loads(path.read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not any(o.get("output_type") == "error" for o in outputs), name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"


def test_source_notebooks_stay_output_free():
    for path in (ROOT / "notebooks").glob("**/*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), path.name


def test_the_site_builds_from_the_committed_outputs_and_every_link_resolves(tmp_path):
    index = build_site(FIGURES, tmp_path / "site")
    site = index.parent
    pages = set(re.findall(r"href='([^']+\.html)'", index.read_text())) - {"index.html"}
    assert {f"{p.stem}.html" for p in executed_notebooks(FIGURES)} | {"report.html"} == pages
    for page in pages:
        text = (site / page).read_text()
        assert len(text) > 1000
        for link in re.findall(r'(?:href|src)="([^"#:]+)"', text):     # relative links only
            assert (FIGURES / "site" / link).resolve().exists(), f"{page} links to missing {link}"
    report = (site / "report.html").read_text()
    assert "<table>" in report and ".png" in report
    shared = (site / "notebook.css").read_text()
    assert len(shared) > 10_000                         # nbconvert's stylesheet, stored once
    for nb in executed_notebooks(FIGURES):
        page = (site / f"{nb.stem}.html").read_text()
        assert 'href="notebook.css"' in page and shared[:2000] not in page


def test_building_without_executed_notebooks_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce.sh"):
        build_site(tmp_path)


def test_every_committed_figure_exists_as_png_and_pdf():
    for png in FIGURES.glob("*/*.png"):
        assert png.with_suffix(".pdf").is_file(), f"{png} has no PDF twin"


def test_executed_notebooks_keep_no_progress_bars_but_keep_warnings():
    """Issue 28: progress bars are dropped when the executed copy is saved (and were stripped from
    the committed ones); a warning on stderr stays, and no stdout or figure is touched."""
    import nbformat

    from lipcore.executed import strip_progress
    for path in executed_notebooks(FIGURES):
        assert strip_progress(nbformat.read(path, as_version=4)) == 0, f"{path.name} has bars"
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=text) for text in (
        "\repochs:  50%|█████     | 1/2 [00:01<00:01, 1.0it/s]", "\r          ", "\x1b[A", "\n",
        "\rbar:   0%|          | 0/9 [00:00<?, ?it/s]\nUserWarning: unsound\n")]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="\n"))
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert strip_progress(nb) == 4
    assert [o.text for o in nb.cells[0].outputs] == ["UserWarning: unsound\n", "\n"]


def test_every_lesson_page_has_its_main_control_working_without_a_kernel():
    """Issue 30: each executed lesson carries, beside its widget, the figure pre-rendered at each
    value of its main control (reproduce.sh runs lessons with LIPCORE_BOOK_FRAMES=1), at least
    two of them and no two alike; the book shows that view (tests/test_book_browser.py moves it)."""
    for path in executed_notebooks(FIGURES):
        if not path.stem.startswith("lesson"):
            continue
        views = [o["data"]["text/html"] for c in json.loads(path.read_text())["cells"]
                 for o in c.get("outputs", []) if "lipcore-frames" in
                 "".join(o.get("data", {}).get("text/html", ""))]
        assert views, f"{path.stem}: no kernel-free control; ./reproduce.sh --only {path.stem}"
        for view in views:
            frames = re.findall(r"src='(data:image/png;base64,[^']+)'", "".join(view))
            assert len(frames) >= 2 and len(set(frames)) == len(frames), path.stem
