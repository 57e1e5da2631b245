"""figures/site/: a small static HTML book of the executed notebooks and REPORT.md, built offline.

Each committed run keeps its executed notebook as ``figures/<name>/<name>.ipynb`` (outputs and
images embedded; reproduce.sh copies it there). This module renders those with nbconvert and
REPORT.md with mistune (both come with JupyterLab, and neither downloads anything at build time),
and writes an index with a table of contents; the stylesheet every notebook page shares is written
once (``notebook.css``). Run ``python -m lipcore.site [FIGURES_DIR]``;
reproduce.sh does it after the report.

The book reads offline (``file://``, no network): TeX is rendered to MathML at build time
(latex2mathml), which browsers draw natively, and the CDN scripts nbconvert links (MathJax,
require.js, mermaid) are left out. Every page has a contents bar with previous/next; progress-bar
output is dropped; the machine paths a run was given (data and output folders) read as
``$LIPCORE_DATA`` and ``figures``.

Widgets need a kernel, so a widget output shows here as the kernel-free view its bundle carries
(a lesson's main control over pre-rendered frames: lipcore.lessons.show.explore, in runs with
``LIPCORE_BOOK_FRAMES=1`` as reproduce.sh makes them), else as a note to open JupyterLab. Style
blocks inside the body (the contents bar's, such a view's) move into the head, where HTML allows
them.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import mistune
import nbformat
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert import HTMLExporter

from .executed import strip_progress

STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
         "line-height:1.5}table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid "
         "#ccc;padding:.2rem .4rem}code{background:#f4f4f4}")
NAV_STYLE = (".lipcore-nav{font:14px/1.5 system-ui,sans-serif;background:#f6f8fa;border-bottom:"
             "1px solid #ddd;padding:.4rem 1rem;margin:0 0 1rem}.lipcore-nav a{margin-right:.8rem}"
             ".lipcore-nav .here{font-weight:bold}")
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = nbformat.v4.new_output("display_data", data={"text/markdown": (
    "*Interactive controls here: open this notebook in JupyterLab to use them. The figure above "
    "shows the same thing at a few settings.*")})
FRAMES_CLASS = "lipcore-frames"     # a kernel-free view (lipcore.lessons.show.frames_html)
CDN_SCRIPT = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>\s*')
MATHJAX_CONFIG = re.compile(r'<script type="text/x-mathjax-config">.*?</script>\s*', re.S)
MODULE_SCRIPT = re.compile(r'<script type="module">.*?</script>\s*', re.S)
TAG = re.compile(r"(<[^>]*>)|([^<]+)")
VERBATIM = re.compile(r"(<(pre|code|script|style|math)\b.*?</\2>)", re.S)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?=\S)([^$]{0,400}?\S)\$(?![\w$])")  # may wrap a line


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
    return styles_to_head(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _mathml(tex: str, display: bool) -> str:
    return tex_to_mathml(html.unescape(tex).strip(), display="block" if display else "inline")


def render_math(page: str) -> str:
    """Every $...$ and $$...$$ outside code, scripts and styles as MathML (drawn by the browser,
    offline), so no raw TeX is left for a CDN script to typeset."""
    parts = VERBATIM.split(page)
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 0:               # between verbatim elements (split keeps 2 groups): only
            part = TAG.sub(lambda m: m.group(1) or _math_text(m.group(2)), part)   # text, not tags
        if i % 3 != 2:
            out.append(part)
    return "".join(out)


def _math_text(text: str) -> str:
    text = DISPLAY_MATH.sub(lambda m: _mathml(m.group(1), True), text)
    return INLINE_MATH.sub(lambda m: _mathml(m.group(1), False), text)


def offline(page: str) -> str:
    """The page without the CDN scripts nbconvert links, with its math rendered."""
    page = CDN_SCRIPT.sub("", page)
    page = MATHJAX_CONFIG.sub("", page)
    if "class=\"jp-Mermaid" not in page:          # no diagram for the script to draw
        page = MODULE_SCRIPT.sub("", page)
    return render_math(page)


def clean_notebook(path: Path) -> nbformat.NotebookNode:
    """The executed notebook as a book shows it: no progress-bar output, and the folders the run
    was given (its injected ``data_dir`` and ``out_dir``) named as a reader would set them."""
    nb = nbformat.read(path, as_version=4)
    replacements = {}
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            for name, shown in (("data_dir", "$LIPCORE_DATA"), ("out_dir", "figures")):
                match = re.search(rf'^{name} = "([^"]+)"', cell.source, re.M)
                if match:
                    replacements[match.group(1)] = shown
    nb.metadata.pop("widgets", None)          # widget state: its renderer comes from a CDN
    strip_progress(nb)                        # a notebook saved before reproduce.sh cleaned it
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [_without_widget(o) for o in cell.outputs]
    text = nbformat.writes(nb)
    for raw, shown in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(raw, shown)
    return nbformat.reads(text, as_version=4)


def _without_widget(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A widget output as the book shows it: the kernel-free view its bundle carries (the
    widget's text/plain repr dropped), else the note to open JupyterLab."""
    data = output.get("data", {})
    if WIDGET not in data:
        return output
    if FRAMES_CLASS not in data.get("text/html", ""):
        return WIDGET_NOTE
    output.data = {"text/html": data["text/html"]}
    return output


def styles_to_head(page: str) -> str:
    """The page with every style block of its body moved to the end of its head."""
    at = page.index("<body")
    blocks = STYLE_BLOCK.findall(page, at)
    body = STYLE_BLOCK.sub("", page[at:])
    head = page[:at].replace("</head>", "".join(b.strip() + "\n" for b in blocks) + "</head>", 1)
    return head + body


def _nav(entries: list[tuple[str, str]], here: str) -> str:
    """The contents bar: the book's pages in order, this one in bold, then previous / next."""
    names = [name for name, _ in entries]
    i = names.index(here) if here in names else -1
    links = [f"<a href='index.html'{' class=here' if here == 'index' else ''}>Contents</a>"]
    links += [f"<a href='{html.escape(n, quote=True)}.html' title='{html.escape(t, quote=True)}'"
              f"{' class=here' if n == here else ''}>{html.escape(n)}</a>" for n, t in entries]
    if i > 0:
        links.append(f"<a href='{html.escape(names[i - 1], quote=True)}.html' rel='prev'>"
                     "&larr; previous</a>")
    if 0 <= i < len(names) - 1:
        links.append(f"<a href='{html.escape(names[i + 1], quote=True)}.html' rel='next'>"
                     "next &rarr;</a>")
    return f"<style>{NAV_STYLE}</style><nav class='lipcore-nav'>{' '.join(links)}</nav>"


def _with_nav(page: str, nav: str) -> str:
    at = page.index(">", page.index("<body")) + 1
    return page[:at] + nav + page[at:]


def _report_html(report: Path) -> str:
    """REPORT.md as HTML, with its links (relative to figures/) made relative to site/ and its
    links to executed notebooks pointed at their pages in this book."""
    text = re.sub(r"\]\(([\w-]+)/\1\.ipynb\)", r"](\1.html)", report.read_text())
    text = re.sub(r"\]\((?!https?:|#|/|[\w-]+\.html\))([^)]+)\)", r"](../\1)", text)
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
    pages = {nb.stem: offline(exporter.from_notebook_node(clean_notebook(nb))[0])
             for nb in notebooks}
    css, pages = _share_styles(pages)
    (staging / SHARED_CSS).write_text(css)
    report = figures_dir / "REPORT.md"
    order = [(nb.stem, _title(nb)) for nb in notebooks]
    if report.is_file():
        order.append(("report", "Reproduction report"))
    papers, lessons = [], []
    for nb in notebooks:
        (staging / f"{nb.stem}.html").write_text(
            styles_to_head(_with_nav(pages[nb.stem], _nav(order, nb.stem))))
        lesson = nb.stem.startswith("lesson")
        results = nb.parent / "results.json"
        run = json.loads(results.read_text()) if results.is_file() else {}
        controls = ("main control here, every control in JupyterLab" if FRAMES_CLASS in
                    pages[nb.stem] else "controls in JupyterLab; here at a few settings")
        meta = controls if lesson else ", ".join(
            f"{k} {run[k]}" for k in ("profile", "device", "git_commit") if k in run)
        (lessons if lesson else papers).append(
            f"<li><a href='{html.escape(nb.stem, quote=True)}.html'>{html.escape(_title(nb))}</a> "
            f"<small>({html.escape(nb.stem)}; {html.escape(meta)})</small></li>")
    if report.is_file():
        (staging / "report.html").write_text(_page(
            "Reproduction report", _nav(order, "report") + _report_html(report)))
        papers.append("<li><a href='report.html'>Reproduction report</a>: every number the "
                      "papers report beside the reproduced one</li>")
    index = ("<h1>lipcore: results</h1><p>The executed notebooks of the committed runs, with "
             "their prose, tables and figures, and the reproduction report; then the lessons, "
             "one idea each.</p><h2>Papers</h2><ol>" + "".join(papers) + "</ol>"
             + ("<h2>Lessons</h2><ol>" + "".join(lessons) + "</ol>" if lessons else ""))
    (staging / "index.html").write_text(_page("lipcore: results", _nav(order, "index") + index))
    old = site.with_name(f".{site.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if site.exists():
        site.rename(old)
    staging.rename(site)
    shutil.rmtree(old, ignore_errors=True)
    return site / "index.html"


if __name__ == "__main__":
    print(build_site(sys.argv[1] if len(sys.argv) > 1 else "figures"))
