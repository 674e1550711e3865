"""ArrayDataset <-> FFCV .beton files: write, sanity-check, read back, verify.

    from pipelines import datasets
    from pipelines.formats import ffcv as ffcv_format
    data = datasets.load("cifar10", "train", data_dir="data")
    ffcv_format.write(data, "cifar10_train.beton")                      # raw uint8, exact
    ffcv_format.write(data, "big.beton", encoding="jpg", quality=90, max_resolution=256)
    ffcv_format.verify("cifar10_train.beton", data)                     # DataError on mismatch

A .beton holds two fields, in this order: "image" (`RGBImageField`, HWC uint8) and "label"
(`IntField`). Raw mode stores the pixels as they are, so reading back is bit-exact; "jpg" trades
exactness for size (only worth it for images much larger than CIFAR's 32x32). Needs the `ffcv` extra:
`pip install -e .[ffcv]` after `apt-get install pkg-config libopencv-dev libturbojpeg0-dev`.
"""

import contextlib
import importlib.metadata
import io
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from ..data.imagefolder import ImageFiles
from ..errors import DataError
from .verify import compare, psnr

EXTRA = "ffcv"
ENCODINGS = ("raw", "jpg")
INSTALL_HINT = (
    "FFCV is not installed: `apt-get install pkg-config libopencv-dev libturbojpeg0-dev` "
    "then `pip install -e .[ffcv]`"
)
# Decoding a wrong or shuffled image gives ~10 dB; JPEG at any sane quality stays well above 20 dB.
MIN_JPG_PSNR = 20.0


@contextlib.contextmanager
def torch_threads_kept():
    """FFCV sets torch's global thread count to its own worker count (to 1 on import, to `workers`
    when a loader is built or an epoch starts); that must not leak into the rest of the process."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


try:
    with torch_threads_kept():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.types import ALLOC_TABLE_TYPE, HeaderType
        from ffcv.writer import DatasetWriter
    _IMPORT_ERROR = None
except (ImportError, RuntimeError, OSError) as e:  # OSError: libffcv's OpenCV/turbojpeg libs missing
    _IMPORT_ERROR = e


def require():
    """Raise DataError (one line, naming the extra and the apt packages) when FFCV is unusable."""
    if _IMPORT_ERROR is not None:
        raise DataError(f"{INSTALL_HINT} ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})")


def VERSION() -> str:
    """The installed ffcv release (ffcv.__version__ still says 0.0.3rc1 in 1.0.2)."""
    require()
    return importlib.metadata.version("ffcv")


class _Samples:
    """The indexable dataset FFCV's writer wants: sample i -> (HWC uint8 array, int label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _check_data(data):
    images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
    ):
        raise DataError(
            f"images must be a uint8 array of shape (N, H, W, 3), got "
            f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}"
        )
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(images) == 0:
        raise DataError("cannot write an empty dataset")
    return images, labels


def write(
    data,
    out_path,
    *,
    encoding="raw",
    quality=90,
    max_resolution=None,
    workers=None,
    overwrite=False,
    progress=False,
):
    """Write `data` (ArrayDataset: images (N,H,W,3) uint8, labels (N,) int) to `out_path` as .beton.

    encoding: "raw" (exact pixels) or "jpg" (JPEG at `quality`, 1-100). max_resolution: shrink images
    whose longer side exceeds it (OpenCV INTER_AREA, FFCV's own resizer) before encoding.
    workers: writer processes (default: all cores). The file appears atomically (tmp + os.replace);
    an existing `out_path` is refused unless overwrite=True. Returns out_path. A failing writer
    process (disk full, ...) is a DataError, never a hang (see _write_bounded); `progress` is
    accepted but FFCV's own bar is not shown, as its stderr is captured for that purpose.
    """
    require()
    if isinstance(data, ImageFiles):  # each image at its own size: decoded one by one, stored as JPEG
        samples, encoding = data, "jpg"
    else:
        samples = _Samples(*_check_data(data))
    if encoding not in ENCODINGS:
        raise DataError(f"unknown .beton encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    if not 1 <= int(quality) <= 100:
        raise DataError(f"JPEG quality must be in 1..100, got {quality}")
    if max_resolution is not None and int(max_resolution) < 1:
        raise DataError(f"max_resolution must be a positive number of pixels, got {max_resolution}")
    out_path = os.fspath(out_path)
    if os.path.exists(out_path) and not overwrite:
        raise DataError(f"{out_path} already exists (pass overwrite=True to replace it)")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)

    fields = {
        "image": RGBImageField(write_mode=encoding, max_resolution=max_resolution, jpeg_quality=int(quality)),
        "label": IntField(),
    }
    tmp = f"{out_path}.tmp-{os.getpid()}"
    try:
        _write_bounded(tmp, fields, samples, workers or os.cpu_count(), out_path)
        check(tmp)  # never publish a file that FFCV itself cannot open
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


# How long the writer host may go on after one of its workers has exited before it counts as hung
# (a worker killed by a signal leaves the host waiting forever).
STALL_S = 120.0
# How long the written file and FFCV's progress log may both stay unchanged before the writer counts
# as hung (FFCV reports progress per chunk of at most 1000 images).
WRITE_STALL_S = 600.0


def _write_bounded(path, fields, samples, workers, name):
    """Run FFCV's DatasetWriter in a child process (its own process group, stderr to a file) and
    wait for it with bounds: a worker that raises (disk full, say) leaves FFCV's parent spinning
    forever, so a traceback in that file, or a worker exited while the host runs on for STALL_S,
    ends the whole group and becomes one DataError naming the file and the error."""
    err = tempfile.NamedTemporaryFile("w+", prefix="ffcv-writer-", suffix=".log", delete=False)
    err.close()

    def child():
        os.setpgid(0, 0)
        # Workers inherit this stderr: their tracebacks land in the file (FFCV's tqdm bar too).
        sys.stderr = open(err.name, "w", buffering=1)
        os.dup2(sys.stderr.fileno(), 2)
        writer = DatasetWriter(path, fields, num_workers=workers)
        writer.from_indexed_dataset(samples, chunksize=max(1, min(1000, len(samples) // 16)))

    proc = multiprocessing.get_context("fork").Process(target=child, daemon=False)
    try:
        proc.start()
        dead_since, seen, still_since, why = None, None, time.monotonic(), "an FFCV writer process died"
        while True:
            proc.join(0.2)
            if proc.exitcode is not None:
                break
            log = _read(err.name)
            if "Traceback" in log:
                break
            # A writer forked while other threads held a lock (DALI's, say) can hang before writing
            # anything: neither the file nor FFCV's progress log changing for WRITE_STALL_S = hung.
            now = (os.path.getsize(path) if os.path.exists(path) else -1, len(log))
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since > WRITE_STALL_S:
                why = "an FFCV writer process hung"
                break
            # FFCV never joins its workers, so a worker that has exited is a zombie child of the
            # writer host. One that died mid-write leaves the host waiting forever for its images
            # (and may hold the work queue's lock, freezing the others); a healthy run finishes
            # within one chunk's time of its first worker exiting. A zombie for STALL_S = hung.
            _, zombies = _children(proc.pid)
            if zombies:
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > STALL_S:
                    break
            else:
                dead_since = None
        if proc.exitcode != 0:
            raise DataError(f"cannot write {name}: {_last_error(_read(err.name)) or why}")
    finally:
        # The whole group, also after a clean exit: FFCV never joins its workers, and a worker
        # forked from a process with many threads (DALI's, torch's) can hang on a lock it inherited
        # locked, holding our stdout open forever.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.join(10)
        os.remove(err.name)


def _read(path):
    with open(path, errors="replace") as f:
        return f.read()


def _children(pid):
    """(running, exited-but-unreaped) counts of `pid`'s child processes (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = f.read().split()
    except OSError:
        return 0, 0
    running = zombies = 0
    for child in pids:
        try:
            with open(f"/proc/{child}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X"):
            zombies += 1
        else:
            running += 1
    return running, zombies


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): .*$", re.M)


def _last_error(log):
    """The `SomeError: message` line that ends the first traceback in `log`."""
    m = _ERROR_LINE.search(log.split("Traceback", 1)[-1].replace("\r", "\n"))
    return m.group(0)[:200] if m else None


def check(path) -> dict:
    """Sanity-check a .beton's structure without decoding it; DataError naming the file otherwise.

    Returns {"count", "height", "width", "modes"} (modes: set of "raw"/"jpg" found). Checks what FFCV
    itself trusts blindly (its numba readers do no bounds checks, so a truncated file could crash):
    header, field types, file size, the allocation table, and that every image's bytes lie inside it.
    """
    require()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such .beton file")
    size = os.path.getsize(path)
    if size < HeaderType.itemsize:
        raise DataError(f"{path}: truncated .beton ({size} bytes, not even a header)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            reader = Reader(path)
    except Exception as e:  # FFCV raises AssertionError/ValueError/KeyError/IndexError on garbage
        raise DataError(f"{path}: not a readable .beton file ({type(e).__name__}: {e})") from None
    bad = lambda why: DataError(f"{path}: corrupt or truncated .beton ({why})")  # noqa: E731
    handlers, n = reader.handlers, int(reader.num_samples)
    if not isinstance(handlers.get("image"), RGBImageField):
        raise DataError(f"{path}: no RGB 'image' field (fields: {', '.join(handlers) or 'none'})")
    if not isinstance(handlers.get("label"), IntField):
        raise DataError(f"{path}: no integer 'label' field (fields: {', '.join(handlers) or 'none'})")
    table_at = int(reader.header["alloc_table_ptr"])
    if n == 0 or len(reader.metadata) != n:
        raise bad(f"header says {n} samples, metadata holds {len(reader.metadata)}")
    if table_at > size or (size - table_at) % ALLOC_TABLE_TYPE.itemsize:
        raise bad(f"allocation table at byte {table_at} does not fit a {size}-byte file")
    table = reader.alloc_table
    if len(table) and int((table["ptr"] + table["size"]).max()) > table_at:
        raise bad("a sample's data runs past the start of the allocation table")
    fields = list(handlers)
    meta = reader.metadata[f"f{fields.index('image')}"]
    order = np.argsort(table["ptr"])
    ptrs, sizes = table["ptr"][order], table["size"][order]
    at = np.minimum(np.searchsorted(ptrs, meta["data_ptr"]), max(len(ptrs) - 1, 0))
    if not len(ptrs) or not np.array_equal(ptrs[at], meta["data_ptr"]):
        raise bad("image data pointers missing from the allocation table")
    raw = meta["mode"] == 1
    expect = meta["height"].astype(np.uint64) * meta["width"].astype(np.uint64) * 3
    if not np.array_equal(sizes[at][raw], expect[raw]):
        raise bad("raw image sizes disagree with their stored height x width")
    if meta["height"].min() == 0 or meta["width"].min() == 0:
        raise bad("zero-sized image")
    return {
        "count": n,
        "height": int(meta["height"].max()),
        "width": int(meta["width"].max()),
        "modes": {"raw" if m == 1 else "jpg" for m in np.unique(meta["mode"])},
    }


def read(path, indices=None, *, batch_size=1000, workers=1):
    """Decode samples `indices` (default: all, in file order) with FFCV's own Loader, no augmentation.

    Returns (images (n,H,W,3) uint8, labels (n,) int64) in the order of sorted `indices`.
    All images must share one size (always true for files written from an ArrayDataset).
    """
    info = check(path)
    path = os.fspath(path)
    if indices is not None:
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if len(indices) == 0 or indices[0] < 0 or indices[-1] >= info["count"]:
            raise DataError(f"{path}: indices out of range 0..{info['count'] - 1}")
    try:
        with torch_threads_kept():
            loader = Loader(
                path,
                batch_size=batch_size,
                num_workers=workers,
                order=OrderOption.SEQUENTIAL,
                indices=indices,
                drop_last=False,
                pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]},
            )
            names = list(loader.pipeline_specs)  # FFCV yields one output per pipeline, in this order
            images, labels = [], []
            for out in loader:
                named = dict(zip(names, out))
                images.append(np.array(named["image"]))  # copies: FFCV reuses its output buffers
                labels.append(np.array(named["label"]).reshape(-1))
    except Exception as e:  # FFCV's own failure modes are ValueError/TypeError/AssertionError/...
        raise DataError(f"{path}: FFCV could not decode it ({type(e).__name__}: {e})") from None
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def read_all(path, workers=1):
    """Every sample of a .beton, in file order: (images (N,H,W,3) uint8, labels (N,) int64)."""
    return read(path, None, workers=workers)


def verify(path, data, n_check=1000, seed=0) -> dict:
    """Read `path` back with FFCV's Loader and compare with `data`; DataError naming the file on mismatch.

    Checks: sample count; labels and pixels of `n_check` random samples plus the first and last one.
    Raw files must match bit for bit; JPEG (or resized) files must reach MIN_JPG_PSNR dB against
    the data (resized with OpenCV INTER_AREA, as FFCV's writer does). Returns a small report dict.
    """
    if isinstance(data, ImageFiles):
        return _verify_files(path, data, n_check, seed)
    images, labels = _check_data(data)
    info = check(path)
    path = os.fspath(path)
    if info["count"] != len(labels):
        raise DataError(f"{path}: holds {info['count']} samples, the data has {len(labels)}")
    n = len(labels)
    pick = np.random.default_rng(seed).choice(n, size=min(n_check, n), replace=False)
    pick = np.unique(np.concatenate([pick, [0, n - 1]]))
    got_images, got_labels = read(path, pick)
    if not np.array_equal(got_labels, labels[pick]):
        raise DataError(
            f"{path}: labels differ from the data at {int((got_labels != labels[pick]).sum())} "
            f"of {len(pick)} checked samples"
        )
    want = images[pick]
    if got_images.shape[1:3] != want.shape[1:3]:
        import cv2  # ffcv depends on opencv; only resized files need it here

        h, w = got_images.shape[1:3]
        want = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in want])
    value = psnr(got_images, want)
    exact = info["modes"] == {"raw"} and got_images.shape == images[pick].shape
    if exact and value != float("inf"):
        raise DataError(f"{path}: raw pixels differ from the data ({value:.1f} dB PSNR)")
    if value < MIN_JPG_PSNR:
        raise DataError(f"{path}: pixels too far from the data ({value:.1f} dB PSNR < {MIN_JPG_PSNR})")
    return {"path": path, "count": n, "checked": len(pick), "psnr_db": value, "modes": sorted(info["modes"])}


def _reader(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return Reader(os.fspath(path))


def labels(path, info=None) -> np.ndarray:
    """Every sample's label, (N,) int64, straight from the file's metadata (IntField keeps its value
    there), without decoding any image. Run check first."""
    reader = _reader(path)
    return np.asarray(reader.metadata[f"f{list(reader.handlers).index('label')}"], np.int64).reshape(-1)


def encoded(path, indices) -> list:
    """The stored JPEG bytes of samples `indices` (check first; jpg samples only)."""
    reader = _reader(path)
    meta = reader.metadata[f"f{list(reader.handlers).index('image')}"]
    table = reader.alloc_table
    sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    mm = np.memmap(os.fspath(path), np.uint8, mode="r")
    out = []
    for i in indices:
        ptr = int(meta["data_ptr"][i])
        out.append(bytes(mm[ptr : ptr + sizes[ptr]]))
    return out


def _verify_files(path, files, n_check, seed):
    """Read-back check of an image folder written at its own sizes: count and every label from the
    file's metadata, then the JPEG bytes of a random sample decoded and compared with the source."""
    info = check(path)
    path = os.fspath(path)
    if info["count"] != len(files):
        raise DataError(f"{path}: holds {info['count']} samples, the folder has {len(files)}")
    if not np.array_equal(labels(path), files.labels):
        raise DataError(f"{path}: labels differ from the folder's")
    n = len(files)
    pick = np.unique(
        np.concatenate([np.random.default_rng(seed).choice(n, min(n_check, n), replace=False), [0, n - 1]])
    )
    value = compare(path, files, pick, (_decode(b) for b in encoded(path, pick)), MIN_JPG_PSNR)
    return {"path": path, "count": n, "checked": len(pick), "psnr_db": value, "modes": sorted(info["modes"])}


def _decode(blob):
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
