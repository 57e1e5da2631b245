"""Progress bars for long work: ``tqdm.auto`` (a widget in JupyterLab, a text bar in a terminal).
``LIPCORE_PROGRESS=0`` silences them (the tests set it); ``LIPCORE_PROGRESS=text`` forces text
bars, which papermill streams to the terminal (reproduce.sh sets it)."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm


def progress_enabled(show: bool | None = None) -> bool:
    """``show`` if given, else on unless the environment says ``LIPCORE_PROGRESS=0``."""
    if show is not None:
        return show
    return os.environ.get("LIPCORE_PROGRESS", "1") != "0"


def bar(total: int, desc: str, show: bool | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``total`` steps (closed by the caller, or used as a context)."""
    kind = text_tqdm if os.environ.get("LIPCORE_PROGRESS") == "text" else tqdm
    return kind(total=total, desc=desc, disable=not progress_enabled(show), leave=False,
                dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars inside the block (a lesson's redraw shows its own busy label)."""
    before = os.environ.get("LIPCORE_PROGRESS")
    os.environ["LIPCORE_PROGRESS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LIPCORE_PROGRESS"]
        else:
            os.environ["LIPCORE_PROGRESS"] = before
