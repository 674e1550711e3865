"""Convert a dataset to FFCV's .beton or to the DALI webdataset format: `python -m fastssl.convert`.

    # CIFAR-10 training split -> one .beton file (raw pixels, bit-exact) + data/cifar10_train.beton.manifest.json
    python -m fastssl.convert --dataset cifar10 --data-dir DIR --to ffcv --out data/cifar10_train.beton
    # a folder of class subfolders -> DALI shards (JPEG, decoded by nvJPEG at load time), manifest inside;
    # the split's name in the path lets the commands find the other split (data/photos_dali/test)
    python -m fastssl.convert --dataset imagefolder --data-dir photos/ --to dali --out data/photos_dali/train
    # ... each photo at its own size (JPEG, longer side at most 512 px), streamed: decoded one at a time
    python -m fastssl.convert --dataset imagefolder --data-dir photos/ --max-resolution 512 --to ffcv --out data/photos_train.beton
    python -m fastssl.convert --dataset imagefolder --data-dir photos/ --split test --max-resolution 512 --to ffcv --out data/photos_test.beton
    # ... or all resized to one size: shorter side to 128 px, centre 128x128 crop (held in memory);
    # --encoding raw without --image-size keeps a folder of one size exact (held in memory too)
    python -m fastssl.convert --dataset imagefolder --data-dir photos/ --image-size 128 --to dali --out data/photos_dali/train
    # a photo collection without labels (manifest "labels": "none"): a folder of images without
    # subfolders as imagefolder, or any layout, subfolders included, as images (docs/data.md)
    python -m fastssl.convert --dataset images --data-dir trip/ --max-resolution 512 --to ffcv --out data/trip_train.beton
    # the test split, replacing an earlier conversion, JPEG quality 95, longer side at most 256 px
    python -m fastssl.convert --dataset cifar10 --data-dir DIR --split test --to dali --out data/c10_test \\
        --force --encoding jpg --quality 95 --max-resolution 256

The output is written next to its final path, read back with the library's own reader (count,
labels, pixels of a sample), and only then moved into place; an existing output is kept unless
--force. A DALI directory and its manifest.json appear in one rename; a .beton is moved into place
first and its `.manifest.json` beside it second, so a crash between the two leaves the new file with
no manifest or the previous one, refused at open (no manifest / checksum or count differs): convert again. The manifest (JSON) records count, classes, a checksum of the labels, split, image-size
policy, per-channel mean/std of the split, sha256 of every file and its format version;
`--dataset PATH` of pretrain, knn, linear and supervised reads the output through it.
An image folder kept at its own sizes is read twice (mean/std, then writing), one image at a time.
Samples are written in a seeded random order by default (--order shuffled, --order-seed 0; the
manifest's "order" says which, pipelines.formats.writer.stored_order gives the permutation): DALI and FFCV
shuffle a streamed file within a window of 4,096 samples, and an image folder lists its images
class by class. --order source keeps the source's order.
Needs the extra of the chosen library: `pip install -e .[ffcv]` or `pip install -e .[dali]`.
"""

import os
import sys
from dataclasses import dataclass, field

from pipelines import DataError, datasets
from pipelines.data import imagefolder
from pipelines.formats import contract, writer

from .config import cli, parse


@dataclass
class ConvertConfig:
    dataset: str = field(
        default="cifar10", metadata={"help": "dataset to convert", "choices": list(datasets.DATASETS)}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "where the dataset lives (else $FASTSSL_DATA)"}
    )
    split: str = field(default="train", metadata={"help": "which split", "choices": ["train", "test"]})
    to: str | None = field(
        default=None, metadata={"help": "output format (required)", "choices": list(contract.FORMATS)}
    )
    out: str | None = field(
        default=None, metadata={"help": "output path: a .beton file (ffcv) or a directory (dali) (required)"}
    )
    force: bool = field(default=False, metadata={"help": "replace an existing output"})
    workers: int = field(default=0, metadata={"help": "writer processes/threads; 0 = all available cores"})
    encoding: str | None = field(
        default=None,
        metadata={
            "help": "raw (exact) or jpg; default raw up to 32x32 images, jpg above",
            "choices": ["raw", "jpg"],
        },
    )
    quality: int = field(default=90, metadata={"help": "JPEG quality 1-100 (jpg encoding only)"})
    max_resolution: int | None = field(
        default=None, metadata={"help": "shrink images whose longer side exceeds this many pixels"}
    )
    # Needed when the images differ in size and must be stored at one size (as --encoding raw needs); without
    # it a jpg conversion keeps each image at its own size.
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "imagefolder only: resize the shorter side to this many pixels, centre-crop a square"
        },
    )
    # Shuffled by default: streamed loaders (DALI, FFCV) shuffle only within a window, so an image folder's
    # class-by-class order would give one-class batches.
    order: str = field(
        default="shuffled",
        metadata={
            "help": "sample order in the output: shuffled (seeded by --order-seed) or source",
            "choices": ["shuffled", "source"],
        },
    )
    order_seed: int = field(
        default=0, metadata={"help": "seed of the shuffled order (recorded in the manifest)"}
    )

    def __post_init__(self):
        if self.to is None or not self.out:
            raise ValueError("--to and --out are required (e.g. --to dali --out data/cifar10_dali)")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.max_resolution is not None and self.max_resolution < 1:
            raise ValueError(f"--max-resolution must be positive, got {self.max_resolution}")
        if self.order_seed < 0:
            raise ValueError(f"--order-seed must be >= 0, got {self.order_seed}")
        if self.image_size is not None and self.dataset not in datasets.FOLDERS:
            raise ValueError(f"--image-size applies to --dataset imagefolder only, not {self.dataset}")


@cli
def main(argv=None):
    cfg = parse(ConvertConfig, argv, description=__doc__)
    source = {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "data_dir": cfg.data_dir,
        "image_size": cfg.image_size,
    }
    own_sizes = cfg.dataset in datasets.FOLDERS and cfg.image_size is None and cfg.encoding != "raw"
    if own_sizes:  # each image at its own size, streamed one at a time, JPEG
        root = cfg.data_dir or os.environ.get("FASTSSL_DATA")
        if not root:
            raise DataError("imagefolder needs a folder: pass --data-dir (or set $FASTSSL_DATA)")
        data = imagefolder.scan(root, cfg.split, cfg.max_resolution, unlabelled=cfg.dataset == "images")
        opts, size, encoding = {}, f"own sizes, longer side <= {cfg.max_resolution or 'any'}", "jpg"
    else:
        data = datasets.load(cfg.dataset, cfg.split, cfg.data_dir, image_size=cfg.image_size)
        height, width = data.images.shape[1:3]
        encoding = cfg.encoding or ("raw" if max(height, width) <= 32 else "jpg")
        opts, size = {"encoding": encoding, "max_resolution": cfg.max_resolution}, f"{height}x{width}"
    m = writer.convert(
        data,
        cfg.to,
        cfg.out,
        force=cfg.force,
        workers=cfg.workers or None,
        source=source,
        quality=cfg.quality,
        order_seed=cfg.order_seed if cfg.order == "shuffled" else None,
        **opts,
    )
    check = "exact" if m["verified"].get("psnr_db") is None else f"{m['verified']['psnr_db']:.1f} dB PSNR"
    labels = f"{len(m['classes'])} classes" if m["labels"] != "none" else "no labels"
    print(
        f"wrote {m['count']} images ({labels}, {size}, {encoding}) to {m['path']} "
        f"with {m['library']} {m['library_version']} in {m['seconds']:.1f} s; read back {m['verified']['checked']} "
        f"samples ({check}); manifest {m['manifest']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
