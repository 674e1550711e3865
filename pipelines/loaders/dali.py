"""NVIDIA DALI pipeline: a DALI graph reads the webdataset shards written by `dali_format`, decodes
and augments on the GPU, and hands torch tensors to the trainer through DALI's PyTorch plugin.

    loader = pipelines.build("dali", data, batch_size=512, device="cuda", workers=8)
    loader = pipelines.build("dali", data, batch_size=512, source="data/cifar10_dali")

Without `source`, `data` is converted once (raw uint8, verified) into
`<cache>/dali/<fingerprint>` (`files.cache_root()`) and reused by later runs.

The graph: reader (host; this rank's part of the epoch, buffer-shuffled) -> decode (raw: reshape,
copied to the GPU; JPEG: nvJPEG, device "mixed"). For SimCLR, DALI's work ends there: both views are
cropped, flipped and coloured on the device by the same torch ops as the gpu and ffcv pipelines
(`augment.simclr_view`, recipe "simclr/torch"), because DALI's ops do not compute torchvision's:
`color_twist` applies one fused map in a fixed order, contrasts about mid-grey 128 instead of the
image's mean grey, rotates hue in YIQ instead of HSV, and its grayscale is grey only to within one
8-bit level; and `random_resized_crop`'s resampling differs measurably from torchvision's bilinear
crop on the resampling statistic of tests/pipelines/test_recipe_parity.py. supervised / eval run
whole in DALI (`crop_mirror_normalize`: reflect-pad crop, flip with spec.flip_p, normalise), exactly
as torchvision. The per-sample random parameters of the graph are drawn by DALI's host-side random
ops, as DALI requires for argument inputs. With device="cpu" the very same graph is built with CPU operators
(tests, no GPU). Outputs are HWC, so `permute(0, 3, 1, 2)` is already a (B, 3, H, W)
channels_last tensor without a copy.

Reproducibility: every epoch gets a new DALI pipeline with seed = f(seed, e, rank), reading the shards
in an order permuted with f(seed, e) (same on every rank); the SimCLR ops draw from a torch generator
seeded with f(seed, e, 1, rank). Order and augmentation of epoch e are
therefore a pure function of (seed, e, rank) for a given device type and DALI version (CPU and GPU
resizers round differently); they do not depend on `workers`, and replaying an epoch replays it.
Starting a pipeline costs ~0.1 s plus filling the shuffle buffer (~1.5 s for CIFAR-10's 50k images
on a 2-core CPU), so by default (`ahead=True`) epoch e+1's pipeline is started in a background
thread as soon as epoch e starts; set_epoch(e+1) then finds it ready.
Shuffling: the reader shuffles within a buffer of `initial_fill` samples. For in-memory data (the
cached copy) the buffer holds the whole rank's part when it fits in SHUFFLE_BUFFER_BYTES (CIFAR:
always), which makes the order a uniform permutation; for larger data it is a permutation of
shards plus a local shuffle. A converted dataset (`--dataset PATH`) may be far larger than RAM, and
the buffer holds its encoded samples (twice while the next epoch's pipeline starts ahead), so it is
CONVERTED_FILL (recipes.STREAM_WINDOW) samples whatever the dataset's size, read from the shards
with plain reads (dont_use_mmap: memory-mapped pages a pass touched would stay in the process's
RSS): the epoch is the per-epoch permutation of the shards read through a buffer of about four of
them. fastssl.convert writes samples in a seeded random order by default, so those few shards
already mix the classes of an image folder (which lists them class by class).
Multi-GPU: rank r reads DALI shard r of world_size (a contiguous slice of the permuted shard list,
so ranks are disjoint and together cover the epoch). len() = (N // world_size) // batch_size with
drop_last, so every rank takes the same number of steps.
"""

import math
import os
import tempfile
import threading
from dataclasses import replace

import numpy as np
import torch

from .. import augment, recipes
from ..batch import Batch
from ..data.arrays import as_dataset, fingerprint
from ..errors import DataError
from ..files import cache_path
from ..formats import dali as dali_format
from ..formats.converted import ConvertedDataset
from ..formats.writer import convert
from ..recipes import CENTRE_CROP, PAD, RECIPES, SimCLRRecipe, derive_seed

EXTRA = "dali"
CACHE_DIR = "dali"  # in files.cache_root(); an absolute path replaces it
SHUFFLE_BUFFER_BYTES = 1 << 30  # reader shuffle buffer: whole rank's part when it fits in 1 GiB
# A converted dataset's buffer: a fixed number of samples (about 4 shards of dali_format's default
# 1000), so the reader's memory does not grow with the dataset (see the module docstring).
CONVERTED_FILL = recipes.STREAM_WINDOW

try:
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except (ImportError, RuntimeError, OSError):  # reported by dali_format.require() with the install hint
    pass


def cached_source(data, cache_dir=None, workers=None) -> str:
    """Directory holding `data` in the DALI format (raw), converted and verified on first use."""
    cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir else cache_path(CACHE_DIR)
    path = os.path.join(cache_dir, fingerprint(data))

    def ready():
        try:
            return dali_format.check(path)["count"] == len(data.labels)
        except DataError:
            return False

    if not ready():  # absent or damaged: (re)write it
        try:
            convert(data, "dali", path, force=True, workers=workers, encoding="raw", n_check=256)
        except OSError as e:  # e.g. another rank published the same conversion first (rename race)
            if not ready():
                raise DataError(f"{path}: cannot write the DALI cache ({e})") from None
    return path


# ------------------------------------------------------------------------------------- graph pieces


def _normalize(images, dev, mean, std, mirror=0, crop=None, pos=None):
    """Optional crop (fixed size at pos_x, pos_y in [0,1]) + optional flip + (x/255 - mean)/std -> HWC float."""
    kw = dict(crop=crop, crop_pos_x=pos[0], crop_pos_y=pos[1]) if crop is not None else {}
    return fn.crop_mirror_normalize(
        images,
        device=dev,
        dtype=types.FLOAT,
        output_layout="HWC",
        mirror=mirror,
        mean=[255 * m for m in mean],
        std=[255 * s for s in std],
        **kw,
    )


def _supervised_view(images, dev, mean, std, height, width, pad=PAD, flip_p=0.5):
    """Reflect-pad by `pad`, take a random HxW crop (each of the 2*pad+1 offsets equally likely), flip with flip_p."""

    def mirror_strip(x, start, axis):
        flip = dict(horizontal=1) if axis == "W" else dict(vertical=1, horizontal=0)
        return fn.flip(
            fn.slice(x, start=[start], shape=[pad], axis_names=axis, device=dev), device=dev, **flip
        )

    x = fn.cat(
        mirror_strip(images, 1, "W"),
        images,
        mirror_strip(images, width - 1 - pad, "W"),
        axis_name="W",
        device=dev,
    )
    x = fn.cat(mirror_strip(x, 1, "H"), x, mirror_strip(x, height - 1 - pad, "H"), axis_name="H", device=dev)
    offsets = [k / (2 * pad) for k in range(2 * pad + 1)]  # position k/(2 pad) -> offset exactly k pixels
    pos = (fn.random.uniform(values=offsets), fn.random.uniform(values=offsets))
    return _normalize(
        x, dev, mean, std, mirror=fn.random.coin_flip(probability=flip_p), crop=[height, width], pos=pos
    )


class DALILoader:
    """Loader protocol (see batch.py) over a DALI pipeline rebuilt per epoch."""

    def __init__(
        self,
        source,
        info,
        *,
        batch_size,
        device,
        seed,
        recipe,
        spec,
        drop_last,
        shuffle,
        rank,
        world_size,
        workers,
        prefetch,
        mean,
        std,
        ahead,
        cropped=False,
        keep=None,
        converted=False,
    ):
        self.source, self.info, self.batch_size = source, info, batch_size
        self.device, self.seed, self.recipe, self.spec = device, seed, recipe, spec
        self.drop_last, self.shuffle, self.rank, self.world_size = drop_last, shuffle, rank, world_size
        self.workers, self.prefetch, self.mean, self.std = workers, prefetch, mean, std
        self.ahead, self._ahead = ahead, None  # (epoch, thread, result box) of a pipeline started early
        self.recipe_name = recipes.name("dali", recipe)  # what the trainer records in config.json
        self.cropped = cropped  # images of their own sizes: the graph crops them (see build)
        self._keep = keep  # temporary index files of a subset, removed with the loader
        self.epoch = 0
        # A converted file is read with plain reads, not memory-mapped: mapped pages a pass touched
        # stay in the process's RSS (file-backed, +145 MiB from 10,000 to 20,000 images measured).
        self.converted = converted
        n = info["count"]
        self.shard_count = (rank + 1) * n // world_size - rank * n // world_size  # DALI's shard split
        if converted:  # streamed from a file of any size: a buffer of fixed length
            self.initial_fill = int(min(self.shard_count, CONVERTED_FILL))
        else:
            sample_bytes = sum(s["bytes"] for s in info["shards"]) / n
            self.initial_fill = int(min(self.shard_count, max(1024, SHUFFLE_BUFFER_BYTES // sample_bytes)))

    def __len__(self):
        if self.drop_last:
            return (self.info["count"] // self.world_size) // self.batch_size
        return math.ceil(self.shard_count / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def pipeline(self, epoch):
        """The DALI pipeline of epoch `epoch` (outputs: view1[, view2], labels)."""
        gpu = self.device.type == "cuda"
        dev = "gpu" if gpu else "cpu"
        info = self.info
        order = np.arange(len(info["shards"]))
        if self.shuffle:
            order = np.random.default_rng(derive_seed(self.seed, epoch)).permutation(order)
        tars, idxs = dali_format.reader_files(self.source, info, order)
        pipe = Pipeline(
            batch_size=self.batch_size,
            num_threads=self.workers,
            device_id=self.device.index if gpu else None,
            seed=derive_seed(self.seed, epoch, self.rank, bits=31),
            prefetch_queue_depth=self.prefetch,
        )
        with pipe:
            encoded, labels = fn.readers.webdataset(
                paths=tars,
                index_paths=idxs,
                ext=[dali_format.IMAGE_EXT[info["encoding"]], "cls"],
                dtypes=[types.UINT8, types.INT64],
                missing_component_behavior="error",
                name="reader",
                shard_id=self.rank,
                num_shards=self.world_size,
                random_shuffle=self.shuffle,
                initial_fill=self.initial_fill,
                pad_last_batch=not self.drop_last,
                dont_use_mmap=self.converted,
            )
            images = dali_format.decode(encoded, info["encoding"], info["height"], info["width"], dev)
            if self.cropped:
                views = self._cropped_views(images, dev)
            elif self.recipe == "simclr":
                views = [images]  # decoded HWC uint8: the views are made in torch (__iter__)
            elif self.recipe == "supervised":
                views = [
                    _supervised_view(
                        images,
                        dev,
                        self.mean,
                        self.std,
                        info["height"],
                        info["width"],
                        flip_p=self.spec.flip_p,
                    )
                ]
            else:
                views = [_normalize(images, dev, self.mean, self.std)]
            pipe.set_outputs(*views, labels.gpu() if gpu else labels)
        return pipe

    def _cropped_views(self, images, dev):
        """Images of their own sizes -> fixed-size views inside the graph: simclr, two independent
        random_resized_crop (the rest of each view is made in torch, __iter__); supervised, one
        crop + flip + normalise; eval, shorter side to size / 0.875 + centre crop + normalise."""
        size, spec = self.spec.size, self.spec
        if self.recipe == "eval":
            resized = fn.resize(images, device=dev, resize_shorter=round(size / CENTRE_CROP))
            return [_normalize(resized, dev, self.mean, self.std, crop=[size, size], pos=(0.5, 0.5))]

        def crop():
            return fn.random_resized_crop(
                images,
                device=dev,
                size=[size, size],
                random_area=list(spec.scale),
                random_aspect_ratio=list(spec.ratio),
            )

        if self.recipe == "simclr":
            return [crop(), crop()]
        return [
            _normalize(crop(), dev, self.mean, self.std, mirror=fn.random.coin_flip(probability=spec.flip_p))
        ]

    def _start(self, epoch):
        """Build epoch `epoch`'s pipeline and its iterator, which runs the first batches (and, when
        shuffling, fills the reader's shuffle buffer: ~1 s for CIFAR-10 on a small CPU)."""
        names = (
            ["view1", "view2", "labels"] if self.cropped and self.recipe == "simclr" else ["view1", "labels"]
        )
        policy = LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL
        try:
            return DALIGenericIterator(
                self.pipeline(epoch), names, reader_name="reader", last_batch_policy=policy
            )
        except RuntimeError as e:
            raise DataError(
                f"{self.source}: DALI cannot read it ({str(e).strip().splitlines()[0]})"
            ) from None

    def _prepare(self, epoch):
        """Start epoch `epoch`'s pipeline in a background thread, so its start-up overlaps this epoch."""
        box = {}

        def run():
            try:
                box["it"] = self._start(epoch)
            except BaseException as e:  # re-raised in the consumer's thread
                box["error"] = e

        thread = threading.Thread(target=run, name=f"dali-epoch-{epoch}", daemon=True)
        thread.start()
        self._ahead = (epoch, thread, box)

    def _take(self, epoch):
        """The iterator of `epoch`: the one prepared ahead when it is for this epoch, else a new one."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            e, thread, box = ahead
            thread.join()  # host sync point, once per epoch (normally already finished)
            if e == epoch:
                if "error" in box:
                    raise box["error"]
                return box["it"]
        return self._start(epoch)

    def __iter__(self):
        # Eval batches do not depend on the epoch (no shuffle, no randomness): always build "epoch 0",
        # and nothing ahead: an evaluation is usually one pass, so a second pipeline would only hold
        # DALI's buffers and threads until the loader is dropped.
        epoch = 0 if self.recipe == "eval" else self.epoch
        it = self._take(epoch)
        if self.ahead and self.recipe != "eval":
            self._prepare(epoch + 1)  # the usual next call: set_epoch(e + 1)
        steps = len(self)
        gen = None
        if self.recipe == "simclr":
            gen = torch.Generator(device=self.device)
            gen.manual_seed(derive_seed(self.seed, epoch, 1, self.rank))
        for step, out in enumerate(_reported(it, self.source)):
            if step == steps:  # a larger shard of an uneven split has extra batches: all ranks stop together
                break
            d = out[0]
            # HWC -> (B, 3, H, W) channels_last as a view; DALI filled these tensors on the device.
            view, labels = d["view1"].permute(0, 3, 1, 2), d["labels"].view(-1)
            if "view2" in d:  # two crops made by the graph: flip and colour in torch
                both = augment.cropped_view(
                    torch.cat([view, d["view2"].permute(0, 3, 1, 2)]), self.spec, gen, self.mean, self.std
                )
                yield Batch(both[: len(labels)], both[len(labels) :], labels)
            elif gen is None:
                yield Batch(view, None, labels)
            else:  # both views in one call: 2n independent draws, fresh tensors (none points into DALI's)
                both = augment.simclr_view(torch.cat([view, view]), self.spec, gen, self.mean, self.std)
                yield Batch(
                    both[: len(labels)], both[len(labels) :], labels
                )  # batch slices stay channels_last


def _reported(it, source):
    """Iterate a DALI iterator; a sample DALI cannot read or decode mid-epoch ends the run with one
    DataError naming the dataset (the policy of formats/converted.py), not a traceback."""
    while True:
        try:
            out = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            raise DataError(
                f"{source}: DALI could not read or decode a sample mid-epoch "
                f"({' '.join(str(e).split())[:300]})"
            ) from None
        yield out


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
    workers=4,
    prefetch=2,
    spec=None,
    ahead=True,
) -> DALILoader:
    """DALI loader over `data` (ArrayDataset; its mean/std normalise). Backend keywords:
    source: a directory written by dali_format holding `data` (else the cached copy); cache_dir: where
    that copy lives; workers: DALI's CPU threads; prefetch: batches DALI prepares ahead;
    spec: SimCLR augmentation parameters (augment.SimCLRRecipe, default its defaults); ahead: start
    epoch e+1's pipeline in a background thread as soon as epoch e starts (hides the start-up; not
    for the eval recipe, whose passes are all alike and usually one).
    `data` may be a ConvertedDataset of a shard directory (streamed; its `indices` only, read
    through temporary index files). When its images keep their own sizes the graph decodes them and
    crops to data.image_size: simclr, two `random_resized_crop`s (spec.scale, spec.ratio; seeded by
    the pipeline's seed, so they replay), the flip and colour then in torch; supervised, one crop +
    flip; eval, resize the shorter side to size / 0.875 + centre crop."""
    dali_format.require()
    converted = isinstance(data, ConvertedDataset)
    if converted and data.format != "dali":
        raise DataError(f"{data.path} is a .beton file: use --pipeline ffcv (dali reads shard directories)")
    data = data if converted else as_dataset(data)
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if batch_size < 1 or not 0 <= rank < world_size:
        raise DataError(
            f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})"
        )
    spec = spec or SimCLRRecipe()
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"DALI runs on cpu or cuda devices, not {device}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    keep, cropped = None, converted and data.variable
    if converted:
        path, info = data.path, dali_format.check(data.path)
        if data.indices is not None:
            keep = tempfile.TemporaryDirectory(prefix="fastssl-dali-subset-")
            info = dali_format.subset_index(path, info, data.indices, keep.name)
        if cropped:
            spec = replace(spec, size=data.image_size)
    else:
        path = os.fspath(source) if source is not None else cached_source(data, cache_dir, workers)
        info = dali_format.check(path)
    if info["count"] != len(data.labels):
        raise DataError(f"{path}: holds {info['count']} samples, the dataset has {len(data.labels)}")
    if recipe == "eval":
        shuffle = False
    loader = DALILoader(
        path,
        info,
        batch_size=int(batch_size),
        device=device,
        seed=int(seed),
        recipe=recipe,
        spec=spec,
        drop_last=bool(drop_last),
        shuffle=bool(shuffle),
        rank=int(rank),
        world_size=int(world_size),
        workers=max(1, int(workers)),
        prefetch=max(1, int(prefetch)),
        mean=tuple(map(float, data.mean)),
        std=tuple(map(float, data.std)),
        ahead=bool(ahead),
        cropped=cropped,
        keep=keep,
        converted=converted,
    )
    if len(loader) == 0:
        raise DataError(
            f"{len(data.labels)} images give no full batch of {batch_size} per rank "
            f"(world_size={world_size}, drop_last={drop_last})"
        )
    return loader
