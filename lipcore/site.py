"""figures/site/: a small static HTML book of the executed notebooks and REPORT.md, built offline.

Each committed run keeps its executed notebook as ``figures/<name>/<name>.ipynb`` (outputs and
images embedded; reproduce.sh copies it there). This module renders those with nbconvert and
REPORT.md with mistune (both come with JupyterLab, and neither downloads anything at build time),
and writes an index with a table of contents; the stylesheet every notebook page shares is written
once (``notebook.css``). Run ``python -m lipcore.site [FIGURES_DIR]``;
reproduce.sh does it after the report.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import mistune
from nbconvert import HTMLExporter

STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
         "line-height:1.5}table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid "
         "#ccc;padding:.2rem .4rem}code{background:#f4f4f4}")


def executed_notebooks(figures_dir: Path) -> list[Path]:
    """``<name>/<name>.ipynb`` below ``figures_dir``, in name order."""
    return sorted(p for p in figures_dir.glob("*/*.ipynb") if p.stem == p.parent.name)


def _title(notebook: Path) -> str:
    """The notebook's first markdown heading, else its name."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            match = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.MULTILINE)
            if match:
                return match.group(1).strip()
    return notebook.stem


STYLE_BLOCK = re.compile(r"<style[^>]*>.*?</style>\s*", re.S)
SHARED_CSS = "notebook.css"


def _share_styles(pages: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The stylesheet blocks that nbconvert inlines into every page (about 260 kB each), moved
    into one file: returns its text and the pages, each linking it where its first block was."""
    blocks = [STYLE_BLOCK.findall(page) for page in pages.values()]
    common = [b for b in blocks[0] if all(b in other for other in blocks[1:])]
    link = f'<link rel="stylesheet" href="{SHARED_CSS}">\n'
    linked = {}
    for name, page in pages.items():
        first = min(page.index(b) for b in common)
        for b in common:
            page = page.replace(b, "", 1)
        linked[name] = page[:first] + link + page[first:]
    css = "\n".join(re.sub(r"^<style[^>]*>|</style>\s*$", "", b) for b in common)
    return css, linked


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _report_html(report: Path) -> str:
    """REPORT.md as HTML, with its links (relative to figures/) made relative to site/."""
    text = re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", r"](../\1)", report.read_text())
    return mistune.html(text)


def build_site(figures_dir: str | Path, site_dir: str | Path | None = None) -> Path:
    """Render every executed notebook and REPORT.md under ``figures_dir`` into ``site_dir``
    (default ``figures_dir/site``) with an index.html; returns the index's path. The folder is
    built beside the old one and swapped in only when complete."""
    figures_dir = Path(figures_dir)
    site = Path(site_dir) if site_dir is not None else figures_dir / "site"
    notebooks = executed_notebooks(figures_dir)
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks (<name>/<name>.ipynb) under {figures_dir}; "
                                "run ./reproduce.sh first")
    staging = site.with_name(f".{site.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    exporter = HTMLExporter(template_name="lab")
    pages = {nb.stem: exporter.from_filename(str(nb))[0] for nb in notebooks}
    css, pages = _share_styles(pages)
    (staging / SHARED_CSS).write_text(css)
    entries = []
    for nb in notebooks:
        (staging / f"{nb.stem}.html").write_text(pages[nb.stem])
        results = nb.parent / "results.json"
        run = json.loads(results.read_text()) if results.is_file() else {}
        meta = ", ".join(f"{k} {run[k]}" for k in ("profile", "device", "git_commit") if k in run)
        entries.append(f"<li><a href='{nb.stem}.html'>{html.escape(_title(nb))}</a> "
                       f"<small>({html.escape(nb.stem)}; {html.escape(meta)})</small></li>")
    report = figures_dir / "REPORT.md"
    if report.is_file():
        (staging / "report.html").write_text(_page("Reproduction report", _report_html(report)))
        entries.append("<li><a href='report.html'>Reproduction report</a>: every number the "
                       "papers report beside the reproduced one</li>")
    index = ("<h1>lipcore: results</h1><p>The executed notebooks of the committed runs, with "
             "their prose, tables and figures, and the reproduction report.</p><ol>"
             + "".join(entries) + "</ol>")
    (staging / "index.html").write_text(_page("lipcore: results", index))
    old = site.with_name(f".{site.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if site.exists():
        site.rename(old)
    staging.rename(site)
    shutil.rmtree(old, ignore_errors=True)
    return site / "index.html"


if __name__ == "__main__":
    print(build_site(sys.argv[1] if len(sys.argv) > 1 else "figures"))
