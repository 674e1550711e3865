#!/usr/bin/env python3
"""Build pipelines/assets/cifar10_sample.npz, the CIFAR-10 sample shipped inside fastssl.

    python scripts/make_cifar10_sample.py --data-dir .cache/data     # reads cifar-10-batches-py/ there

The sample is the first 200 images of every class of the official train split (2,000) and the first
100 of every class of test_batch (1,000), in their original order. Each image is stored as lossless
WebP (about 1.8 KB each, 5.5 MB in all; the raw pixels would take 9.2 MB), with the labels, the
indices into the official split (so tests can compare pixel for pixel) and a SHA-256 of the decoded
pixels that `cifar.read_sample` checks on every load. The file is verified by decoding it again
before it atomically replaces the old one. Encoding takes a few minutes (WebP's slowest, smallest
setting); decoding takes well under a second.
"""

import argparse
import hashlib
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipelines import datasets  # noqa: E402
from pipelines.data import cifar, splits

PER_CLASS = {"train": 200, "test": 100}


def webp(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", required=True, help="folder holding cifar-10-batches-py/ (or that folder itself)"
    )
    p.add_argument("--out", default=cifar.SAMPLE)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args()

    arrays = {}
    for split, per in PER_CLASS.items():
        full = datasets.load("cifar10", split, args.data_dir, download=False)
        index = splits.first_per_class(full.labels, per * len(full.classes), len(full.classes))
        images = full.images[index]
        with ProcessPoolExecutor(args.workers) as pool:
            blobs = list(pool.map(webp, images, chunksize=64))
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays.update(
            {
                f"{split}/webp": np.frombuffer(b"".join(blobs), np.uint8),
                f"{split}/offsets": offsets,
                f"{split}/labels": full.labels[index],
                f"{split}/index": index,
                f"{split}/sha256": np.array(hashlib.sha256(images.tobytes()).hexdigest()),
            }
        )
        assert np.array_equal(cifar.decode_images(arrays[f"{split}/webp"], offsets), images), (
            "WebP is not lossless"
        )
        print(f"{split}: {len(index)} images, {offsets[-1] / 1e6:.2f} MB of WebP")
    arrays["classes"] = np.array(full.classes)

    tmp = args.out + ".tmp.npz"
    np.savez(tmp, **arrays)  # WebP bytes do not compress further
    with np.load(tmp) as z:
        for split in PER_CLASS:
            pixels = cifar.decode_images(z[f"{split}/webp"], z[f"{split}/offsets"])
            assert hashlib.sha256(pixels.tobytes()).hexdigest() == str(z[f"{split}/sha256"])
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
