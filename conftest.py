"""Test-wide settings (notebooks under nbval run at the smoke profile, quietly, and write to a
temp dir) and the fixtures tests share."""
import os
import tempfile

import pytest


def pytest_configure(config):
    scratch = tempfile.mkdtemp(prefix="lipcore-tests-")
    os.environ["LIPCORE_PROFILE"] = "smoke"
    os.environ["LIPCORE_OUT"] = os.path.join(scratch, "figures")
    os.environ["LIPCORE_CACHE"] = os.path.join(scratch, "cache")
    os.environ["LIPCORE_PROGRESS"] = "0"         # no progress bars in test logs
    os.environ.setdefault("MPLBACKEND", "Agg")
    if os.environ.get("LIPCORE_DATA"):     # notebook kernels run in notebooks/: make it absolute
        os.environ["LIPCORE_DATA"] = os.path.abspath(os.environ["LIPCORE_DATA"])


@pytest.fixture
def figure_layouts():
    """A lesson's draw function in the widget's layout (one axes, as ``explore`` makes it) and in
    the static one (``small_multiples``, tight layout): a generator of (figure, axes)."""
    import matplotlib.pyplot as plt
    from lipcore.lessons.show import small_multiples

    def layouts(draw, figsize, **setting):
        fig, ax = plt.subplots(figsize=figsize)
        draw(ax, **setting)
        yield fig, ax
        plt.close(fig)
        fig = small_multiples(draw, [setting], ncols=1, size=figsize)
        yield fig, fig.axes[0]
        plt.close(fig)
    return layouts
