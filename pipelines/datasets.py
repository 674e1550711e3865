"""Dataset readers: CIFAR-10, CIFAR-100, an embedded CIFAR-10 sample and image folders -> uint8 arrays.

    from pipelines import datasets
    data = datasets.load("cifar10", "train", data_dir="data")   # ArrayDataset: images (50000, 32, 32, 3) uint8
    data = datasets.load("cifar10-sample", "test")                # 1,000 real CIFAR-10 images, shipped inside fastssl
    data = datasets.load("cifar100", "train", subset=5000)        # first 50 images of each class
    data = datasets.load("imagefolder", "train", data_dir="photos", image_size=64)
    train_idx, val_idx = datasets.stratified_split(data.labels, 0.1, seed=0)
    parts = datasets.load_split("cifar10", "80/10/10", seed=0)    # 60,000 pooled -> 48,000 / 6,000 / 6,000

Data is found in `data_dir`, else `$FASTSSL_DATA`, else DEFAULT_ROOT; for CIFAR that directory may
be the parent of `cifar-10-batches-py/` (`cifar-100-python/`) or that folder itself. When the folder
is absent and download=True, the official archive is fetched, its md5 checked and it is extracted
atomically; an existing but broken folder is reported, never replaced.

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
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import sources
from .errors import DataError

DATASETS = {
    "cifar10": "CIFAR-10: 50,000 train + 10,000 test 32x32 images, 10 classes (cifar-10-batches-py/)",
    "cifar100": "CIFAR-100: 50,000 train + 10,000 test 32x32 images, 100 fine classes (cifar-100-python/)",
    "cifar10-sample": "2,000 train + 1,000 test CIFAR-10 images shipped with fastssl (no download)",
    "imagefolder": "data_dir/<class>/*.jpg|png, optionally under data_dir/train and data_dir/test",
    "cifar10+cifar100": "pretraining on 100,000 images: CIFAR-10 train + CIFAR-100 train used without labels "
                        "(label -1); its test split is CIFAR-10's",
}


class Choices(list):
    """The names of DATASETS as a command's --dataset choices, which also admit the path of a
    converted dataset (a .beton file or DALI shard directory; see sources.py)."""

    def __contains__(self, name):
        return list.__contains__(self, name) or (isinstance(name, str) and sources.is_converted_path(name))


UNLABELLED = -1  # label of images that carry none (the CIFAR-100 half of cifar10+cifar100)
SPLITS = ("train", "test")
DEFAULT_ROOT = os.path.join("~", ".cache", "fastssl", "data")
DOWNLOAD_TIMEOUT = 20  # seconds without progress before a download is given up
# Seconds to resolve the archive's host first: urlopen's timeout does not bound the DNS lookup, which
# on an offline machine can hang far longer; offline then answers in one line at once.
RESOLVE_TIMEOUT = 3
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "cifar10_sample.npz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

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
    "cifar10": Cifar("CIFAR-10", "cifar-10-batches-py",
                     {"train": ([f"data_batch_{i}" for i in range(1, 6)], 10000), "test": (["test_batch"], 10000)},
                     "batches.meta", b"label_names", b"labels", 10,
                     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                     CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": Cifar("CIFAR-100", "cifar-100-python", {"train": (["train"], 50000), "test": (["test"], 10000)},
                      "meta", b"fine_label_names", b"fine_labels", 100,
                      "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                      CIFAR100_MEAN, CIFAR100_STD),
}


@dataclass(eq=False, repr=False)
class ArrayDataset:
    """A labelled image set held in memory.

    images: uint8 (N, H, W, 3), NHWC RGB; labels: int64 (N,) in [0, len(classes)), or UNLABELLED (-1)
    for images without one (cifar10+cifar100); name: dataset name;
    mean, std: per-channel statistics of the training split in [0, 1] units, used to normalise.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list
    name: str
    mean: tuple
    std: tuple

    def __post_init__(self):
        x = self.images
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise DataError(f"{self.name}: images must be a uint8 array (N, H, W, 3), got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        self.labels = np.asarray(self.labels)
        if self.labels.shape != (len(self.images),) or not np.issubdtype(self.labels.dtype, np.integer):
            raise DataError(f"{self.name}: labels must be {len(self.images)} integers, got "
                            f"{self.labels.dtype} {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)
        self.classes = list(self.classes)
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError(f"{self.name}: mean and std need 3 values each, got {self.mean}, {self.std}")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(s) and s > 0 for s in self.std):
            raise DataError(f"{self.name}: mean must be finite and std positive, got {self.mean}, {self.std}")
        if len(self.images) == 0:
            raise DataError(f"{self.name}: the dataset is empty")

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        n, h, w = self.images.shape[:3]
        return f"ArrayDataset({self.name!r}, {n} images {h}x{w}, {len(self.classes)} classes)"


def as_dataset(data) -> ArrayDataset:
    """`data` as a validated ArrayDataset: the one check every pipeline's build runs on its input.
    An ArrayDataset validated itself when it was made; anything else with the same attributes
    (images, labels, mean, std; optional classes, name) is checked by making one (no pixel copy)."""
    if isinstance(data, ArrayDataset):
        return data
    missing = [k for k in ("images", "labels", "mean", "std") if not hasattr(data, k)]
    if missing:
        raise DataError(f"a dataset needs images, labels, mean and std; {type(data).__name__} lacks {', '.join(missing)}")
    return ArrayDataset(data.images, data.labels, getattr(data, "classes", []), getattr(data, "name", "data"),
                        data.mean, data.std)


def load(name, split="train", data_dir=None, subset=None, seed=0, download=True, image_size=None) -> ArrayDataset:
    """Read dataset `name` (a key of DATASETS), split "train" or "test".

    data_dir: where the data lives (else $FASTSSL_DATA, else DEFAULT_ROOT; the embedded sample needs none).
    subset: keep only the first `subset` images of the split, class-balanced (see `first_per_class`);
    deterministic, so `seed` does not change it (the argument is accepted for callers that pass one).
    download: fetch the official CIFAR archive when the folder is absent.
    image_size: imagefolder only; resize the shorter side to this and centre-crop a square.
    `name` may also be the path of a converted dataset: a sources.ConvertedDataset is returned (its
    images stay in the file; image_size is then the side of the views made from it).
    """
    if name not in DATASETS and sources.is_converted_path(name):  # streamed, see sources.py
        data = sources.open_split(name, split)
        data = data.take(first_per_class(data.labels, subset, len(data.classes))) if subset is not None else data
        return sources.sized(data, image_size, None)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}, or give the path of a "
                        "converted dataset (.beton file or DALI shard directory)")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if image_size is not None and name != "imagefolder":
        raise DataError(f"image_size applies to imagefolder only, not {name}")
    if name in ARCHIVES:
        data = read_cifar(name, split, data_dir, download)
    elif name == "cifar10+cifar100":
        if subset is not None:
            raise DataError("subset is not supported for cifar10+cifar100 (its extra images have no labels to balance)")
        data = read_union(split, data_dir, download)
    elif name == "cifar10-sample":
        data = read_sample(split)
    else:
        data = read_imagefolder(split, data_dir, image_size)
    if subset is not None:
        keep = first_per_class(data.labels, subset, len(data.classes))
        data = ArrayDataset(data.images[keep], data.labels[keep], data.classes, data.name, data.mean, data.std)
    return data


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


# ------------------------------------------------------------------------------------- class-balanced picks


def first_per_class(labels, n, num_classes=None) -> np.ndarray:
    """Indices of the first n images, class-balanced: the earliest n // C images of every class (the
    first n % C classes by label take one more), in the original order. int64 (n,), sorted."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= len(labels):
        raise DataError(f"subset must be an integer in 1..{len(labels)} (the images available), got {n!r}")
    per, extra = divmod(int(n), num_classes)
    picks = []
    for c in range(num_classes):
        want = per + (c < extra)
        have = np.flatnonzero(labels == c)
        if len(have) < want:
            raise DataError(f"subset {n} needs {want} images of class {c}, which has only {len(have)}")
        picks.append(have[:want])
    return np.sort(np.concatenate(picks)).astype(np.int64)


def stratified_split(labels, fraction, seed=0):
    """Class-balanced random split: (train_idx, val_idx), disjoint sorted int64 arrays covering all of
    `labels`. Each class with >= 2 images gives round(fraction * count) of them (at least 1, never all)
    to validation, drawn with numpy's default_rng(seed): a pure function of (labels, fraction, seed)."""
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue  # a lone image stays in training
        k = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        val.append(rng.permutation(members)[:k])
    if not val:
        raise DataError("no class has 2 images: cannot hold out a validation split")
    val = np.sort(np.concatenate(val)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val, assume_unique=True)
    return train, val


OFFICIAL = "official"  # the dataset's own train/test split


def parse_split(text) -> tuple[float, float, float] | None:
    """`--split` text -> (train, val, test) percentages, or None for "official".
    "80/10/10": three positive numbers separated by '/', summing to 100."""
    if text == OFFICIAL:
        return None
    parts = str(text).split("/")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(parts) != 3 or len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"--split: expected 'official' or three positive train/val/test percentages like 80/10/10, got {text!r}")
    if abs(sum(values) - 100) > 1e-6:
        raise DataError(f"--split: the percentages must add up to 100, got {text!r} (sum {sum(values):g})")
    return values


def split_three(labels, percents, seed=0):
    """Stratified, seeded train/val/test split: (train_idx, val_idx, test_idx), disjoint sorted int64
    arrays covering all of `labels`. Each class of n images gives round(p_test% n) to test and
    round(p_val% n) to validation (drawn with numpy's default_rng(seed)), the rest to train: a pure
    function of (labels, percents, seed). Every class must keep at least one training image."""
    labels = np.asarray(labels)
    _, p_val, p_test = (float(p) / 100 for p in percents)
    rng = np.random.default_rng(seed)
    val, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k_test, k_val = (int(np.floor(p * len(members) + 0.5)) for p in (p_test, p_val))
        if k_test + k_val >= len(members):
            raise DataError(f"class {c} has {len(members)} images: too few for a {percents} split")
        test.append(members[:k_test])
        val.append(members[k_test:k_test + k_val])
    val, test = (np.sort(np.concatenate(v)).astype(np.int64) for v in (val, test))
    if not len(val) or not len(test):
        raise DataError(f"the {percents} split leaves the validation or test part empty ({len(labels)} images)")
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), np.concatenate([val, test]))
    return train, val, test


def pooled(name, data_dir=None, download=True) -> ArrayDataset:
    """Every labelled image of dataset `name`: its train split followed by its test split (an image
    folder without train/ and test/ subfolders is one pool already). Normalised with the train
    split's statistics, as the official split is."""
    if name == "cifar10+cifar100":
        raise DataError("a train/val/test split needs labels for every image; cifar10+cifar100 has unlabelled ones")
    train = load(name, "train", data_dir, download=download)
    if not isinstance(train, ArrayDataset):  # a converted file streams its images: nothing to pool
        raise DataError(f"a train/val/test split pools images in memory; {name} is a converted dataset, use its name")
    if name == "imagefolder" and not os.path.isdir(os.path.join(_root(data_dir), "train")):
        return train
    test = load(name, "test", data_dir, download=download)
    return ArrayDataset(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]),
                        train.classes, train.name, train.mean, train.std)


def take(data, idx) -> ArrayDataset:
    """The images `idx` of `data`, as an ArrayDataset with its classes and statistics."""
    if isinstance(data, sources.ConvertedDataset):  # the same samples, still in their file
        return data.take(idx)
    return ArrayDataset(data.images[idx], data.labels[idx], data.classes, data.name, data.mean, data.std)


def load_split(name, split, data_dir=None, seed=0, download=True) -> dict:
    """{"train", "val", "test"} ArrayDatasets of `split` ("80/10/10", stratified over the pooled
    labelled images, seeded by `seed`), or {"train", "test"} (val None) for "official"."""
    percents = parse_split(split)
    if percents is None:
        return {"train": load(name, "train", data_dir, download=download), "val": None,
                "test": load(name, "test", data_dir, download=download)}
    pool = pooled(name, data_dir, download)
    parts = split_three(pool.labels, percents, seed)
    return {part: take(pool, idx) for part, idx in zip(("train", "val", "test"), parts)}


def channel_stats(images):
    """Per-channel mean and population std of uint8 images (N, H, W, 3) in [0, 1] units, exact (via
    256-bin histograms, so no float copy of the whole array)."""
    levels = np.arange(256, dtype=np.float64) / 255
    mean, std = [], []
    for c in range(3):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = hist @ levels / hist.sum()
        mean.append(float(m))
        std.append(float(np.sqrt(hist @ (levels - m) ** 2 / hist.sum())))
    return tuple(mean), tuple(std)


# ------------------------------------------------------------------------------------------------ CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR files contain (numpy arrays, bytes), so a damaged or foreign file
    fails cleanly instead of running code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module == "numpy.core.multiarray":  # the name old pickles use; numpy 2 moved it
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _one_line(e):
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]


def _unpickle(path):
    if not os.path.isfile(path):
        raise DataError(f"missing file {path}")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated, corrupt or not a pickle at all: every failure is the file's fault
        raise DataError(f"{path}: unreadable (truncated or corrupt pickle; {_one_line(e)})") from None
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
        raise DataError(f"{path}: data must be uint8 ({count}, 3072), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    try:
        labels = np.asarray(d[spec.labels_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: {spec.labels_key.decode()} are not integers") from None
    if labels.shape != (count,):
        raise DataError(f"{path}: expected {count} labels, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels must lie in 0..{spec.num_classes - 1}, found {labels.min()}..{labels.max()}")
    return data, labels


def _class_names(path, spec):
    d = _unpickle(path)
    names = d.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{path}: expected {spec.num_classes} class names under {spec.names_key.decode()}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _root(data_dir):
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir or os.environ.get("FASTSSL_DATA") or DEFAULT_ROOT)))


def find_cifar(name, data_dir=None, download=True) -> str:
    """The folder holding dataset `name`'s files (`cifar-10-batches-py` or `cifar-100-python`),
    downloading it when absent and allowed."""
    spec = ARCHIVES[name]
    root = _root(data_dir)
    if os.path.basename(root) == spec.folder or os.path.isfile(os.path.join(root, spec.meta)):
        if os.path.isdir(root):
            return root  # pointed at the folder itself
        root = os.path.dirname(root)
    folder = os.path.join(root, spec.folder)
    if os.path.isdir(folder):
        return folder
    where = (f"put the extracted {spec.folder}/ folder in {root}, or point --data-dir (or $FASTSSL_DATA) at the "
             f"folder that holds it")
    if not download:
        raise DataError(f"{spec.title} not found: no {folder}; {where}")
    _download(spec, root, where)
    return folder


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
        raise DataError(f"{spec.title} not found in {root} and the download from {spec.url} failed "
                        f"({_one_line(e)}); {where}") from None
    with response:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise DataError(f"{spec.title} not found and {root} cannot be created ({_one_line(e)}); {where}") from None
        fd, archive = tempfile.mkstemp(prefix=".download-", suffix=".tar.gz", dir=root)
        try:
            print(f"downloading {spec.title} from {spec.url} to {root}", file=sys.stderr)
            try:
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
            except (OSError, http.client.HTTPException) as e:
                raise DataError(f"the download of {spec.title} from {spec.url} failed ({_one_line(e)}); {where}") from None
            got = _md5(archive)
            if got != spec.md5:
                raise DataError(f"{spec.url}: downloaded archive has md5 {got}, expected {spec.md5} "
                                f"(incomplete or altered download); {where}")
            try:
                _extract(archive, spec.folder, root)
            except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
                raise DataError(f"{spec.url}: cannot extract the archive into {root} ({_one_line(e)}); {where}") from None
        finally:
            os.remove(archive)


# ------------------------------------------------------------------------------------ the embedded sample


def decode_images(blob, offsets) -> np.ndarray:
    """Concatenated encoded images (uint8 bytes, (n + 1,) offsets) -> uint8 (n, H, W, 3) RGB."""
    from PIL import Image

    first = np.asarray(Image.open(io.BytesIO(blob[offsets[0]:offsets[1]].tobytes())).convert("RGB"))
    out = np.empty((len(offsets) - 1, *first.shape), np.uint8)
    for i in range(len(out)):
        out[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
    return out


def read_sample(split) -> ArrayDataset:
    """The embedded CIFAR-10 sample: the first 200 (train) / 100 (test) images of every class of the
    official splits, stored as lossless WebP and checked against a SHA-256 of the pixels on load."""
    try:
        with np.load(SAMPLE) as z:
            blob, offsets = z[f"{split}/webp"], z[f"{split}/offsets"]
            labels, digest, classes = z[f"{split}/labels"], str(z[f"{split}/sha256"]), [str(c) for c in z["classes"]]
        images = decode_images(blob, offsets)
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DataError(f"{SAMPLE}: unreadable ({_one_line(e)}); reinstall fastssl or rebuild it with "
                        "scripts/make_cifar10_sample.py") from None
    if hashlib.sha256(images.tobytes()).hexdigest() != digest:
        raise DataError(f"{SAMPLE}: decoded {split} pixels do not match their SHA-256 (damaged file or a Pillow "
                        "without lossless WebP)")
    return ArrayDataset(images, labels.astype(np.int64), classes, "cifar10-sample", CIFAR10_MEAN, CIFAR10_STD)


# ------------------------------------------------------------------------------------------ image folders


def _class_files(root):
    """{class name: sorted image paths} for root/<class>/**/*.{jpg,jpeg,png}, classes sorted by name."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/*.jpg|png)")
    out = {}
    for c in classes:
        files = []
        for d, subdirs, names in os.walk(os.path.join(root, c)):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
            files += [os.path.join(d, n) for n in sorted(names)
                      if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
        if not files:
            raise DataError(f"{os.path.join(root, c)}: no images (.jpg, .jpeg, .png)")
        out[c] = files
    return out


def _open_rgb(path, image_size):
    """One image file -> uint8 (H, W, 3); with image_size S: shorter side resized to S (bilinear), centre
    S x S crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes fully, so truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({_one_line(e)})") from None
    if image_size is not None:  # torchvision's Resize(S) + CenterCrop(S), same sizes and rounding
        w, h = img.size
        short, long = min(w, h), max(w, h)
        long = int(image_size * long / short)
        w, h = (image_size, long) if w <= h else (long, image_size)
        img = img.resize((w, h), Image.BILINEAR)
        top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
        img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img)


def _read_folder(root, image_size, classes=None):
    files = _class_files(root)
    if classes is None:
        classes = list(files)
    elif not set(files) <= set(classes):
        raise DataError(f"{root}: class folders {sorted(set(files) - set(classes))} are not in the training split")
    images, labels = [], []
    for c, paths in files.items():
        for path in paths:
            img = _open_rgb(path, image_size)
            if images and img.shape != images[0].shape:
                raise DataError(f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the first image's "
                                f"{images[0].shape[1]}x{images[0].shape[0]}; pass image_size to resize them all")
            images.append(img)
            labels.append(classes.index(c))
    return np.stack(images), np.asarray(labels, np.int64), classes


def read_imagefolder(split, data_dir=None, image_size=None) -> ArrayDataset:
    """root/<class>/*.{jpg,jpeg,png}; with root/train (and root/test) the split picks the subfolder,
    otherwise the split is ignored. mean/std are computed from the training images."""
    if isinstance(image_size, bool) or image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not (data_dir or os.environ.get("FASTSSL_DATA")):
        raise DataError("imagefolder needs a folder: pass --data-dir (or set $FASTSSL_DATA)")
    root = _root(data_dir)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    if os.path.isdir(os.path.join(root, "train")):
        train_images, train_labels, classes = _read_folder(os.path.join(root, "train"), image_size)
        if split == "train":
            images, labels = train_images, train_labels
        else:
            if not os.path.isdir(os.path.join(root, split)):
                raise DataError(f"{root} has train/ but no {split}/ folder")
            images, labels, _ = _read_folder(os.path.join(root, split), image_size, classes)
    else:
        images, labels, classes = _read_folder(root, image_size)
        train_images = images
    mean, std = channel_stats(train_images)
    return ArrayDataset(images, labels, classes, "imagefolder", mean, std)


# ------------------------------------------------------------------------ shared by the converters and caches


def fingerprint(data) -> str:
    """Cache key of a dataset: name, count, shape and a hash of every pixel and label."""
    h = hashlib.blake2b(digest_size=10)
    h.update(np.ascontiguousarray(data.images).data)
    h.update(np.ascontiguousarray(data.labels, dtype=np.int64).data)
    n, height, width = data.images.shape[:3]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(getattr(data, "name", "data")))
    return f"{name}-{n}-{height}x{width}-{h.hexdigest()}"


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio (dB) between two uint8 arrays; inf when identical."""
    return psnr_of(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2), a.size)


def psnr_of(squared_error, count) -> float:
    """PSNR (dB) of 8-bit values from the sum of squared differences over `count` values."""
    mse = squared_error / count
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
