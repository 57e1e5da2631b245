"""JupyterLab driven as a user drives it (issue 17): start the server, open a lesson in headless
Chromium, pick the kernel, Run > Run All Cells, move the slider with the keyboard, and see the
widget's figure change. The lesson is a copy in a temporary folder, so JupyterLab's autosave
never touches the repository. Skips, saying why, where Chromium or Playwright is missing."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON = "lesson3_coupled_lipsdp.ipynb"             # the fastest lesson; needs no data
FIGURE = ".jupyter-widgets .jp-OutputArea-output img"


def _user_env() -> dict[str, str]:
    """A user's environment: lipcore importable, and matplotlib's Jupyter default (inline
    figures), not the Agg backend that reproduce.sh sets for its headless runs."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return dict(env, PYTHONPATH=str(ROOT))


@pytest.fixture
def lab(tmp_path):
    """The URL of a JupyterLab server (no token) whose root holds a copy of the lesson."""
    shutil.copy(ROOT / "notebooks" / "lessons" / LESSON, tmp_path / LESSON)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.token=", "--ServerApp.password=", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=_user_env(), stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(30)


def test_a_lesson_runs_in_jupyterlab_and_its_slider_redraws_the_figure(browser, lab):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab}/lab/tree/{LESSON}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    select = page.locator(".jp-Dialog button:has-text('Select')")
    try:                                  # JupyterLab may ask which kernel: take its default
        select.wait_for(timeout=15_000)
        select.click()
    except Exception:  # noqa: BLE001  (playwright's TimeoutError: no dialog this time)
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=120_000)
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    page.wait_for_selector(".widget-slider .noUi-handle", timeout=180_000)
    figure = page.locator(FIGURE).first
    figure.wait_for(timeout=60_000)
    before = figure.get_attribute("src")
    assert page.locator(".jp-OutputArea-output img").count() >= 2   # small multiples + widget
    page.locator(".widget-slider .noUi-handle").first.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(
        f"b => {{ const i = document.querySelector('{FIGURE}'); return i && i.src !== b; }}",
        arg=before, timeout=60_000)
    assert "drawn in" in page.locator(".jupyter-widgets .widget-label").last.inner_text()
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert not [e for e in errors.all_inner_texts() if "Error" in e]
    page.close()
