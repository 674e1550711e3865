"""FFCV pipeline: FFCV reads and decodes the .beton on the CPU (numba, `workers` threads) and moves
the uint8 images to the device, where the augmentation runs with the same pure-torch ops as the gpu
pipeline (`augment`). FFCV's own SimCLR crop decoder is not used: it resizes with OpenCV's INTER_AREA,
which upscales a CIFAR crop almost as nearest-neighbour does, not bilinearly as torchvision; FFCV
lacks colour jitter with hue and grayscale altogether. So both SimCLR views are cropped, flipped and
coloured by `augment.simclr_view` (recipe "simclr/torch", as the gpu pipeline).

    loader = pipelines.build("ffcv", data, batch_size=512, device="cuda", workers=8)
    loader = pipelines.build("ffcv", data, batch_size=512, source="cifar10_train.beton")
    python -m pipelines.loaders.ffcv --data-dir data --workers 8 --device cuda    # loader-only images/s

Without `source`, `data` is written once (raw uint8, atomic) to `<cache>/ffcv/<fingerprint>.beton`,
<cache> being `files.cache_root()`, and reused by later runs. The first batch of a process is slow: numba compiles FFCV's
pipeline (~10-20 s on a small CPU). supervised: the reflect-pad crop + flip runs on the device too
(`augment.crop_flip_view`), because FFCV's RandomTranslate pads with a constant.

Reproducibility (FFCV 1.0.2, checked against its source):
- order: a pure function of (seed, epoch, rank). FFCV draws epoch e's permutation from
  `np.random.default_rng(ffcv_seed + e)` (quasi_random: `ffcv_seed * 912300 + e`, with a 31-bit
  ffcv_seed so that this fits numba's int64; distributed:
  torch's `DistributedSampler(seed=ffcv_seed).set_epoch(e)`; windowed, the default for converted
  files: `ffcv_order.windowed(seed=ffcv_seed, epoch=e, rank, world_size)`), ffcv_seed = derive_seed(seed).
- augmentation: a pure function of (seed, epoch, rank), drawn from one torch generator per epoch on
  the device, so every recipe replays bit for bit on resume. (FFCV's own random decoders could not:
  they draw from numba's per-thread generator, which FFCV never seeds.)
Multi-GPU: with world_size > 1 FFCV's `distributed=True` builds torch's DistributedSampler without an
explicit rank (orders random and sequential), so it reads rank and world size from the initialised
torch.distributed process group (torchrun); build checks they match `rank`/`world_size`. The sampler
(or, for converted files, ffcv_order.windowed, given rank and world_size) pads the epoch order by
repetition to a multiple of world_size, so every rank runs ceil(N / world_size) // batch_size steps.
FFCV sets torch's global thread count (to 1 on import, to `workers` per loader and epoch); this
module puts it back each time, so the training process keeps its own setting.
"""

import os
from dataclasses import replace

import numpy as np
import torch

from .. import augment, recipes
from ..batch import Batch, check_per_process
from ..data.arrays import as_dataset, fingerprint
from ..datasets import load
from ..errors import DataError
from ..files import cache_path
from ..formats import ffcv as ffcv_format
from ..formats.converted import ConvertedDataset
from ..recipes import CENTRE_CROP, PAD, RECIPES, SimCLRRecipe, derive_seed
from . import ffcv_order

EXTRA = "ffcv"
ORDERS = ("random", "quasi_random", "windowed")
CACHE_DIR = "ffcv"  # in files.cache_root(); an absolute path replaces it
_COMPILED = []  # see the end of build()

try:
    with ffcv_format.torch_threads_kept():
        from ffcv.fields.decoders import (
            CenterCropRGBImageDecoder,
            IntDecoder,
            RandomResizedCropRGBImageDecoder,
            SimpleRGBImageDecoder,
        )
        from ffcv.loader import Loader as FFCVLoader
        from ffcv.loader import OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
except (ImportError, RuntimeError, OSError):  # reported by ffcv_format.require() with the install hint
    pass


def cached_beton(data, cache_dir=None, workers=None) -> str:
    """Path of `data` as a raw .beton in the cache, written (atomically) on first use."""
    cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir else cache_path(CACHE_DIR)
    path = os.path.join(cache_dir, fingerprint(data) + ".beton")
    if os.path.exists(path):
        try:
            if ffcv_format.check(path)["count"] == len(data.labels):
                return path
        except DataError:
            pass  # a damaged cache entry is rewritten below
    # Concurrent writers (one per rank) each os.replace an identical file: last one wins, all valid.
    return ffcv_format.write(data, path, encoding="raw", workers=workers, overwrite=True)


def _image_ops(device, decoder=None):
    """FFCV ops for the images: decode (whole, or cropped by `decoder`) -> uint8 NCHW channels_last on
    `device` (augmented there)."""
    return [
        decoder or SimpleRGBImageDecoder(),
        ToTensor(),
        ToDevice(device, non_blocking=True),
        ToTorchImage(),
    ]


class FFCVPipeline:
    """Loader protocol (see batch.py) over an FFCV Loader. `.ffcv` is that loader and `raw()` its
    batches before the device-side ops (uint8 views), to benchmark or inspect FFCV on its own."""

    def __init__(self, ffcv_loader, names, recipe, spec, device, seed, rank, mean, std, cropped=False):
        self.ffcv, self.names, self.recipe, self.spec = ffcv_loader, names, recipe, spec
        self.device, self.seed, self.rank = device, seed, rank
        self.mean, self.std = mean, std
        self.cropped = cropped  # images of their own sizes: FFCV's decoder crops them (see build)
        self.recipe_name = recipes.name("ffcv", recipe)  # what the trainer records in config.json
        self.epoch = 0

    def __len__(self):
        return len(self.ffcv)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def raw(self):
        """FFCV's own batches for the current epoch, as dicts name -> tensor ("image": decoded
        uint8 (B, 3, H, W) channels_last; "label": int64 (B,)), all on the device.
        FFCV reuses these buffers: consume or copy each batch before asking for the next."""
        self.ffcv.next_epoch = self.epoch  # FFCV's epoch counter: __iter__ draws epoch e's order from it
        with ffcv_format.torch_threads_kept():
            batches = iter(self.ffcv)
        for out in batches:
            yield dict(zip(self.names, out))

    def __iter__(self):
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, self.epoch, 1, self.rank))
        for out in self.raw():
            # Everything below makes fresh tensors (cat / clone), so nothing keeps pointing into
            # FFCV's buffers once the next batch is requested. No host sync: all queued on the device.
            labels, n = out["label"].clone(), out["label"].shape[0]
            if self.cropped and self.recipe == "eval":
                yield Batch(augment.eval_view(out["image"], self.mean, self.std), None, labels)
            elif self.cropped and self.recipe == "simclr":  # two crops made by FFCV: flip and colour here
                views = augment.cropped_view(
                    torch.cat([out["image"], out["image2"]]), self.spec, gen, self.mean, self.std
                )
                yield Batch(views[:n], views[n:], labels)
            elif self.cropped:  # supervised: FFCV's crop, then flip + normalise only (as DALI's graph)
                yield Batch(
                    augment.cropped_view(out["image"], self.spec, gen, self.mean, self.std, colour=False),
                    None,
                    labels,
                )
            elif self.recipe == "simclr":  # both views in one call: 2n independent draws, half the launches
                views = augment.simclr_view(
                    torch.cat([out["image"], out["image"]]), self.spec, gen, self.mean, self.std
                )
                yield Batch(views[:n], views[n:], labels)  # batch slices stay channels_last
            elif self.recipe == "supervised":
                view = augment.crop_flip_view(out["image"], gen, self.mean, self.std, flip_p=self.spec.flip_p)
                yield Batch(view, None, labels)
            else:
                yield Batch(augment.eval_view(out["image"], self.mean, self.std), None, labels)


def stream_options(converted, world_size, order=None, os_cache=None):
    """(order, os_cache) with the defaults filled in. A converted dataset may be larger than RAM:
    with os_cache=True FFCV memory-maps the whole file, and the page cache it fills counts against
    each process (and a container's memory limit) up to the file's size. So it is read with
    os_cache=False (FFCV's own buffers) in order "windowed" (ffcv_order: the pages in flight are
    bounded by recipes.STREAM_WINDOW samples, whatever the file's size, on any number of ranks).
    In-memory data (a cached .beton of an ArrayDataset) keeps FFCV's defaults: os_cache=True,
    order "random" (a uniform permutation)."""
    if order is None:
        order = "windowed" if converted else "random"
    if os_cache is None and converted:
        os_cache = False
    return order, os_cache


def build(
    data,
    *,
    batch_size,
    device="cpu",
    seed=0,
    recipe="simclr",
    drop_last=True,
    shuffle=True,
    rank=0,
    world_size=1,
    source=None,
    cache_dir=None,
    workers=None,
    order=None,
    spec=None,
    os_cache=None,
) -> FFCVPipeline:
    """FFCV loader over `data` (ArrayDataset; its mean/std normalise). Backend keywords:
    source: an existing .beton of `data` (else the cached copy); cache_dir: where that copy lives;
    workers: FFCV's numba threads (default: all cores); order: "random" | "quasi_random" |
    "windowed" (the last two bound memory on files larger than RAM, quasi_random not with
    world_size > 1; default: see stream_options);
    spec: SimCLR augmentation parameters (recipes.SimCLRRecipe, default its defaults; simclr views
    come out spec.size x spec.size, the other recipes keep the images' own size; the supervised
    recipe flips with spec.flip_p); os_cache: FFCV's choice between memory-mapping the file (True,
    FFCV's default) and reading the pages a batch needs into its own buffers (False; default: see
    stream_options).
    `data` may be a ConvertedDataset of a .beton (streamed from its file, its `indices` only).
    When its images keep their own sizes, FFCV's decoder crops them while decoding: simclr and
    supervised views come from RandomResizedCropRGBImageDecoder(data.image_size, spec.scale,
    spec.ratio) (one decoder per view; FFCV draws these crops from numba's generator, which it does
    not seed, so the crops, unlike order, flips and colour, do not replay on resume), eval from
    CenterCropRGBImageDecoder(ratio 0.875): resize + centre crop."""
    ffcv_format.require()
    converted = isinstance(data, ConvertedDataset)
    if converted and data.format != "ffcv":
        raise DataError(
            f"{data.path} is a DALI shard directory: use --pipeline dali (ffcv reads .beton files)"
        )
    data = data if converted else as_dataset(data)
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    order, os_cache = stream_options(converted, world_size, order, os_cache)
    if order not in ORDERS:
        raise DataError(f"unknown FFCV order {order!r}; choose from {', '.join(ORDERS)}")
    if batch_size < 1 or not 0 <= rank < world_size:
        raise DataError(
            f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})"
        )
    workers = int(workers) if workers else len(os.sched_getaffinity(0))
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist

        ok = dist.is_available() and dist.is_initialized()
        if not ok or (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise DataError(
                "FFCV shards by torch.distributed's rank and world size: initialise the process "
                f"group (torchrun) before building, with rank {rank} of {world_size}"
            )
        if order == "quasi_random":
            raise DataError("FFCV 1.0.2 has no quasi_random order in distributed mode; use order='random'")

    cropped = converted and data.variable
    shape = data.stored_shape if converted else data.images.shape[1:3]
    if recipe == "supervised" and not cropped and min(shape) <= PAD:
        raise DataError(f"the supervised recipe pads by {PAD}: images of {shape[0]}x{shape[1]} are too small")

    if converted:
        path, indices = data.path, data.indices
    else:
        path = os.fspath(source) if source is not None else cached_beton(data, cache_dir, workers)
        indices = None
    info = ffcv_format.check(path)
    if not converted and info["count"] != len(data.labels):
        raise DataError(f"{path}: holds {info['count']} samples, the dataset has {len(data.labels)}")
    if cropped:
        spec = replace(spec, size=data.image_size) if spec else SimCLRRecipe(size=data.image_size)
    spec = spec or SimCLRRecipe()
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    label = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=True)]
    if not cropped:
        pipes = {"image": _image_ops(device), "label": label}
    elif recipe == "eval":
        pipes = {
            "image": _image_ops(device, CenterCropRGBImageDecoder((spec.size,) * 2, CENTRE_CROP)),
            "label": label,
        }
    else:

        def crop():
            return RandomResizedCropRGBImageDecoder((spec.size,) * 2, scale=spec.scale, ratio=spec.ratio)

        pipes = {"image": _image_ops(device, crop()), "label": label}
        if recipe == "simclr":  # a second decoder of the same field: the second, independent crop
            ops = _image_ops(device, crop())
            pipes["image2"] = PipelineSpec("image", decoder=ops[0], transforms=ops[1:])
    if recipe == "eval" or not shuffle:
        traversal = OrderOption.SEQUENTIAL
    elif order == "windowed":
        traversal = ffcv_order.Windowed.factory(
            window=recipes.STREAM_WINDOW, rank=rank, world_size=world_size
        )
    else:
        traversal = OrderOption.QUASI_RANDOM if order == "quasi_random" else OrderOption.RANDOM
    try:
        with ffcv_format.torch_threads_kept():
            extra = {} if os_cache is None else {"os_cache": bool(os_cache)}
            # quasi_random seeds numba with ffcv_seed * 912300 + epoch, an int64: a 31-bit seed fits
            ffcv_seed = derive_seed(seed, bits=31 if traversal == OrderOption.QUASI_RANDOM else 63)
            loader = FFCVLoader(
                path,
                batch_size=batch_size,
                num_workers=workers,
                order=traversal,
                distributed=distributed,
                seed=ffcv_seed,
                drop_last=drop_last,
                pipelines=pipes,
                indices=indices,
                **extra,
            )
    except (ValueError, TypeError, AssertionError, NotImplementedError, MemoryError) as e:
        raise DataError(f"{path}: FFCV cannot load it ({type(e).__name__}: {e})") from None
    if len(loader) == 0:
        raise DataError(
            f"{len(data.labels)} images give no full batch of {batch_size} (drop_last={drop_last})"
        )
    if converted:
        check_per_process(len(data.labels), batch_size, world_size, drop_last)
    names = list(loader.pipeline_specs)  # FFCV yields one output per pipeline, in this order
    # numba 0.68 raises (and prints) a harmless KeyError when it garbage-collects a decoder's
    # compiled code (imdecode specialised on literal arguments); keeping that code (kilobytes) until
    # interpreter exit, where numba skips the cleanup, keeps stderr clean.
    _COMPILED.append(loader.code)
    return FFCVPipeline(
        loader, names, recipe, spec, device, seed, rank, tuple(data.mean), tuple(data.std), cropped=cropped
    )


def _measure(argv=None):
    """Loader-only throughput of the FFCV pipeline: two-view images per second (CIFAR-10 train when
    --data-dir is given, else random 32x32 data; raw .beton, so decoding cost is the same)."""
    import argparse
    import time
    from types import SimpleNamespace

    parser = argparse.ArgumentParser(description=_measure.__doc__)
    parser.add_argument(
        "--data-dir", default=None, help="CIFAR-10 root for datasets.load('cifar10', 'train')"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=50000, help="images in the random dataset")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=None, help="FFCV threads (default: all cores)")
    parser.add_argument(
        "--stage",
        default="full",
        choices=("full", "ffcv"),
        help="full: Batch out (device augmentation included); ffcv: FFCV's decoded batches only",
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one untimed warm-up)")
    args = parser.parse_args(argv)
    if args.data_dir:
        data = load("cifar10", "train", data_dir=args.data_dir)
    else:
        rng = np.random.default_rng(0)
        data = SimpleNamespace(
            images=rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8),
            name="random",
            labels=rng.integers(0, 10, args.n),
            mean=(0.49, 0.48, 0.45),
            std=(0.25, 0.24, 0.26),
        )
    loader = build(data, batch_size=args.batch_size, device=args.device, workers=args.workers)
    sync = torch.cuda.synchronize if loader.device.type == "cuda" else (lambda: None)
    times = []
    for epoch in range(args.epochs + 1):  # epoch 0 compiles FFCV's numba code: untimed
        loader.set_epoch(epoch)
        sync()
        start = time.perf_counter()
        for _ in loader.raw() if args.stage == "ffcv" else loader:
            pass
        sync()  # once per epoch, for the clock
        times.append(time.perf_counter() - start)
    per_epoch = float(np.median(times[1:]))
    images = len(loader) * args.batch_size
    print(
        f"ffcv pipeline ({args.stage}), ffcv {ffcv_format.VERSION()}, {args.device}, "
        f"{loader.ffcv.num_workers} workers, torch {torch.__version__}: {len(data.labels)} images of "
        f"{getattr(data, 'name', '')}, batch {args.batch_size}, "
        f"median of {args.epochs} epochs {per_epoch:.3f} s -> {images / per_epoch:,.0f} images/s "
        f"({2 * images / per_epoch:,.0f} views/s)"
    )


if __name__ == "__main__":
    _measure()
