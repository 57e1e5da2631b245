"""The README's python blocks, taken in order, are one script that runs as written on real
MNIST; so are each doc's (issue 18). A block that stops running fails here, not for a reader."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks_and_a_data_setup():
    text = (ROOT / "README.md").read_text()
    assert len(python_blocks(ROOT / "README.md")) >= 4
    assert "export LIPCORE_DATA=" in text


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(ROOT / d)])
def test_python_blocks_run_as_written(document, tmp_path):
    data = os.environ.get("LIPCORE_DATA")
    if not data or not (Path(data) / "mnist.npz").is_file():
        pytest.skip("LIPCORE_DATA has no mnist.npz; the blocks use real MNIST")
    script = "\n\n".join(python_blocks(ROOT / document))
    env = {**os.environ, "LIPCORE_PROGRESS": "0", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT), "LIPCORE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{document}'s python blocks failed:\n{result.stderr[-3000:]}"


def test_the_readme_is_a_five_minute_read_whose_links_resolve():
    """Issue 28: at most about 200 lines, details in docs/; every relative link points at a file."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    for document in ["README.md", *DOCUMENTS[1:]]:
        path = ROOT / document
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / link).exists(), f"{document} links to missing {link}"
