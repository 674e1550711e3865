"""scripts/device_stage.sh sizes its parts from what travels with every call: the tree (tracked and
untracked-not-ignored files, measured when it runs) plus one part stays within 62 MiB."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "device_stage.sh"
LIMIT = 62 * 2**20


def tree_bytes():
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())


def test_parts_and_tree_fit_one_call(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "cifar10.npz", "wb") as f:
        f.truncate(70 * 2**20)  # larger than any one call may carry
    for name in ("cifar100.npz", "unpack.py", "README.md"):
        (src / name).write_bytes(b"x" * 1000)
    stage = tmp_path / "stage"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(stage), "--data-src", str(src), "data", "plan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    tree = tree_bytes()
    assert f"the tree that travels with each: {tree} bytes" in done.stdout
    transfers = sorted(stage.glob("transfer-*"))
    assert len(transfers) == 2
    for t in transfers:
        carried = sum(p.stat().st_size for p in t.rglob("*") if p.is_file())
        assert tree + carried <= LIMIT, (t.name, tree, carried)
    assert "python3 -m benchmarks.suite" in done.stdout and "python -m" not in done.stdout


def test_parts_too_large_for_the_tree_are_refused(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "s"), "--part-mib", "60", "data"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "exceed the" in err[0]
    assert not (tmp_path / "s").exists()
