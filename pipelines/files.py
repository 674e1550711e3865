"""Files on disk: checksums, atomic publishing, the cleanup of temporaries a killed writer left, and
where the caches live (`cache_root`: $XDG_CACHE_HOME/fastssl, else ~/.cache/fastssl).

Every output of the data layer (converted datasets, checksum stamps) and of the trainer (checkpoints)
is written to `<out>.tmp-<pid>` and moved into place once complete, so a reader sees the old file or
the new one, never half of one; `remove_dead_temporaries` deletes what a killed writer left behind.
"""

import hashlib
import os
import re
import shutil


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def listing(path):
    """Relative paths of the files making up an output (one file, or a directory's files), sorted."""
    if os.path.isdir(path):
        return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
    return [""]


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


_TMP = re.compile(r"\.tmp-(\d+)$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_dead_temporaries(directory: str) -> list[str]:
    """Delete `*.tmp-<pid>` files in `directory` whose writer is no longer alive; returns their paths.
    Files of live processes (a concurrent converter, say) are left alone; used by the trainer too."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for entry in os.scandir(directory):
        m = _TMP.search(entry.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.remove(entry.path)
            removed.append(entry.path)
    return removed


def publish(tmp, out):
    """Move the finished `tmp` to `out`. A file replaces atomically; a directory cannot be replaced in one
    step, so an old `out` is first renamed aside and restored if the second rename fails."""
    if not os.path.isdir(tmp) or not os.path.exists(out):
        os.replace(tmp, out)
        return
    aside = f"{out}.old-{os.getpid()}"
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    remove(aside)


def cache_root() -> str:
    """fastssl's cache folder: $XDG_CACHE_HOME/fastssl, else ~/.cache/fastssl. Read at each call, so
    a change of the variable after import counts. As the XDG base directory spec says, an empty or
    relative $XDG_CACHE_HOME is ignored."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastssl")


def cache_path(where) -> str:
    """`where` inside cache_root(); an absolute `where` (or one starting with `~`) is taken as it is,
    so a module's default folder can be pointed elsewhere by setting its constant to a full path."""
    return os.path.join(cache_root(), os.path.expanduser(os.fspath(where)))


# Where datasets live when no --data-dir is given (then $FASTSSL_DATA, then this, in cache_root()).
DEFAULT_ROOT = "data"


def data_root(data_dir) -> str:
    """The data folder: `data_dir`, else $FASTSSL_DATA, else cache_path(DEFAULT_ROOT); absolute,
    `~` expanded."""
    chosen = data_dir or os.environ.get("FASTSSL_DATA")
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)) if chosen else cache_path(DEFAULT_ROOT))
