"""CIFAR-10 and CIFAR-100 from their official python pickles, downloaded when absent, and the
CIFAR-10 sample shipped inside fastssl.

    from pipelines.data import cifar
    train = cifar.read_cifar("cifar10", "train", data_dir="data")   # ArrayDataset (50000, 32, 32, 3) uint8
    sample = cifar.read_sample("test")                               # 1,000 real CIFAR-10 images, no download

Data is found in `data_dir`, else `$FASTSSL_DATA`, else files.DEFAULT_ROOT in files.cache_root();
that directory may be the parent of `cifar-10-batches-py/` (`cifar-100-python/`) or that folder
itself. When the folder is absent and download=True, the official archive is fetched, its md5
checked and it is extracted atomically; an existing but broken folder is reported, never replaced.

Files are validated by structure (keys, shapes, dtypes, label ranges, image counts), not by md5: the
CIFAR copies fastssl bundles lack the unused `filenames` key, so their md5s are not the official ones
while their pixels and labels are (CIFAR-10 exactly; CIFAR-100 is a JPEG-recompressed copy). Any
problem raises `DataError` with one line naming the file.
"""

import hashlib
import http.client
import io
import os
import pickle
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import urllib.parse
import urllib.request
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..errors import DataError, one_line
from ..files import data_root
from .arrays import UNLABELLED, ArrayDataset

DOWNLOAD_TIMEOUT = 20  # seconds without progress before a download is given up
# Seconds to resolve the archive's host first: urlopen's timeout does not bound the DNS lookup, which
# on an offline machine can hang far longer; offline then answers in one line at once.
RESOLVE_TIMEOUT = 3
SAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "cifar10_sample.npz"
)


# Train-split per-channel mean and std in [0, 1] units (population std over all pixels), as published
# and checked against the data by the tests.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class Cifar(NamedTuple):
    title: str
    folder: str  # what the official archive unpacks to
    files: dict  # split -> (file names, images per file)
    meta: str  # file holding the class names
    names_key: bytes  # class names inside `meta`
    labels_key: bytes  # labels inside each batch
    num_classes: int
    url: str
    md5: str  # of the official archive
    mean: tuple
    std: tuple


ARCHIVES = {
    "cifar10": Cifar(
        "CIFAR-10",
        "cifar-10-batches-py",
        {"train": ([f"data_batch_{i}" for i in range(1, 6)], 10000), "test": (["test_batch"], 10000)},
        "batches.meta",
        b"label_names",
        b"labels",
        10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": Cifar(
        "CIFAR-100",
        "cifar-100-python",
        {"train": (["train"], 50000), "test": (["test"], 10000)},
        "meta",
        b"fine_label_names",
        b"fine_labels",
        100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


def read_cifar(name, split, data_dir=None, download=True) -> ArrayDataset:
    spec = ARCHIVES[name]
    folder = find_cifar(name, data_dir, download)
    classes = _class_names(os.path.join(folder, spec.meta), spec)
    files, count = spec.files[split]
    parts = [_read_batch(os.path.join(folder, f), spec, count) for f in files]
    rows = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    images = np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planar rows -> NHWC
    return ArrayDataset(images, labels, classes, name, spec.mean, spec.std)


def find_cifar(name, data_dir=None, download=True) -> str:
    """The folder holding dataset `name`'s files (`cifar-10-batches-py` or `cifar-100-python`),
    downloading it when absent and allowed."""
    spec = ARCHIVES[name]
    root = data_root(data_dir)
    if os.path.basename(root) == spec.folder or os.path.isfile(os.path.join(root, spec.meta)):
        if os.path.isdir(root):
            return root  # pointed at the folder itself
        root = os.path.dirname(root)
    folder = os.path.join(root, spec.folder)
    if os.path.isdir(folder):
        return folder
    where = (
        f"put the extracted {spec.folder}/ folder in {root}, or point --data-dir (or $FASTSSL_DATA) at the "
        f"folder that holds it"
    )
    if not download:
        raise DataError(f"{spec.title} not found: no {folder}; {where}")
    _download(spec, root, where)
    return folder


def read_union(split, data_dir=None, download=True) -> ArrayDataset:
    """CIFAR-10 plus CIFAR-100's training images without their labels: more unlabelled data for
    pretraining, evaluated as CIFAR-10 (the test split, the classes and the labelled part are CIFAR-10's)."""
    c10 = read_cifar("cifar10", split, data_dir, download)
    if split == "test":
        return ArrayDataset(c10.images, c10.labels, c10.classes, "cifar10+cifar100", c10.mean, c10.std)
    c100 = read_cifar("cifar100", "train", data_dir, download)
    images = np.concatenate([c10.images, c100.images])
    labels = np.concatenate([c10.labels, np.full(len(c100), UNLABELLED, np.int64)])
    # CIFAR-10's statistics for both splits: train and test must be normalised alike, and the
    # features are judged on CIFAR-10.
    return ArrayDataset(images, labels, c10.classes, "cifar10+cifar100", c10.mean, c10.std)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR files contain (numpy arrays, bytes), so a damaged or foreign file
    fails cleanly instead of running code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module == "numpy.core.multiarray":  # the name old pickles use; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(path):
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated, corrupt or not a pickle at all: every failure is the file's fault
        raise DataError(f"{path}: unreadable (truncated or corrupt pickle; {one_line(e)})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, got {type(d).__name__}")
    return d


def _read_batch(path, spec, count):
    """One CIFAR batch file -> (uint8 (count, 3072) rows, int64 (count,) labels), validated."""
    d = _unpickle(path)
    for key in (b"data", spec.labels_key):
        if key not in d:
            have = ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in d)
            raise DataError(f"{path}: missing key {key.decode()} (has {have})")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (count, 3072):
        raise DataError(
            f"{path}: data must be uint8 ({count}, 3072), got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    try:
        labels = np.asarray(d[spec.labels_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: {spec.labels_key.decode()} are not integers") from None
    if labels.shape != (count,):
        raise DataError(f"{path}: expected {count} labels, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"{path}: labels must lie in 0..{spec.num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return data, labels


def _class_names(path, spec):
    d = _unpickle(path)
    names = d.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{path}: expected {spec.num_classes} class names under {spec.names_key.decode()}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _open(url):
    """The download stream (a seam for tests). Raises OSError / HTTPException when unreachable."""
    _resolve(urllib.parse.urlsplit(url).hostname)
    return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT)


def _resolve(host) -> None:
    """Raises OSError unless `host` resolves within RESOLVE_TIMEOUT seconds (the lookup runs in a
    daemon thread: getaddrinfo itself takes no timeout)."""
    box = {}

    def lookup():
        try:
            box["ok"] = socket.getaddrinfo(host, 443)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(RESOLVE_TIMEOUT)
    if "ok" not in box:
        raise box.get("error") or OSError(f"no DNS answer for {host} within {RESOLVE_TIMEOUT} s (offline?)")


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _extract(archive, folder, root):
    """Unpack `folder` from the tar `archive` into root/folder atomically: extract into a temporary
    directory beside it, then one rename. A concurrent process that got there first wins."""
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=root)
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name == folder or m.name.startswith(folder + "/")]
            if not members:
                raise DataError(f"{archive}: no {folder}/ inside the archive")
            try:
                tar.extractall(tmp, members=members, filter="data")  # refuses links and paths leaving tmp
            except TypeError:  # Python < 3.11.4 has no filters; the names were checked above
                tar.extractall(tmp, members=members)
        try:
            os.rename(os.path.join(tmp, folder), os.path.join(root, folder))
        except OSError:
            if not os.path.isdir(os.path.join(root, folder)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(spec, root, where):
    # Connect before creating anything: offline (or a mistyped --data-dir) gives one error line and
    # leaves no empty folder behind.
    try:
        response = _open(spec.url)
    except (OSError, http.client.HTTPException) as e:
        raise DataError(
            f"{spec.title} not found in {root} and the download from {spec.url} failed "
            f"({one_line(e)}); {where}"
        ) from None
    with response:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise DataError(
                f"{spec.title} not found and {root} cannot be created ({one_line(e)}); {where}"
            ) from None
        fd, archive = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=root)
        try:
            print(f"downloading {spec.title} from {spec.url} to {root}", file=sys.stderr)
            try:
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
            except (OSError, http.client.HTTPException) as e:
                raise DataError(
                    f"the download of {spec.title} from {spec.url} failed ({one_line(e)}); {where}"
                ) from None
            got = _md5(archive)
            if got != spec.md5:
                raise DataError(
                    f"{spec.url}: downloaded archive has md5 {got}, expected {spec.md5} "
                    f"(incomplete or altered download); {where}"
                )
            try:
                _extract(archive, spec.folder, root)
            except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                raise DataError(
                    f"{spec.url}: cannot extract the archive into {root} ({one_line(e)}); {where}"
                ) from None
        finally:
            os.remove(archive)


def read_sample(split) -> ArrayDataset:
    """The embedded CIFAR-10 sample: the first 200 (train) / 100 (test) images of every class of the
    official splits, stored as lossless WebP and checked against a SHA-256 of the pixels on load."""
    try:
        with np.load(SAMPLE) as z:
            blob, offsets = z[f"{split}/webp"], z[f"{split}/offsets"]
            labels, digest, classes = (
                z[f"{split}/labels"],
                str(z[f"{split}/sha256"]),
                [str(c) for c in z["classes"]],
            )
        images = decode_images(blob, offsets)
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DataError(
            f"{SAMPLE}: unreadable ({one_line(e)}); reinstall fastssl or rebuild it with "
            "scripts/make_cifar10_sample.py"
        ) from None
    if hashlib.sha256(images.tobytes()).hexdigest() != digest:
        raise DataError(
            f"{SAMPLE}: decoded {split} pixels do not match their SHA-256 (damaged file or a Pillow "
            "without lossless WebP)"
        )
    return ArrayDataset(images, labels.astype(np.int64), classes, "cifar10-sample", CIFAR10_MEAN, CIFAR10_STD)


def decode_images(blob, offsets) -> np.ndarray:
    """Concatenated encoded images (uint8 bytes, (n + 1,) offsets) -> uint8 (n, H, W, 3) RGB."""
    first = np.asarray(Image.open(io.BytesIO(blob[offsets[0] : offsets[1]].tobytes())).convert("RGB"))
    out = np.empty((len(offsets) - 1, *first.shape), np.uint8)
    for i in range(len(out)):
        out[i] = np.asarray(
            Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")
        )
    return out
