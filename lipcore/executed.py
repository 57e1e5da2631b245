"""Executed notebooks as they are kept: what a reader needs (text, tables, figures), no progress bars.

A papermill run records every redraw of a tqdm bar as its own stderr output: thousands of them,
which show as blank boxes in a rendered page. :func:`strip_progress` keeps of each stderr output
only the lines a terminal would still show and that are not bars (a warning stays), and drops the
output when nothing is left. It changes no number: stdout, results and figures are untouched.
Run ``python -m lipcore.executed SRC [DST]`` to clean a notebook (in place without ``DST``);
reproduce.sh saves every executed copy through it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")             # cursor moves tqdm uses between bars
BAR = re.compile(r"\d+%\|.*\||it/s\]|s/it\]|\?it/s")       # a tqdm bar, full or just started


def _kept_lines(text: str) -> str:
    """``text`` as a terminal leaves it (each line's last carriage-return segment), without bars
    and blank lines."""
    lines = (ANSI.sub("", line).split("\r")[-1] for line in text.split("\n"))
    return "".join(f"{line}\n" for line in lines if line.strip() and not BAR.search(line))


def strip_progress(nb: nbformat.NotebookNode) -> int:
    """Remove progress-bar output from every code cell of ``nb`` in place; returns how many
    outputs were dropped. Only stderr streams are touched."""
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                text = _kept_lines(out.text)
                if not text:
                    dropped += 1
                    continue
                out.text = text
            kept.append(out)
        cell.outputs = kept
    return dropped


def save_clean(src: str | Path, dst: str | Path | None = None) -> int:
    """Write ``src`` without its progress output to ``dst`` (default: over ``src``)."""
    nb = nbformat.read(src, as_version=4)
    dropped = strip_progress(nb)
    nbformat.write(nb, dst or src)
    return dropped


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m lipcore.executed SRC.ipynb [DST.ipynb]")
    n = save_clean(*sys.argv[1:])
    print(f"{sys.argv[-1]}: {n} progress outputs dropped")
