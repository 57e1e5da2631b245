"""How a lesson shows a figure: small multiples where no kernel runs, ipywidgets where one does."""
from __future__ import annotations

import time
from typing import Any, Callable

import matplotlib.pyplot as plt

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


def explore(draw: Callable[..., Any], figsize: tuple[float, float] = (6.0, 4.5),
            **controls: Any):
    """ipywidgets controls above ``draw``'s figure; each change redraws it (with a busy label
    while a slow redraw runs). ``controls`` are widgets or anything ipywidgets.interactive
    accepts. Returns the widget box."""
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    busy = widgets.Label("")
    with plt.ioff():
        fig, ax = plt.subplots(figsize=figsize)

    def redraw(**values):
        busy.value = "computing ..."
        start = time.perf_counter()
        shown = draw(ax, **values)
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
    return widgets.VBox([widgets.HBox(list(ui.children[:-1]) + [busy]), out])
