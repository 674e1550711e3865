"""Convert a dataset to a loader's native format: atomic, verified by reading back, with a manifest.

    from pipelines import datasets
    from pipelines.formats import writer
    data = datasets.load("cifar10", "train", data_dir="data")
    writer.convert(data, "ffcv", "data/cifar10_train.beton")          # + data/cifar10_train.beton.manifest.json
    writer.convert(data, "dali", "data/cifar10_dali", workers=8)       # directory, manifest.json inside

Every format module (contract.Format) exposes `write(data, tmp_out, **opts)`, `verify(out, data,
n_check)` (reads back with the library's own reader: count, labels and pixels of a sample,
bit-exact for raw) and `VERSION()` (DataError naming the pip extra when the library is missing).
The output appears only once it is complete and verified: it is written to `out + ".tmp-<pid>"`
and moved into place with os.replace; an existing output is refused unless force=True, and on any
failure the temporary output is removed and the existing one is left as it was. A DALI directory
carries its manifest inside, so one rename publishes both; an FFCV .beton is renamed into place
before its manifest, so a crash between the two renames leaves the new file beside no manifest or
the previous one: opening it (converted.open_split) then fails with "no manifest" or a checksum (or
count) mismatch naming the file, and converting again repairs it.
"""

import datetime
import hashlib
import inspect
import json
import os
import time
from dataclasses import replace

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..data.arrays import label_kind
from ..data.imagefolder import ImageFiles
from ..errors import DataError
from ..files import listing, publish, remove, remove_dead_temporaries, sha256
from . import contract
from .manifest import LIBRARIES, MANIFEST, MANIFEST_VERSION, manifest_path


def convert(
    data,
    to: str,
    out,
    *,
    force=False,
    workers=None,
    n_check=1000,
    source=None,
    progress=True,
    order_seed=None,
    **opts,
) -> dict:
    """Write `data` (an ArrayDataset) as `to` ("ffcv" | "dali") at `out`; return the manifest dict.

    data may also be an imagefolder.ImageFiles (a folder, each image at its own size, stored as JPEG;
    its mean/std/sizes are measured here first when missing).
    opts go to the writer (encoding="raw"|"jpg", quality, max_resolution; dali: shard_size).
    source: where the data came from, recorded in the manifest (e.g. {"dataset", "split", "data_dir"}).
    order_seed: write the samples in the order stored_order(N, order_seed), recorded in the
    manifest as "order". None (the default here) keeps them as they come; `python -m
    fastssl.convert` passes 0 unless --order source. Shuffling an in-memory dataset copies its
    images once (twice its size while converting).
    n_check: samples compared pixel by pixel after writing. progress: rich bar on stderr.
    """
    if to not in contract.FORMATS:
        raise DataError(f"unknown output format {to!r}; choose from {', '.join(contract.FORMATS)}")
    fmt = contract.module(to)
    version = fmt.VERSION()  # DataError with the install hint when the library is missing
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
    accepted = inspect.signature(fmt.write).parameters
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
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not progress,
    )
    try:
        remove(tmp), remove(tmp_meta)  # leftovers of a killed run with a recycled pid
        with bar:
            if isinstance(data, ImageFiles) and data.mean is None:
                task = bar.add_task("measuring mean/std", total=n)
                data.measure(workers, on_progress=lambda k: bar.advance(task, k))
                bar.remove_task(task)
            task = bar.add_task(f"writing {to}", total=n)
            kwargs = dict(opts, workers=workers)
            if "on_progress" in accepted:
                kwargs["on_progress"] = lambda k: bar.advance(task, k)
            fmt.write(data, tmp, **kwargs)
            bar.update(task, completed=n, description="verifying (reading back)")
            report = fmt.verify(tmp, data, n_check)
            files = listing(tmp)
            bar.update(task, description="checksums", completed=0, total=len(files))
            checksums = {}
            for rel in files:
                checksums[rel or os.path.basename(out)] = sha256(os.path.join(tmp, rel) if rel else tmp)
                bar.advance(task)
        labels = np.asarray(data.labels, "<i8")
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "format": to,
            "library": LIBRARIES[to],
            "library_version": version,
            "count": n,
            "classes": [str(c) for c in getattr(data, "classes", [])],
            "labels": label_kind(labels),  # "none": an unlabelled folder, every label -1
            "name": str(getattr(data, "name", "")),
            "source": source or {},
            # stored sample j is source sample stored_order(count, seed)[j]
            "order": {
                "shuffled": order_seed is not None,
                "seed": None if order_seed is None else int(order_seed),
            },
            "split": str((source or {}).get("split") or getattr(data, "split", "train")),
            "labels_sha256": hashlib.sha256(
                labels.tobytes()
            ).hexdigest(),  # of the int64 little-endian labels
            "mean": [float(v) for v in data.mean],
            "std": [float(v) for v in data.std],
            **image_policy(data, opts),
            "encoding": "jpg" if isinstance(data, ImageFiles) else opts.get("encoding", "raw"),
            "options": {k: v for k, v in opts.items() if isinstance(v, (int, float, str, type(None)))},
            "verified": {k: (None if v == float("inf") else v) for k, v in report.items() if k != "path"},
            "sha256": checksums,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2),
        }
        if to == "dali":  # the manifest travels inside the directory, so one rename publishes both
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
            publish(tmp, out)
        else:
            with open(tmp_meta, "w") as f:
                json.dump(manifest, f, indent=1)
            publish(tmp, out)
            os.replace(tmp_meta, meta)
    except OSError as e:  # disk full and other I/O errors: one line, the temporary removed below
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        remove(tmp), remove(tmp_meta)
    manifest["path"], manifest["manifest"] = out, meta
    return manifest


def image_policy(data, opts) -> dict:
    """How the stored images relate to their sources: one size for all (an ArrayDataset, possibly
    shrunk by max_resolution) or each its own (an ImageFiles folder, longer side capped)."""
    if isinstance(data, ImageFiles):
        sizes = data.sizes
        return {
            "image_policy": {
                "sizes": "own",
                "max_resolution": data.max_resolution,
                "max_shape": [int(sizes[:, 0].max()), int(sizes[:, 1].max())],
                "min_side": int(sizes.min()),
            }
        }
    height, width = data.images.shape[1:3]
    return {
        "image_shape": [int(height), int(width), 3],  # of the source; max_resolution may shrink it
        "image_policy": {"sizes": "fixed", "max_resolution": opts.get("max_resolution")},
    }


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
        return replace(
            data,
            paths=[data.paths[i] for i in idx],
            labels=data.labels[idx],
            sizes=None if data.sizes is None else data.sizes[idx],
        )
    return data.take(idx)
