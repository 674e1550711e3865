"""One writer per run directory: an advisory `fcntl.flock` on `<out>/.lock`, held for the run.

The kernel drops the lock when its holder dies (kill -9 included), so a lock left by a dead
process never blocks; the pid written into the file only serves the error message. `--overwrite`
empties the directory but keeps `.lock` (see `clear_run_dir`): deleting the locked file would let a
second process lock a fresh file of the same name while the first still writes.

Where `fcntl` does not exist (Windows), acquiring prints a one-line warning on stderr and the run
goes on unlocked: nothing then stops a second run from writing into the same directory.
"""

import errno
import os
import shutil
import sys

try:
    import fcntl
except ImportError:  # no flock on this platform: RunLock degrades to a warning
    fcntl = None

from .config import ConfigError

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(out):` or `lock = RunLock(out).acquire(); ...; lock.release()`."""

    def __init__(self, out: str):
        self.out, self.path, self._fd = out, os.path.join(out, LOCK_NAME), None
        self.created_dir = self.created_file = False

    def acquire(self) -> "RunLock":
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out} exists and is not a directory")
        try:
            self.created_dir = not os.path.isdir(self.out)
            os.makedirs(self.out, exist_ok=True)
            self.created_file = not os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(
                f"--out {self.out}: cannot create the run directory or its lock: {e.strerror}"
            ) from None
        if fcntl is None:
            print(f"warning: no fcntl here, {self.out} is not locked against other runs", file=sys.stderr)
            self._fd = fd  # kept open so that release() behaves as with a lock
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(
                    f"--out {self.out} is in use by another run (pid {holder}); "
                    "wait for it to finish or choose another --out"
                ) from None
            raise ConfigError(f"--out {self.out}: cannot lock {self.path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self, remove_if_unused: bool = False) -> None:
        """Drop the lock. With remove_if_unused (a refused run), a lock file and directory that
        this lock created are removed again, so that the refusal leaves no trace."""
        if self._fd is None:
            return
        if remove_if_unused and self.created_file:
            os.remove(self.path)
            if self.created_dir and not os.listdir(self.out):
                os.rmdir(self.out)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release(remove_if_unused=exc[0] is not None)


def clear_run_dir(out: str) -> None:
    """Empty `out` for --overwrite, keeping the (held) lock file."""
    for entry in os.scandir(out):
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)


def has_content(out: str) -> bool:
    """True when `out` holds anything besides the lock file."""
    return os.path.isdir(out) and any(e.name != LOCK_NAME for e in os.scandir(out))
