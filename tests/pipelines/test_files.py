"""Where fastssl's caches live: $XDG_CACHE_HOME/fastssl, else ~/.cache/fastssl, for every cache."""

import re
from pathlib import Path

import pytest

from pipelines import files
from pipelines.formats import verify

REPO = Path(__file__).resolve().parents[2]


def test_cache_root_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    assert files.cache_root() == str(tmp_path / "xdg" / "fastssl")
    assert files.cache_path("verified") == str(tmp_path / "xdg" / "fastssl" / "verified")
    assert files.data_root(None) == str(tmp_path / "xdg" / "fastssl" / "data")
    assert files.cache_path(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")  # absolute: as is
    monkeypatch.setenv("FASTSSL_DATA", str(tmp_path / "mine"))
    assert files.data_root(None) == str(tmp_path / "mine")  # the data folder's own variable comes first


@pytest.mark.parametrize("value", [None, "", "relative/cache"])
def test_cache_root_defaults_to_home_cache(value, tmp_path, monkeypatch):
    """Unset, empty or relative (which the XDG spec calls invalid): ~/.cache/fastssl."""
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert files.cache_root() == str(tmp_path / ".cache" / "fastssl")


def test_checksum_stamps_go_to_the_xdg_cache(tmp_path, monkeypatch):
    out = tmp_path / "converted"
    out.mkdir()
    (out / "part.bin").write_bytes(b"fastssl" * 100)
    manifest = {"sha256": {"part.bin": files.sha256(out / "part.bin")}}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(verify, "VERIFIED_DIR", "verified")  # the default, which conftest redirects
    monkeypatch.setattr(verify, "RACY_NS", 0)  # stamp files written just now (no sleep needed)
    assert verify.check_checksums("dali", str(out), manifest=manifest) is True
    stamps = list((tmp_path / "xdg" / "fastssl" / "verified").iterdir())
    assert len(stamps) == 1 and stamps[0].suffix == ".json"
    assert verify.check_checksums("dali", str(out), manifest=manifest) is False  # the stamp vouches


def test_no_cache_folder_is_written_into_the_code():
    """Every default cache folder is a name in files.cache_root(), the one place that spells
    ~/.cache; a literal ~/.cache anywhere else would not follow $XDG_CACHE_HOME."""
    literal = re.compile(r"""["']\.cache["']|["']~/\.cache""")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for package in ("pipelines", "fastssl")
        for path in sorted((REPO / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line) and path != REPO / "pipelines" / "files.py"
    ]
    assert not found, found
