"""How a lesson shows a figure: small multiples where no kernel runs, ipywidgets where one does.

:func:`explore` puts ipywidgets controls above a figure. In a headless run that makes the book's
copy (reproduce.sh sets ``LIPCORE_BOOK_FRAMES=1`` for papermill) it also pre-renders the figure
at each value of the first (main) control, the others at their initial values, and carries them
in the same output as a kernel-free view (:func:`frames_html`: radio buttons that swap the
image with CSS, no script, images as data URIs). The output's bundle then holds both: JupyterLab
shows the live widget, the book (lipcore.site) the kernel-free view. A lecturer's live run,
without the variable, draws nothing extra.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import itertools
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable

import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    import ipywidgets

FRAMES_ENV = "LIPCORE_BOOK_FRAMES"   # "1": explore also pre-renders the main control's frames
MAX_FRAMES = 11                      # a slider with more steps shows about this many, evenly spaced
FRAMES_CLASS = "lipcore-frames"      # marks the kernel-free view; lipcore.site keeps it
_views = itertools.count(1)          # one id per view in a kernel session: unique on a page


def clear_axes(ax: plt.Axes) -> None:
    """Empty ``ax`` for a redraw that splits it into inset panels: the insets go, the frame hides."""
    for child in list(ax.child_axes):
        child.remove()
    ax.clear()
    ax.axis("off")


def small_multiples(draw: Callable[..., Any], settings: list[dict[str, Any]], ncols: int = 3,
                    size: tuple[float, float] = (4.0, 3.6), share: str = "") -> plt.Figure:
    """One panel per setting: the static view of a lesson (the book, an executed copy).
    ``share`` ("x", "y" or "xy") gives the panels common limits on those axes, the union of
    what each drew, so they compare at a glance."""
    nrows = -(-len(settings) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    drawn = axes.flat[:len(settings)]
    for ax, setting in zip(drawn, settings):
        draw(ax, **setting)
    for axis in share:
        limits = [getattr(ax, f"get_{axis}lim")() for ax in drawn]
        low, high = min(min(lim) for lim in limits), max(max(lim) for lim in limits)
        for ax, lim in zip(drawn, limits):       # keep an inverted axis inverted
            getattr(ax, f"set_{axis}lim")((low, high) if lim[0] <= lim[1] else (high, low))
    for ax in axes.flat[len(settings):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def control_options(widget: Any) -> tuple[list[tuple[str, Any]], int]:
    """The (label, value) pairs a kernel-free view offers for an ipywidgets control, and the
    index of its current value: a selection's options, a checkbox's two states, a slider's steps
    (a log slider's too); of more than MAX_FRAMES, every k-th (about MAX_FRAMES), the last and
    the current value. Any other control offers only its current value."""
    value = widget.get_interact_value()
    if getattr(widget, "_options_values", ()) and isinstance(widget.index, (int, type(None))):
        pairs, at = list(zip(widget._options_labels, widget._options_values)), widget.index or 0
    elif isinstance(value, bool):                            # Checkbox, ToggleButton
        pairs, at = [("off", False), ("on", True)], int(value)
    elif all(hasattr(widget, a) for a in ("min", "max", "step")) and widget.step and \
            isinstance(value, (int, float)):                 # not a range slider's (low, high)
        # the steps min + k step up to max (never past it, where step does not divide the range)
        steps = widget.min + widget.step * np.arange(
            int(np.floor((widget.max - widget.min) / widget.step + 1e-9)) + 1)
        values = widget.base ** steps if hasattr(widget, "base") else steps   # FloatLogSlider
        at = int(np.argmin(np.abs(values - value)))
        kind = type(value)
        values = [kind(float(f"{float(v):.12g}")) for v in values]   # 12 digits, however small
        values[at] = value
        pairs = [(format(v, getattr(widget, "readout_format", "")), v) for v in values]
    else:
        return [(str(value), value)], 0
    if len(pairs) > MAX_FRAMES:                 # every stride-th step, the last and the current
        stride = -(-(len(pairs) - 1) // (MAX_FRAMES - 1))
        keep = sorted(set(range(0, len(pairs), stride)) | {len(pairs) - 1, at})
        pairs, at = [pairs[i] for i in keep], keep.index(at)
    return pairs, at


def _describe(shown: Any) -> str:
    """What a draw returned, as short text for an image's alt: its numbers and words."""
    items = shown.items() if isinstance(shown, dict) else [("", shown)]
    words = [f"{k} {v:.3g}".strip() if isinstance(v, (int, float, np.number))
             and not isinstance(v, bool) else f"{k} {v}".strip()
             for k, v in items if isinstance(v, (int, float, str, bool, np.number))]
    return ", ".join(words[:12])


def render_frames(draw: Callable[..., Any], figsize: tuple[float, float], name: str,
                  options: list[tuple[str, Any]], others: dict[str, Any]
                  ) -> list[tuple[str, bytes, str]]:
    """``draw``'s figure as PNG at each option of control ``name``, the other controls at
    ``others``: (label, png, what the draw returned) per option. One figure, redrawn as explore
    redraws it, and closed (never shown inline)."""
    with plt.ioff():
        fig, ax = plt.subplots(figsize=figsize)
    frames = []
    try:
        for label, value in options:
            shown = draw(ax, **{name: value}, **others)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", bbox_inches="tight")   # as the inline backend
            frames.append((label, buffer.getvalue(), _describe(shown)))
    finally:
        plt.close(fig)
    return frames


def frames_html(key: str, title: str, frames: list[tuple[str, bytes, str]], at: int,
                others: dict[str, str]) -> str:
    """A kernel-free control: one radio button per frame (labelled with the control's value,
    grouped under its name; arrow keys step through them like a slider) and the frames as data
    URIs, of which CSS shows the checked one. Works with scripts stripped and no network."""
    esc = html.escape
    rules = "".join(f"#{key}-{i}:checked~#{key}-{i}-img," for i in range(len(frames)))
    style = (f"#{key} img{{display:none;max-width:100%}}{rules[:-1]}{{display:block}}"
             f"#{key} fieldset{{border:1px solid #ccc;padding:.3rem .6rem}}"
             f"#{key} label{{margin:0 .7rem 0 .15rem}}#{key} p{{margin:.2rem 0;font-size:.85em}}")
    setting = ", ".join(f"{esc(k)} = {esc(v)}" for k, v in others.items())
    parts = [f"<legend>{esc(title)}</legend>",
             f"<p>Pre-rendered when this page was built, at {len(frames)} values of "
             f"{esc(title)}{', with ' + setting if setting else ''}. Open the notebook in "
             "JupyterLab to move every control.</p>"]
    for i, (label, _, _) in enumerate(frames):
        parts.append(f"<input type='radio' name='{key}' id='{key}-{i}' value='{esc(label, True)}'"
                     f"{' checked' if i == at else ''}><label for='{key}-{i}'>{esc(label)}</label>")
    for i, (label, png, shown) in enumerate(frames):
        alt = f"The figure at {title} = {label}" + (f": {shown}" if shown else "")
        parts.append(f"<img id='{key}-{i}-img' alt='{esc(alt, True)}' src='data:image/png;"
                     f"base64,{base64.b64encode(png).decode()}'>")
    return (f"<div class='{FRAMES_CLASS}' id='{key}'><style>{style}</style><fieldset>"
            + "".join(parts) + "</fieldset></div>")


def static_view(draw: Callable[..., Any], figsize: tuple[float, float], controls: list[Any]
                ) -> str:
    """The kernel-free view of ``explore``'s figure: frames at each option of the first
    control in ``controls`` (ipywidgets widgets as ``interactive`` made them), the others at
    their current values."""
    main, rest = controls[0], controls[1:]
    options, at = control_options(main)
    others = {w._kwarg: w.get_interact_value() for w in rest}
    frames = render_frames(draw, figsize, main._kwarg, options, others)
    key = re.sub(r"\W", "-", f"{FRAMES_CLASS}-{getattr(draw, '__name__', 'draw')}-{next(_views)}")
    held = {getattr(w, "description", "") or w._kwarg: _label(w) for w in rest}
    return frames_html(key, getattr(main, "description", "") or main._kwarg, frames, at, held)


def _label(widget: Any) -> str:
    """A control's value as its widget reads it out."""
    value = widget.get_interact_value()
    if hasattr(widget, "_options_labels"):
        return str(widget.label)
    fmt = getattr(widget, "readout_format", "")
    return format(value, fmt) if fmt and not isinstance(value, bool) else str(value)


@functools.cache
def _box_class():
    import ipywidgets as widgets

    class ExploreBox(widgets.VBox):
        """explore's controls and figure; with ``static_html`` set, its output also carries that
        as text/html, which a front end without the widget (the book) shows instead."""
        static_html = ""

        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is not None and self.static_html:
                bundle["text/html"] = self.static_html
            return bundle
    return ExploreBox


def explore(draw: Callable[..., Any], figsize: tuple[float, float] = (6.0, 4.5),
            **controls: Any) -> ipywidgets.VBox:
    """ipywidgets controls above ``draw``'s figure; each change redraws it (with a busy label
    while a slow redraw runs, which names the error where a redraw fails). ``controls`` are
    widgets or anything ipywidgets.interactive accepts; the first is the main one. With
    ``LIPCORE_BOOK_FRAMES=1`` in the environment the output also carries :func:`static_view`
    (one draw per value of the main control) for the book. Returns the widget box."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    busy = widgets.Label("")
    with plt.ioff():
        fig, ax = plt.subplots(figsize=figsize)
    # Out of pyplot's list of open figures: the widget shows it by display(fig), and a later
    # cell's plt.show() (which shows every open figure) must not print it again as a stray copy.
    plt.close(fig)

    def redraw(**values):
        busy.value = "computing ..."
        start = time.perf_counter()
        try:
            shown = draw(ax, **values)
        except Exception as error:       # interactive's own output, which holds the traceback,
            busy.value = f"failed: {type(error).__name__}: {error}"     # is not shown here
            raise
        fig.canvas.draw_idle()
        busy.value = f"drawn in {time.perf_counter() - start:.2f} s"
        with out:
            out.clear_output(wait=True)
            display(fig)
        return shown
    ui = widgets.interactive(redraw, **controls)
    for child in ui.children[:-1]:
        if hasattr(child, "continuous_update"):
            child.continuous_update = False
    box = _box_class()([widgets.HBox(list(ui.children[:-1]) + [busy]), out])
    if os.environ.get(FRAMES_ENV) == "1" and ui.kwargs_widgets:
        box.static_html = static_view(draw, figsize, ui.kwargs_widgets)
    return box
