"""Convert an ArrayDataset to a loader's native format: atomic, verified by reading back, with a manifest.

    from pipelines import convert, datasets
    data = datasets.load("cifar10", "train", data_dir="data")
    convert.convert(data, "ffcv", "data/cifar10_train.beton")          # + data/cifar10_train.beton.manifest.json
    convert.convert(data, "dali", "data/cifar10_dali", workers=8)       # directory, manifest.json inside

Every writer module in WRITERS exposes `write(data, tmp_out, **opts)`, `verify(out, data, n_check)`
(reads back with the library's own reader: count, labels and pixels of a sample, bit-exact for raw)
and `VERSION()` (DataError naming the pip extra when the library is missing). The output appears
only once it is complete and verified: it is written to `out + ".tmp-<pid>"` and moved into place
with os.replace; an existing output is refused unless force=True, and on any failure the temporary
output is removed and the existing one is left as it was. A DALI directory carries its manifest
inside, so one rename publishes both; an FFCV .beton is renamed into place before its manifest, so a
crash between the two renames leaves the new file beside no manifest or the previous one: opening
it (sources.open_split) then fails with "no manifest" or a checksum (or count) mismatch naming the file, and
converting again repairs it.
"""
import datetime
import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import time
from dataclasses import replace

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .datasets import take
from .errors import DataError
from .imagefiles import ImageFiles

WRITERS = {"ffcv": "pipelines.ffcv_format", "dali": "pipelines.dali_format"}
# 2: split, labels_sha256, mean/std and the image-size policy are recorded (sources.py needs them).
MANIFEST_VERSION = 2
LIBRARIES = {"ffcv": "ffcv", "dali": "nvidia-dali"}
MANIFEST = "manifest.json"


def manifest_path(to: str, out: str) -> str:
    """Where the manifest of output `out` lives: beside a single-file output, inside a directory one."""
    return os.path.join(out, MANIFEST) if to == "dali" else out + ".manifest.json"


def _files(path):
    """Relative paths of the files making up an output (one file, or a directory's files), sorted."""
    if os.path.isdir(path):
        return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
    return [""]


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove(path):
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


def _publish(tmp, out):
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
    _remove(aside)


def image_policy(data, opts) -> dict:
    """How the stored images relate to their sources: one size for all (an ArrayDataset, possibly
    shrunk by max_resolution) or each its own (an ImageFiles folder, longer side capped)."""
    if isinstance(data, ImageFiles):
        sizes = data.sizes
        return {"image_policy": {"sizes": "own", "max_resolution": data.max_resolution,
                                 "max_shape": [int(sizes[:, 0].max()), int(sizes[:, 1].max())],
                                 "min_side": int(sizes.min())}}
    height, width = data.images.shape[1:3]
    return {"image_shape": [int(height), int(width), 3],  # of the source; max_resolution may shrink it
            "image_policy": {"sizes": "fixed", "max_resolution": opts.get("max_resolution")}}


def stored_order(n: int, seed=None) -> np.ndarray:
    """Which source sample each stored sample is: a permutation drawn from `seed`, or (seed None)
    the source's own order. An image folder lists its images class by class; DALI's reader and
    FFCV's windowed order shuffle within a few thousand samples of a streamed file, so a file
    written in folder order would give batches of one or two classes. Written shuffled, any window
    is a uniform sample of the classes."""
    return np.arange(n) if seed is None else np.random.default_rng(int(seed)).permutation(n)


def reordered(data, idx):
    """`data` with its samples in the order `idx` (ImageFiles: its file list; else its images)."""
    if isinstance(data, ImageFiles):
        return replace(data, paths=[data.paths[i] for i in idx], labels=data.labels[idx],
                       sizes=None if data.sizes is None else data.sizes[idx])
    return take(data, idx)


def convert(data, to: str, out, *, force=False, workers=None, n_check=1000, source=None, progress=True,
            order_seed=None, **opts) -> dict:
    """Write `data` (datasets.ArrayDataset) as `to` ("ffcv" | "dali") at `out`; return the manifest dict.

    data may also be an imagefiles.ImageFiles (a folder, each image at its own size, stored as JPEG;
    its mean/std/sizes are measured here first when missing).
    opts go to the writer (encoding="raw"|"jpg", quality, max_resolution; dali: shard_size).
    source: where the data came from, recorded in the manifest (e.g. {"dataset", "split", "data_dir"}).
    order_seed: write the samples in the order stored_order(N, order_seed), recorded in the
    manifest as "order". None (the default here) keeps them as they come; `python -m
    fastssl.convert` passes 0 unless --order source. Shuffling an in-memory dataset copies its
    images once (twice its size while converting).
    n_check: samples compared pixel by pixel after writing. progress: rich bar on stderr.
    """
    if to not in WRITERS:
        raise DataError(f"unknown output format {to!r}; choose from {', '.join(WRITERS)}")
    writer = importlib.import_module(WRITERS[to])
    version = writer.VERSION()  # DataError with the install hint when the library is missing
    out = os.fspath(out).rstrip(os.sep) or os.fspath(out)
    meta = manifest_path(to, out)
    if os.path.lexists(out) and not force:
        raise DataError(f"{out} already exists (use --force / force=True to replace it)")
    if os.path.isdir(out) and to == "ffcv":
        raise DataError(f"{out} is a directory; a .beton output is a single file")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {parent} for {out}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise DataError(f"cannot write {out}: {parent} is not writable")
    remove_dead_temporaries(parent)  # left by a converter that was killed
    workers = int(workers or len(os.sched_getaffinity(0)))
    accepted = inspect.signature(writer.write).parameters
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise DataError(f"the {to} writer has no option(s) {', '.join(unknown)}")
    n = len(data.labels)
    if order_seed is not None:
        if isinstance(order_seed, bool) or int(order_seed) < 0:
            raise DataError(f"order_seed must be a non-negative integer, got {order_seed!r}")
        data = reordered(data, stored_order(n, order_seed))
    tmp, tmp_meta = f"{out}.tmp-{os.getpid()}", f"{meta}.tmp-{os.getpid()}"
    started = time.time()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=not progress)
    try:
        _remove(tmp), _remove(tmp_meta)  # leftovers of a killed run with a recycled pid
        with bar:
            if isinstance(data, ImageFiles) and data.mean is None:
                task = bar.add_task("measuring mean/std", total=n)
                data.measure(workers, on_progress=lambda k: bar.advance(task, k))
                bar.remove_task(task)
            task = bar.add_task(f"writing {to}", total=n)
            kwargs = dict(opts, workers=workers)
            if "on_progress" in accepted:
                kwargs["on_progress"] = lambda k: bar.advance(task, k)
            writer.write(data, tmp, **kwargs)
            bar.update(task, completed=n, description="verifying (reading back)")
            report = writer.verify(tmp, data, n_check)
            files = _files(tmp)
            bar.update(task, description="checksums", completed=0, total=len(files))
            checksums = {}
            for rel in files:
                checksums[rel or os.path.basename(out)] = sha256(os.path.join(tmp, rel) if rel else tmp)
                bar.advance(task)
        labels = np.asarray(data.labels, "<i8")
        manifest = {
            "manifest_version": MANIFEST_VERSION, "format": to, "library": LIBRARIES[to], "library_version": version,
            "count": n, "classes": [str(c) for c in getattr(data, "classes", [])],
            "name": str(getattr(data, "name", "")), "source": source or {},
            # stored sample j is source sample stored_order(count, seed)[j]
            "order": {"shuffled": order_seed is not None, "seed": None if order_seed is None else int(order_seed)},
            "split": str((source or {}).get("split") or getattr(data, "split", "train")),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),  # of the int64 little-endian labels
            "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            **image_policy(data, opts),
            "encoding": "jpg" if isinstance(data, ImageFiles) else opts.get("encoding", "raw"),
            "options": {k: v for k, v in opts.items() if isinstance(v, (int, float, str, type(None)))},
            "verified": {k: (None if v == float("inf") else v) for k, v in report.items() if k != "path"},
            "sha256": checksums, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2),
        }
        if to == "dali":  # the manifest travels inside the directory, so one rename publishes both
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
            _publish(tmp, out)
        else:
            with open(tmp_meta, "w") as f:
                json.dump(manifest, f, indent=1)
            _publish(tmp, out)
            os.replace(tmp_meta, meta)
    except OSError as e:  # disk full and other I/O errors: one line, the temporary removed below
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        _remove(tmp), _remove(tmp_meta)
    manifest["path"], manifest["manifest"] = out, meta
    return manifest


def load_manifest(to: str, out) -> dict:
    """The manifest written by convert for output `out` (DataError if missing or unreadable)."""
    path = manifest_path(to, os.fspath(out))
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest (was {out} written by pipelines.convert?)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e})") from None


# Stamps of converted outputs whose every byte was checked: (size, mtime, ctime, inode, device) of
# each file, as git's index keeps them, so the next open need not read the data again.
VERIFIED_DIR = os.path.join("~", ".cache", "fastssl", "verified")


# A file modified in the same clock tick as its check could keep the stamped times (file times are
# coarse: a few ms). Files changed less than this before a check are not stamped (git's "racy" rule).
RACY_NS = 1_000_000_000


def _identity(path) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _stamp_path(out, verified_dir):
    key = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:32]
    return os.path.join(os.path.expanduser(verified_dir or VERIFIED_DIR), key + ".json")


def check_checksums(to: str, out, verified_dir=None, manifest=None) -> bool:
    """Check the sha256 of every file listed in the manifest; DataError naming the first that differs.
    Reading every byte takes about as long as copying the data (minutes for ImageNet), so a full
    check that passes leaves a stamp in `verified_dir` (default VERIFIED_DIR, this user's cache):
    the manifest's own sha256 and each file's size, mtime, ctime, inode and device, taken before
    hashing. A later call whose files all still match it skips the hashing. Writing to a file
    changes its ctime, which no user-space call can set back (touch -r restores mtime only), so a
    modified, replaced or moved file is hashed again. Not caught: bytes that change on disk with no
    write through the file system (bit rot); convert.sha256 of a file checks that by hand.
    The stamp assumes a local file system: a network one (NFS) may serve cached file times for a
    while after another machine wrote the file. `manifest`: the manifest the caller opened (read
    again when None); the stamp names its content, so it vouches only for what was checked.
    Returns True when the files were hashed, False when the stamp vouched for them."""
    out = os.fspath(out)
    manifest = load_manifest(to, out) if manifest is None else manifest
    paths = {}
    for rel in manifest["sha256"]:
        path = os.path.join(out, rel) if os.path.isdir(out) else out
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing (listed in the manifest)")
        paths[rel] = path
    started = time.time_ns()
    content = json.dumps(manifest, sort_keys=True).encode()
    stamp = {"path": os.path.abspath(out), "manifest_sha256": hashlib.sha256(content).hexdigest(),
             "files": {rel: _identity(path) for rel, path in paths.items()}}
    where = _stamp_path(out, verified_dir)
    try:
        with open(where) as f:
            if json.load(f) == stamp:
                return False
    except (OSError, ValueError):
        pass  # no stamp, or an unreadable one: check in full
    for rel, want in manifest["sha256"].items():
        if sha256(paths[rel]) != want:
            raise DataError(f"{paths[rel]}: checksum differs from the manifest (corrupt or modified)")
    if any(max(ident[1], ident[2]) > started - RACY_NS for ident in stamp["files"].values()):
        return True  # changed within the timestamps' granularity of the check: no stamp (see RACY_NS)
    try:  # a cache: when it cannot be written the next open checks in full again
        os.makedirs(os.path.dirname(where), exist_ok=True)
        remove_dead_temporaries(os.path.dirname(where))
        tmp = f"{where}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(stamp, f)
        os.replace(tmp, where)
    except OSError:
        _remove(f"{where}.tmp-{os.getpid()}")  # a half-written stamp (disk full) is not left behind
    return True
