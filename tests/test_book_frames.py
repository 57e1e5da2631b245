"""Issue 30: a lesson's main control works in the book, with no kernel. In a run that makes the
book's copy (LIPCORE_BOOK_FRAMES=1, as reproduce.sh sets it) explore's output also carries the
figure pre-rendered at each value of its first control, the other controls held where they start;
the book shows that view in place of the widget, and a live run draws nothing extra."""
import re

import nbformat
import pytest

from lipcore.lessons import show
from lipcore.site import WIDGET, clean_notebook

widgets = pytest.importorskip("ipywidgets")
FRAME = re.compile(r"<img id='([^']+)' alt='([^']*)' src='(data:image/png;base64,[^']+)'>")


def _explore(calls):
    def draw(ax, slope=1.0, colour="k"):
        calls.append((slope, colour))
        ax.clear()
        ax.plot([0, 1], [0, slope], colour)
        ax.set_ylim(-3, 3)
        return {"slope": slope, "curve": [0, slope]}
    return show.explore(draw, figsize=(2.0, 1.5),
                        slope=widgets.SelectionSlider(options=[-2.0, -1.0, 0.5, 2.0], value=0.5),
                        colour=widgets.Dropdown(options=["k", "r"], value="r"))


def test_the_kernel_free_view_has_one_distinct_frame_per_option(monkeypatch):
    monkeypatch.setenv(show.FRAMES_ENV, "1")
    calls = []
    bundle = _explore(calls)._repr_mimebundle_()
    assert WIDGET in bundle                                   # JupyterLab still gets the widget
    view = bundle["text/html"]
    frames = FRAME.findall(view)
    radios = re.findall(r"<input type='radio'[^>]*>", view)
    assert len(frames) == len(radios) == 4                    # one frame per option
    assert len({src for _, _, src in frames}) == 4            # and each draws something else
    assert "checked" in radios[2] and sum("checked" in r for r in radios) == 1   # the start, 0.5
    # the live figure once, then one draw per option with the other control where it starts
    assert calls == [(0.5, "r"), (-2.0, "r"), (-1.0, "r"), (0.5, "r"), (2.0, "r")]
    assert [alt for _, alt, _ in frames][0] == "The figure at slope = -2.0: slope -2"
    # each frame is the draw at its own option: its alt reads back what that draw returned
    assert [alt for _, alt, _ in frames] == [f"The figure at slope = {v}: slope {v:.3g}"
                                             for v in (-2.0, -1.0, 0.5, 2.0)]
    assert [i for i, _, _ in frames] == [f"{r}-img" for r in
                                         (re.search(r"id='([^']+)'", r)[1] for r in radios)]
    labels = re.findall(r"<label for='([^']+)'>([^<]+)</label>", view)
    assert [text for _, text in labels] == ["-2.0", "-1.0", "0.5", "2.0"]
    assert [for_ for for_, _ in labels] == [re.search(r"id='([^']+)'", r)[1] for r in radios]
    assert "<legend>slope</legend>" in view and "colour = r" in view and "<script" not in view


def test_a_live_run_draws_nothing_extra_and_shows_only_the_widget(monkeypatch):
    monkeypatch.delenv(show.FRAMES_ENV, raising=False)
    calls = []
    bundle = _explore(calls)._repr_mimebundle_()
    assert calls == [(0.5, "r")] and "text/html" not in bundle


def test_a_slider_offers_evenly_spaced_steps_with_its_start_and_end():
    options, at = show.control_options(widgets.FloatSlider(value=0.35, min=0.0, max=0.99,
                                                           step=0.01))
    values = [v for _, v in options]
    assert values[0] == 0.0 and values[-1] == 0.99 and values[at] == 0.35
    assert values[:3] == [0.0, 0.1, 0.2] and len(values) <= show.MAX_FRAMES + 2
    options, at = show.control_options(widgets.IntSlider(value=2, min=1, max=5))
    assert options == [("1", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5)] and at == 1
    options, at = show.control_options(widgets.FloatLogSlider(value=0.01, base=10, min=-4,
                                                              max=-2, step=1))
    assert [v for _, v in options] == [1e-4, 1e-3, 1e-2] and at == 2
    assert show.control_options(widgets.Checkbox(value=True)) == ([("off", False), ("on", True)], 1)
    assert show.control_options(widgets.Dropdown(options=[("a", 1), ("b", 2)], value=2)) == (
        [("a", 1), ("b", 2)], 1)
    # a log slider's tiny values keep their digits (none rounds to 0)
    options, at = show.control_options(widgets.FloatLogSlider(value=1e-13, base=10, min=-15,
                                                              max=-12, step=1))
    assert [v for _, v in options] == [1e-15, 1e-14, 1e-13, 1e-12] and at == 2
    # a step that does not divide the range never offers a value past max (a draw may reject it)
    options, at = show.control_options(widgets.FloatSlider(value=0.35, min=0.0, max=1.0,
                                                           step=0.35))
    assert [v for _, v in options] == [0.0, 0.35, 0.7] and at == 1
    # a range slider is "any other control": only its current value
    assert show.control_options(widgets.IntRangeSlider(value=(2, 4), min=0, max=10)) == (
        [("(2, 4)", (2, 4))], 0)
    assert show.control_options(widgets.SelectionRangeSlider(options=[1, 2, 3], index=(0, 2)))[
        0] == [("(1, 3)", (1, 3))]


def test_two_views_on_a_page_have_their_own_ids_and_styles(monkeypatch):
    monkeypatch.setenv(show.FRAMES_ENV, "1")
    views = [_explore([])._repr_mimebundle_()["text/html"] for _ in range(2)]
    keys = [re.search(r"<div class='lipcore-frames' id='([^']+)'>", v)[1] for v in views]
    assert keys[0] != keys[1]
    for key, view in zip(keys, views):
        ids = re.findall(r"id='([^']+)'", view)
        assert len(ids) == len(set(ids)) and all(i.startswith(key) for i in ids)
        style = re.search(r"<style>(.*?)</style>", view, re.S)[1]
        styled = set(re.findall(r"#(lipcore-frames[\w-]+)", style))
        assert key in styled and styled <= set(ids)                  # it styles its own ids only


def test_the_view_and_the_books_links_escape_what_they_show():
    from html.parser import HTMLParser

    from lipcore.site import _nav

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attrs, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs.append(dict(attrs))

        def handle_data(self, data):
            self.text.append(data)

    nasty = "a<b>'\"&c"
    frames = [(nasty, b"png", nasty), ("x' onmouseover='y", b"png", "")]
    view = show.frames_html("k", f"<script>{nasty}", frames, 0, {nasty: nasty})
    parsed = Tags()
    parsed.feed(view)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert parsed.tags.count("input") == parsed.tags.count("img") == 2
    assert all(set(attrs) <= {"type", "name", "id", "value", "checked", "for", "alt", "src",
                              "class"} for attrs in parsed.attrs)        # no injected onmouseover
    inputs = [attrs for tag, attrs in zip(parsed.tags, parsed.attrs) if tag == "input"]
    assert [i["value"] for i in inputs] == [nasty, "x' onmouseover='y"]  # read back exactly
    assert f"<script>{nasty}" in parsed.text and f"{nasty} = {nasty}" in "".join(parsed.text)
    nav = Tags()
    nav.feed(_nav([("it's", "<title>"), ("b", "t")], "it's"))
    hrefs = [attrs.get("href") for attrs in nav.attrs if "href" in attrs]
    assert hrefs == ["index.html", "it's.html", "b.html", "b.html"]
    assert "title" not in nav.tags


def test_the_book_shows_the_view_in_place_of_the_widget(tmp_path, monkeypatch):
    monkeypatch.setenv(show.FRAMES_ENV, "1")
    with_view = _explore([])._repr_mimebundle_()
    monkeypatch.delenv(show.FRAMES_ENV)
    without = _explore([])._repr_mimebundle_()
    cell = nbformat.v4.new_code_cell("explore(...)")
    cell.outputs = [nbformat.v4.new_output("execute_result", data=b, execution_count=1)
                    for b in (with_view, without)]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    shown, note = clean_notebook(path).cells[0].outputs
    assert list(shown.data) == ["text/html"] and show.FRAMES_CLASS in shown.data["text/html"]
    assert "open this notebook in JupyterLab" in note.data["text/markdown"]


def test_a_failed_redraw_says_so_beside_the_controls(monkeypatch):
    """interactive keeps a redraw's traceback in an output the box does not show: the busy label
    must not read "computing ..." for ever."""
    monkeypatch.delenv(show.FRAMES_ENV, raising=False)

    def draw(ax, slope=1.0):
        if slope > 1:
            raise ValueError("slope must be <= 1")
        ax.clear()
        ax.plot([0, 1], [0, slope])
    box = show.explore(draw, figsize=(2.0, 1.5),
                       slope=widgets.SelectionSlider(options=[0.5, 2.0], value=0.5))
    slider, busy = box.children[0].children
    assert busy.value.startswith("drawn in")
    slider.value = 2.0
    assert busy.value == "failed: ValueError: slope must be <= 1"
    slider.value = 0.5
    assert busy.value.startswith("drawn in")
