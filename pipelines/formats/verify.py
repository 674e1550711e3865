"""Is what is on disk what was written? Pixels against their source, files against their manifest.

    verify.psnr(decoded, source)                     # dB; inf when identical
    verify.check_checksums("dali", "data/cifar10_dali")   # DataError naming the first file that differs

The writers read every output back before publishing it (`psnr`, `compare`); opening a converted
dataset checks the sha256 of each of its files once (`check_checksums`, stamped afterwards).
"""

import hashlib
import json
import os
import time

import numpy as np

from ..errors import DataError
from ..files import cache_path, remove, remove_dead_temporaries, sha256
from .manifest import load_manifest


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio (dB) between two uint8 arrays; inf when identical."""
    return psnr_of(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2), a.size)


def psnr_of(squared_error, count) -> float:
    """PSNR (dB) of 8-bit values from the sum of squared differences over `count` values."""
    mse = squared_error / count
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def compare(out, files, pick, decoded, min_psnr) -> float:
    """PSNR (dB) of the decoded samples `pick` of output `out` (an iterable: one image at a time is
    enough) against the folder's images, which a writer read back; DataError naming `out` when a
    size differs or the pixels are too far apart. One image pair is held at a time: the squared
    error is summed exactly (int64) as it goes, so 1000 large photos cost one photo's memory."""
    error, count = 0, 0
    for i, image in zip(pick, decoded):
        source = files.image(int(i))
        if image.shape != source.shape:
            raise DataError(
                f"{out}: sample {int(i)} reads back as {image.shape[1]}x{image.shape[0]}, "
                f"its source {files.paths[int(i)]} is {source.shape[1]}x{source.shape[0]}"
            )
        diff = image.astype(np.int32) - source
        error, count = error + int(np.dot(diff.ravel(), diff.ravel().astype(np.int64))), count + diff.size
    value = psnr_of(error, count)
    if value < min_psnr:
        raise DataError(f"{out}: pixels too far from the source images ({value:.1f} dB PSNR < {min_psnr})")
    return value


# Stamps of converted outputs whose every byte was checked: (size, mtime, ctime, inode, device) of
# each file, as git's index keeps them, so the next open need not read the data again. A folder in
# files.cache_root() ($XDG_CACHE_HOME/fastssl, else ~/.cache/fastssl); an absolute path replaces it.
VERIFIED_DIR = "verified"


# A file modified in the same clock tick as its check could keep the stamped times (file times are
# coarse: a few ms). Files changed less than this before a check are not stamped (git's "racy" rule).
RACY_NS = 1_000_000_000


def _identity(path) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _stamp_path(out, verified_dir):
    key = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:32]
    where = os.path.expanduser(os.fspath(verified_dir)) if verified_dir else cache_path(VERIFIED_DIR)
    return os.path.join(where, key + ".json")


def check_checksums(to: str, out, verified_dir=None, manifest=None) -> bool:
    """Check the sha256 of every file listed in the manifest; DataError naming the first that differs.
    Reading every byte takes about as long as copying the data (minutes for ImageNet), so a full
    check that passes leaves a stamp in `verified_dir` (default VERIFIED_DIR, this user's cache):
    the manifest's own sha256 and each file's size, mtime, ctime, inode and device, taken before
    hashing. A later call whose files all still match it skips the hashing. Writing to a file
    changes its ctime, which no user-space call can set back (touch -r restores mtime only), so a
    modified, replaced or moved file is hashed again. Not caught: bytes that change on disk with no
    write through the file system (bit rot); files.sha256 of a file checks that by hand.
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
    stamp = {
        "path": os.path.abspath(out),
        "manifest_sha256": hashlib.sha256(content).hexdigest(),
        "files": {rel: _identity(path) for rel, path in paths.items()},
    }
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
        remove(f"{where}.tmp-{os.getpid()}")  # a half-written stamp (disk full) is not left behind
    return True
