"""Test-wide settings: notebooks under nbval run at the smoke profile, quietly, and write to a
temp dir."""
import os
import tempfile


def pytest_configure(config):
    scratch = tempfile.mkdtemp(prefix="lipcore-tests-")
    os.environ["LIPCORE_PROFILE"] = "smoke"
    os.environ["LIPCORE_OUT"] = os.path.join(scratch, "figures")
    os.environ["LIPCORE_CACHE"] = os.path.join(scratch, "cache")
    os.environ["LIPCORE_PROGRESS"] = "0"         # no progress bars in test logs
    os.environ.setdefault("MPLBACKEND", "Agg")
    if os.environ.get("LIPCORE_DATA"):     # notebook kernels run in notebooks/: make it absolute
        os.environ["LIPCORE_DATA"] = os.path.abspath(os.environ["LIPCORE_DATA"])
