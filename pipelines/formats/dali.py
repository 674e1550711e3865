"""ArrayDataset <-> the DALI-native format: write, check, read back with DALI's own reader, verify.

    from pipelines import datasets
    from pipelines.formats import dali as dali_format
    data = datasets.load("cifar10", "train", data_dir="data")
    dali_format.write(data, "data/cifar10_dali")                       # raw uint8, exact
    dali_format.write(data, "data/photos_dali", encoding="jpg", quality=90, max_resolution=256)
    dali_format.check("data/cifar10_dali")                             # structure; DataError naming the file
    images, labels = dali_format.read_all("data/cifar10_dali")         # DALI's webdataset reader, CPU

Why webdataset tar shards: `fn.readers.webdataset` is a built-in C++ reader (no Python callback
per batch, unlike `fn.external_source`), reads plain POSIX tar files (inspectable with `tar tvf`),
memory-maps them, shards across GPUs with `shard_id`/`num_shards`, and takes a sidecar index so it
never scans the archive. We write that index ourselves while writing the tar, so no external tool
is needed. `fn.readers.numpy` would need one file per sample (50k files for CIFAR-10); TFRecord
needs TensorFlow's tooling for its index; RecordIO is MXNet's.

Layout of a directory written here:
    format.json          what the shards hold: count, height, width, encoding, classes, and per shard
                         its sample count, byte size and sha256 (so `check(deep=True)` needs nothing else)
    shard-00000.tar      samples <key>.rgb (raw H*W*3 uint8 bytes, HWC) or <key>.jpg, plus <key>.cls
    shard-00000.idx      (the label, one little-endian int64); <key> = global sample index, zero-padded
    ...                  index: DALI's "v1.2" text format, one line per sample
Raw samples are decoded by `fn.reshape` (no codec cost: right for 32x32 data); JPEG samples by
`fn.decoders.image` (device="mixed", i.e. nvJPEG, on a GPU). Several shards let readers split the
data between ranks and let the loader permute whole shards per epoch.
"""

import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..data.imagefolder import ImageFiles, resized_shape
from ..errors import DataError
from ..files import sha256
from .verify import compare, psnr

EXTRA = "dali"
FORMAT = "fastssl-dali-webdataset"
FORMAT_VERSION = 1
ENCODINGS = ("raw", "jpg")
IMAGE_EXT = {"raw": "rgb", "jpg": "jpg"}
INFO = "format.json"
INSTALL_HINT = "NVIDIA DALI is not installed: `pip install -e .[dali]`"
MIN_JPG_PSNR = 20.0  # dB; a wrong or shuffled image scores ~10 dB, JPEG at any sane quality > 25 dB
_BLOCK = 512  # tar block size

try:
    import nvidia.dali as dali
    from nvidia.dali import fn, pipeline_def, types

    _IMPORT_ERROR = None
except (ImportError, RuntimeError, OSError) as e:  # OSError: a CUDA library of the wheel missing
    _IMPORT_ERROR = e


def require():
    """Raise DataError (one line, naming the pip extra) when DALI cannot be imported."""
    if _IMPORT_ERROR is not None:
        raise DataError(f"{INSTALL_HINT} ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})")


def VERSION() -> str:
    require()
    return dali.__version__


# ----------------------------------------------------------------------------------------- writing


def _tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mode 0644, owner 0, mtime 0: same data, same bytes)."""
    h = bytearray(_BLOCK)
    h[0 : len(name)] = name.encode("ascii")
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8  # checksum field counts as spaces while summing
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


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
    return images, labels.astype("<i8")


def resize(images, shape):
    """Area-average (PIL BOX) resize of (N,H,W,3) uint8 images to `shape` = (h, w); the writer's resizer."""
    if images.shape[1:3] == tuple(shape):
        return images
    h, w = shape
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BOX)) for im in images])


def _encode(image, encoding, quality):
    if encoding == "raw":
        return image.tobytes()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class _Lazy:
    """Images first..first+count-1 of an ImageFiles, decoded when indexed (one shard's worth)."""

    def __init__(self, files, first, count):
        self.files, self.first, self.count = files, first, count

    def __getitem__(self, i):
        return self.files.image(self.first + i)


def _write_shard(out_dir, shard, images, labels, first, key_width, encoding, quality, shape):
    """Write shard-NNNNN.tar + .idx for samples first..first+len-1; returns its format.json entry.
    shape None: every image keeps its own size (images is then a _Lazy)."""
    ext = IMAGE_EXT[encoding]
    if shape is not None:
        images = resize(images, shape)
    chunks, lines, pos, side = [], [], 0, [0, 0]
    for i in range(len(labels)):
        key = f"{first + i:0{key_width}d}"
        parts = []
        image = images[i]
        side = [max(side[0], image.shape[0]), max(side[1], image.shape[1])]
        for e, payload in ((ext, _encode(image, encoding, quality)), ("cls", labels[i].tobytes())):
            name = f"{key}.{e}"
            pad = -len(payload) % _BLOCK
            chunks += [_tar_header(name, len(payload)), payload, bytes(pad)]
            parts.append(f"{e} {pos + _BLOCK} {len(payload)} {name}")
            pos += _BLOCK + len(payload) + pad
        lines.append(" ".join(parts))
    chunks.append(bytes(2 * _BLOCK))  # end-of-archive marker: two zero blocks
    blob = b"".join(chunks)
    tar, idx = f"shard-{shard:05d}.tar", f"shard-{shard:05d}.idx"
    with open(os.path.join(out_dir, tar), "wb") as f:
        f.write(blob)
    with open(os.path.join(out_dir, idx), "w") as f:
        f.write(f"v1.2 {len(labels)}\n" + "\n".join(lines) + "\n")
    return {
        "tar": tar,
        "index": idx,
        "first": int(first),
        "count": len(labels),
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "max_shape": side,
    }


def write(
    data,
    out_dir,
    *,
    encoding="raw",
    quality=90,
    shard_size=1000,
    max_resolution=None,
    workers=None,
    on_progress=None,
):
    """Write `data` (ArrayDataset: images (N,H,W,3) uint8, labels (N,) int) into the new directory `out_dir`.

    encoding: "raw" (exact bytes) or "jpg" (PIL JPEG at `quality` 1-100). shard_size: samples per tar
    shard. max_resolution: shrink images whose longer side exceeds it (area average) first.
    workers: threads encoding/writing shards in parallel (PIL and file writes release the GIL).
    on_progress(n): called from this thread with the number of samples just written.
    `out_dir` must not exist or be empty; on failure it is removed again. Not atomic by itself:
    `formats.writer.convert` publishes atomically and verifies. Returns out_dir.
    """
    require()
    variable = isinstance(data, ImageFiles)  # each image at its own size, decoded one by one, JPEG
    if variable:
        labels, encoding = np.asarray(data.labels).astype("<i8"), "jpg"
        images = None
    else:
        images, labels = _check_data(data)
    if encoding not in ENCODINGS:
        raise DataError(f"unknown DALI encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    if not 1 <= int(quality) <= 100:
        raise DataError(f"JPEG quality must be in 1..100, got {quality}")
    if int(shard_size) < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if max_resolution is not None and int(max_resolution) < 1:
        raise DataError(f"max_resolution must be a positive number of pixels, got {max_resolution}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DataError(f"{out_dir} already exists and is not an empty directory")
    if variable:
        n, shape = len(labels), None
    else:
        n, height, width = images.shape[:3]
        shape = resized_shape(height, width, None if max_resolution is None else int(max_resolution))
    key_width = max(8, len(str(n - 1)))
    starts = list(range(0, n, int(shard_size)))
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        with ThreadPoolExecutor(max(1, int(workers or os.cpu_count() or 1))) as pool:
            size = int(shard_size)
            jobs = [
                pool.submit(
                    _write_shard,
                    out_dir,
                    s,
                    _Lazy(data, a, size) if variable else images[a : a + size],
                    labels[a : a + size],
                    a,
                    key_width,
                    encoding,
                    int(quality),
                    shape,
                )
                for s, a in enumerate(starts)
            ]
            shards = []
            for job in jobs:  # in order, so progress is monotone and errors surface early
                shards.append(job.result())
                if on_progress is not None:
                    on_progress(shards[-1]["count"])
        sides = np.array([s.pop("max_shape") for s in shards])
        if variable:  # height, width: the largest stored sides (each image keeps its own)
            shape = (int(sides[:, 0].max()), int(sides[:, 1].max()))
        info = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "count": int(n),
            "height": shape[0],
            "width": shape[1],
            "variable_size": variable,
            "channels": 3,
            "encoding": encoding,
            "quality": int(quality) if encoding == "jpg" else None,
            "classes": [str(c) for c in getattr(data, "classes", [])],
            "name": str(getattr(data, "name", "")),
            "key_width": key_width,
            "shards": shards,
        }
        with open(os.path.join(out_dir, INFO), "w") as f:
            json.dump(info, f, indent=1)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for name in os.listdir(out_dir):
                os.remove(os.path.join(out_dir, name))
        raise
    return out_dir


# ---------------------------------------------------------------------------------------- checking


def load_info(out_dir) -> dict:
    """format.json of a written directory, with its basic fields validated (DataError otherwise)."""
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, INFO)
    if not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: no such DALI dataset directory")
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing; {out_dir} is not a dataset written by pipelines.formats.dali"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt ({e})") from None
    need = {"format", "version", "count", "height", "width", "encoding", "key_width", "shards"}
    if not isinstance(info, dict) or not need <= set(info) or info["format"] != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} description")
    if info["version"] != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {info['version']}, this fastssl reads version {FORMAT_VERSION}"
        )
    if info["encoding"] not in ENCODINGS or not info["shards"]:
        raise DataError(f"{path}: bad encoding {info['encoding']!r} or no shards")
    if sum(s["count"] for s in info["shards"]) != info["count"]:
        raise DataError(f"{path}: shard counts do not add up to {info['count']}")
    return info


def _parse_index(path, shard, info):
    """Offsets/sizes (n, 2) of image and label components of one shard's index, validated."""
    bad = lambda why: DataError(f"{path}: corrupt index ({why})")  # noqa: E731
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: missing index file") from None
    except UnicodeDecodeError:
        raise bad("not text") from None
    n, first, width = shard["count"], shard["first"], info["key_width"]
    if not lines or lines[0].split() != ["v1.2", str(n)]:
        raise bad(f"header {lines[:1]!r}, expected 'v1.2 {n}'")
    if len(lines) != n + 1:
        raise bad(f"{len(lines) - 1} sample lines, expected {n}")
    ext = IMAGE_EXT[info["encoding"]]
    offsets, sizes = np.empty((n, 2), np.int64), np.empty((n, 2), np.int64)
    for i, line in enumerate(lines[1:]):
        p = line.split()
        key = f"{first + i:0{width}d}"
        if len(p) != 8 or p[0] != ext or p[4] != "cls" or p[3] != f"{key}.{ext}" or p[7] != f"{key}.cls":
            raise bad(f"line {i + 2} is not sample {key}")
        try:
            offsets[i], sizes[i] = (int(p[1]), int(p[5])), (int(p[2]), int(p[6]))
        except ValueError:
            raise bad(f"line {i + 2}: offsets and sizes must be integers") from None
    return offsets, sizes


def check(out_dir, deep=False) -> dict:
    """Check a written directory's structure, independent of any manifest; DataError naming the file.

    Always (fast, runs before every loader build): format.json is sane; every shard's tar and index
    exist; the index lists exactly that shard's samples, in order, block-aligned, with raw images of
    H*W*3 bytes and 8-byte labels; the tar's size is exactly what the index implies (so a truncated
    or extended shard is caught; DALI itself only checks that each offset lies inside the file).
    deep=True also: each component's tar header names it with its size (valid checksum), and the
    shard's sha256 matches format.json (catches flipped bytes). Returns format.json's content.
    """
    info = load_info(out_dir)
    out_dir = os.fspath(out_dir)
    for shard in info["shards"]:
        tar, idx = os.path.join(out_dir, shard["tar"]), os.path.join(out_dir, shard["index"])
        if not os.path.isfile(tar):
            raise DataError(f"{tar}: missing shard")
        offsets, sizes = _parse_index(idx, shard, info)
        size = os.path.getsize(tar)
        ends = offsets + sizes + (-sizes % _BLOCK)
        if (offsets % _BLOCK).any() or (sizes[:, 1] != 8).any() or (offsets[:, 0] < _BLOCK).any():
            raise DataError(f"{idx}: corrupt index (misaligned offsets or bad label sizes)")
        if info["encoding"] == "raw" and (sizes[:, 0] != info["height"] * info["width"] * 3).any():
            raise DataError(f"{idx}: raw image sizes differ from {info['height']}x{info['width']}x3 bytes")
        expected = int(ends.max()) + 2 * _BLOCK
        if size != expected or size != shard["bytes"]:
            why = "truncated" if size < expected else "has trailing bytes"
            raise DataError(f"{tar}: {why} ({size} bytes, its index implies {expected})")
        if deep:
            _check_headers(tar, offsets.ravel(), sizes.ravel(), shard, info)
            if sha256(tar) != shard["sha256"]:
                raise DataError(f"{tar}: corrupt shard (sha256 differs from {INFO})")
    return info


def _check_headers(tar, offsets, sizes, shard, info):
    """Compare each component's tar header block with the one the writer produces for it."""
    ext = IMAGE_EXT[info["encoding"]]
    keys = [f"{shard['first'] + i:0{info['key_width']}d}" for i in range(shard["count"])]
    names = [f"{k}.{e}" for k in keys for e in (ext, "cls")]
    want = np.frombuffer(b"".join(_tar_header(nm, int(s)) for nm, s in zip(names, sizes)), np.uint8)
    mm = np.memmap(tar, np.uint8, mode="r")
    got = mm[(offsets - _BLOCK)[:, None] + np.arange(_BLOCK)].ravel()
    if not np.array_equal(got, want):
        first_bad = int(np.argmax((got != want).reshape(-1, _BLOCK).any(1)))
        raise DataError(f"{tar}: corrupt shard (tar header of {names[first_bad]} differs)")


# ----------------------------------------------------------------------------------------- reading


def decode(encoded, encoding, height, width, device="cpu"):
    """DALI graph fragment: reader output -> HWC uint8 images on `device` ("cpu" or "gpu")."""
    if encoding == "raw":
        images = fn.reshape(encoded, shape=[height, width, 3], layout="HWC")
        return images.gpu() if device == "gpu" else images
    # "mixed" = nvJPEG: bytes arrive from the host reader, pixels leave on the GPU.
    return fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)


def reader_files(out_dir, info, order=None):
    """(tar paths, index paths) of the shards, optionally in the shard order `order`."""
    shards = info["shards"] if order is None else [info["shards"][i] for i in order]
    return (
        [os.path.join(out_dir, s["tar"]) for s in shards],
        [os.path.join(out_dir, s["index"]) for s in shards],
    )


def read(out_dir, indices=None, *, batch_size=1024, workers=1):
    """Decode samples `indices` (default: all) with DALI's webdataset reader on the CPU, no augmentation.

    Returns (images (n,H,W,3) uint8, labels (n,) int64) for sorted unique `indices`. A subset is read
    through temporary index files listing only those samples of the real shards.
    """
    require()
    info = check(out_dir)
    out_dir = os.fspath(out_dir)
    n = info["count"]
    if indices is None:
        indices = np.arange(n)
        tars, idxs = reader_files(out_dir, info)
        return _run_reader(out_dir, tars, idxs, indices, info, batch_size, workers)
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    if len(indices) == 0 or indices[0] < 0 or indices[-1] >= n:
        raise DataError(f"{out_dir}: indices out of range 0..{n - 1}")
    with tempfile.TemporaryDirectory(prefix="fastssl-dali-") as tmp:
        tars, idxs = reader_files(out_dir, subset_index(out_dir, info, indices, tmp))
        return _run_reader(out_dir, tars, idxs, indices, info, batch_size, workers)


def subset_index(out_dir, info, indices, tmp) -> dict:
    """format.json's description (`info`) restricted to samples `indices` (sorted, unique): per
    shard holding any of them, an index file in `tmp` listing only those (DALI reads what its index
    lists; the tars are shared). The shards' "index" entries become those absolute paths."""
    shards = []
    for shard in info["shards"]:
        pick = (
            indices[(indices >= shard["first"]) & (indices < shard["first"] + shard["count"])]
            - shard["first"]
        )
        if not len(pick):
            continue
        with open(os.path.join(out_dir, shard["index"])) as f:
            lines = f.read().splitlines()[1:]
        index = os.path.join(tmp, shard["index"])
        with open(index, "w") as f:
            f.write(f"v1.2 {len(pick)}\n" + "\n".join(lines[i] for i in pick) + "\n")
        shards.append(
            {
                **shard,
                "index": index,
                "count": len(pick),
                "bytes": shard["bytes"] * len(pick) // shard["count"],
            }
        )
    return {**info, "count": len(indices), "shards": shards}


def _batches(out_dir, tars, idxs, indices, info, batch_size, workers):
    """Decode samples `indices` (sorted, unique; the ones the index files list) batch by batch:
    yields (position of the batch's first sample, its decoded images (a list), its labels)."""
    n = len(indices)
    batch_size = int(min(batch_size, n))

    @pipeline_def(batch_size=batch_size, num_threads=max(1, int(workers)), device_id=None, seed=0)
    def pipe():
        encoded, labels = fn.readers.webdataset(
            paths=tars,
            index_paths=idxs,
            ext=[IMAGE_EXT[info["encoding"]], "cls"],
            dtypes=[types.UINT8, types.INT64],
            random_shuffle=False,
            missing_component_behavior="error",
            name="reader",
        )
        key = fn.get_property(encoded, key="source_info")  # "<tar>:<offset>:<member name>"
        return decode(encoded, info["encoding"], info["height"], info["width"]), labels, key

    width, ext = info["key_width"], IMAGE_EXT[info["encoding"]]
    try:
        p = pipe()
        p.build()
        for start in range(0, n, batch_size):
            im, lb, key = p.run()  # the last batch wraps into the next epoch: trimmed below
            take = min(batch_size, n - start)
            for j in range(take):
                name = bytes(np.asarray(key[j])).decode().rsplit(":", 1)[-1]
                if name != f"{indices[start + j]:0{width}d}.{ext}":  # DALI must read in index order
                    raise DataError(f"{out_dir}: reader returned {name} at position {start + j}")
            yield start, [np.array(im[j]) for j in range(take)], np.asarray(lb.as_tensor()).reshape(-1)[:take]
    except RuntimeError as e:  # DALI reports unreadable data (bad JPEG, bad index) as RuntimeError
        raise DataError(f"{out_dir}: DALI could not read it ({str(e).strip().splitlines()[0]})") from None


def _run_reader(out_dir, tars, idxs, indices, info, batch_size, workers):
    n = len(indices)
    variable = info.get("variable_size", False)  # then a list of (h, w, 3) arrays, one per sample
    images = [None] * n if variable else np.empty((n, info["height"], info["width"], 3), np.uint8)
    labels = np.empty(n, np.int64)
    for start, decoded, lb in _batches(out_dir, tars, idxs, indices, info, batch_size, workers):
        images[start : start + len(decoded)] = decoded if variable else np.stack(decoded)
        labels[start : start + len(decoded)] = lb
    return images, labels


def stream(out_dir, indices, *, batch_size=16, workers=1):
    """Decoded images of samples `indices` (sorted unique), one at a time: at most `batch_size`
    are held, so a read-back check of 1,000 large photos costs a few photos' memory."""
    require()
    info = check(out_dir)
    out_dir = os.fspath(out_dir)
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    if len(indices) == 0 or indices[0] < 0 or indices[-1] >= info["count"]:
        raise DataError(f"{out_dir}: indices out of range 0..{info['count'] - 1}")
    with tempfile.TemporaryDirectory(prefix="fastssl-dali-") as tmp:
        tars, idxs = reader_files(out_dir, subset_index(out_dir, info, indices, tmp))
        for _, decoded, _ in _batches(out_dir, tars, idxs, indices, info, batch_size, workers):
            yield from decoded


def read_all(out_dir, workers=1):
    """Every sample, in written order: (images (N,H,W,3) uint8, labels (N,) int64)."""
    return read(out_dir, None, workers=workers)


def verify(out_dir, data, n_check=1000, seed=0) -> dict:
    """Read `out_dir` back with DALI and compare with `data`; DataError naming the directory on mismatch.

    Runs check(deep=True), then compares count, and labels + pixels of `n_check` random samples plus
    the first and the last. Raw must match bit for bit; JPEG must reach MIN_JPG_PSNR dB against the
    data (resized the writer's way when max_resolution shrank it). Returns a small report dict.
    """
    if isinstance(data, ImageFiles):
        return _verify_files(out_dir, data, n_check, seed)
    images, labels = _check_data(data)
    info = check(out_dir, deep=True)
    out_dir = os.fspath(out_dir)
    n = len(labels)
    if info["count"] != n:
        raise DataError(f"{out_dir}: holds {info['count']} samples, the data has {n}")
    pick = np.random.default_rng(seed).choice(n, size=min(int(n_check), n), replace=False)
    pick = np.unique(np.concatenate([pick, [0, n - 1]]))
    got_images, got_labels = read(out_dir, pick)
    if not np.array_equal(got_labels, labels[pick]):
        raise DataError(
            f"{out_dir}: labels differ from the data at {int((got_labels != labels[pick]).sum())} "
            f"of {len(pick)} checked samples"
        )
    want = resize(images[pick], (info["height"], info["width"]))
    value = psnr(got_images, want)
    exact = info["encoding"] == "raw"
    if exact and value != float("inf"):
        raise DataError(f"{out_dir}: raw pixels differ from the data ({value:.1f} dB PSNR)")
    if value < MIN_JPG_PSNR:
        raise DataError(f"{out_dir}: pixels too far from the data ({value:.1f} dB PSNR < {MIN_JPG_PSNR})")
    return {"path": out_dir, "count": n, "checked": len(pick), "psnr_db": value, "encoding": info["encoding"]}


def _verify_files(out_dir, files, n_check, seed):
    """Read-back check of an image folder written at its own sizes: deep structure check, every
    label, then a random sample decoded by DALI and compared with the source images."""
    info = check(out_dir, deep=True)
    out_dir = os.fspath(out_dir)
    n = len(files)
    if info["count"] != n:
        raise DataError(f"{out_dir}: holds {info['count']} samples, the folder has {n}")
    if not np.array_equal(labels(out_dir, info), files.labels):
        raise DataError(f"{out_dir}: labels differ from the folder's")
    pick = np.unique(
        np.concatenate(
            [np.random.default_rng(seed).choice(n, min(int(n_check), n), replace=False), [0, n - 1]]
        )
    )
    value = compare(out_dir, files, pick, stream(out_dir, pick), MIN_JPG_PSNR)
    return {"path": out_dir, "count": n, "checked": len(pick), "psnr_db": value, "encoding": info["encoding"]}


def labels(out_dir, info) -> np.ndarray:
    """Every sample's label, (N,) int64, read from the shards' .cls members (8 bytes each) at the
    offsets their indexes give; no image is decoded. `info`: check(out_dir)'s result."""
    out = []
    for shard in info["shards"]:
        offsets, _ = _parse_index(os.path.join(os.fspath(out_dir), shard["index"]), shard, info)
        mm = np.memmap(os.path.join(os.fspath(out_dir), shard["tar"]), np.uint8, mode="r")
        out.append(mm[offsets[:, 1, None] + np.arange(8)].copy().view("<i8").reshape(-1))
    return np.concatenate(out).astype(np.int64)
