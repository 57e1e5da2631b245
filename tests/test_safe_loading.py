"""Nothing lipcore loads can run code, and a bad file never stops a run (issue 34): a crafted
pickle in the cache or among the shipped nets runs nothing and is named; a truncated entry is
moved aside, named and rebuilt; a shipped file whose digest is not pinned is refused; cache
files get the user's umask."""
import os
import pathlib

import pytest
import torch

import lipcore.cache as cache
from lipcore.cache import SHIPPED, cached, pinned_digests, safe_load, sha256, write_digests


class Payload:
    """Unpickling this would create a file: the marker of code that ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def build_counter():
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(4.0), "history": [{"loss": 0.5}]}
    return build, calls


@pytest.fixture
def cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "shipped")
    return tmp_path / "cache"


def test_a_crafted_pickle_in_the_cache_runs_no_code_and_is_named(cache_folder, tmp_path):
    marker = tmp_path / "pwned"
    cache_folder.mkdir()
    torch.save({"w": Payload(marker)}, cache_folder / "k.pt")
    build, calls = build_counter()
    with pytest.warns(UserWarning, match=r"k\.pt cannot be read safely.*quarantine"):
        out = cached("k", build)
    assert not marker.exists(), "loading a cache entry ran code"
    assert calls == [1] and torch.equal(out["w"], torch.arange(4.0))
    assert len(list((cache_folder / "quarantine").glob("k.*.pt"))) == 1     # kept, not deleted


def test_a_truncated_entry_is_moved_aside_named_and_rebuilt_once(cache_folder, recwarn):
    build, calls = build_counter()
    cached("k", build)
    entry = cache_folder / "k.pt"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"k\.pt cannot be read safely"):
        cached("k", build)
    recwarn.clear()
    cached("k", build)                                  # a second run is clean
    assert calls == [1, 1] and not recwarn.list


def test_shipped_nets_need_a_pinned_digest_and_still_load_safely(cache_folder, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    torch.save({"w": torch.ones(2)}, shipped / "k.pt")
    build, calls = build_counter()
    with pytest.warns(UserWarning, match=r"k\.pt is not listed with its SHA-256"):
        cached("k", build)
    assert calls == [1]
    (cache_folder / "k.pt").unlink()
    write_digests(shipped, {"k.pt": sha256(shipped / "k.pt")})
    assert torch.equal(cached("k", build)["w"], torch.ones(2)) and calls == [1]
    # a pull request that adds a crafted file *and* its digest still runs nothing
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, shipped / "evil.pt")
    write_digests(shipped, {**pinned_digests(shipped), "evil.pt": sha256(shipped / "evil.pt")})
    with pytest.warns(UserWarning, match=r"evil\.pt cannot be read safely"):
        cached("evil", build)
    assert not marker.exists() and calls == [1, 1]


def test_every_committed_shipped_net_is_pinned_and_loads_without_code():
    digests = pinned_digests(SHIPPED)
    files = sorted(SHIPPED.glob("*.pt"))
    assert files and {f.name for f in files} == set(digests)
    for f in files:
        assert sha256(f) == digests[f.name]
        safe_load(f)


def test_cache_files_get_the_users_umask(cache_folder):
    old = os.umask(0o022)
    try:
        cached("k", build_counter()[0])
    finally:
        os.umask(old)
    assert (cache_folder / "k.pt").stat().st_mode & 0o777 == 0o644


def test_the_audit_command_reads_no_pickle_unless_told(tmp_path, capsys):
    from lipcore.audit import main
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, tmp_path / "net.pt")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "net.pt")])                 # no --arch, no --allow-pickle
    assert "--allow-pickle" in capsys.readouterr().err
    with pytest.raises(cache.UnreadableModel, match="net.pt cannot be read safely"):
        main([str(tmp_path / "net.pt"), "--arch", "784-32-10"])
    assert not marker.exists()
