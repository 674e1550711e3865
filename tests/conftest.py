"""Shared fixtures: real CIFAR data, unpacked once from the bundle beside the repository.

`cifar_root` / `cifar100_root` run ../shared/data/unpack.py into <repo>/.cache/data (idempotent: files
already there and correct are kept) and return that directory, which holds cifar-10-batches-py/
(and cifar-100-python/). Without the bundle, tests that need real data are skipped with the reason.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO.parent / "shared" / "data"
DATA = REPO / ".cache" / "data"

# Compiled kernels are reused across test runs instead of being rebuilt in a fresh temp dir.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO / ".cache" / "inductor"))


def _unpack(only: str) -> str:
    script = BUNDLE / "unpack.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR data not available: {script} not found")
    DATA.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, str(script), str(DATA), "--only", only], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"{script} {DATA} --only {only} failed: {done.stderr.strip() or done.stdout.strip()}")
    return str(DATA)


@pytest.fixture(scope="session")
def cifar_root() -> str:
    """Directory holding cifar-10-batches-py/ (real CIFAR-10, pixel-exact)."""
    return _unpack("cifar10")


@pytest.fixture(scope="session")
def cifar100_root() -> str:
    """Directory holding cifar-100-python/ (real labels, JPEG-recompressed pixels)."""
    return _unpack("cifar100")


@pytest.fixture(autouse=True)
def _own_checksum_stamps(tmp_path_factory, monkeypatch):
    """Checksum stamps (pipelines.formats.verify.VERIFIED_DIR) go to a folder of this test session, not
    the user's ~/.cache: stamps left there by a user's runs never meet a test's files."""
    from pipelines.formats import verify

    monkeypatch.setattr(verify, "VERIFIED_DIR", str(tmp_path_factory.getbasetemp() / "verified"))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Benchmarks set torch's CPU thread count (--threads) and FFCV resets it; a later test must not
    inherit it: float sums change with the thread count, and bit-exact comparisons with them."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
