"""The run lock where `fcntl` is missing (Windows): a one-line warning, and the run goes on unlocked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastssl import lock
from fastssl.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(lock.fcntl is None, reason="no fcntl on this platform: nothing to compare with")
def test_a_second_lock_is_refused_where_fcntl_exists(tmp_path):
    with lock.RunLock(str(tmp_path / "run")):
        with pytest.raises(ConfigError, match="in use by another run"):
            lock.RunLock(str(tmp_path / "run")).acquire()


def test_without_fcntl_each_lock_warns_in_one_line_and_runs_unlocked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lock, "fcntl", None)
    out = str(tmp_path / "run")
    with lock.RunLock(out):
        second = lock.RunLock(out).acquire()  # not refused: nothing holds a lock
        second.release()
        assert os.path.isfile(os.path.join(out, lock.LOCK_NAME))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("warning:") and out in line for line in err)
    assert not lock.has_content(out)


def test_fastssl_imports_where_fcntl_does_not_exist(tmp_path):
    """A None entry in sys.modules makes `import fcntl` fail, as on Windows."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import fastssl, fastssl.lock\n"
        "assert fastssl.lock.fcntl is None\n"
        f"fastssl.lock.RunLock({str(tmp_path / 'run')!r}).acquire().release()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().startswith("warning:") and len(done.stderr.strip().splitlines()) == 1
