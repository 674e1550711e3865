"""The plain torchvision DataLoader: the loader most SimCLR code uses today, and the benchmarks' yardstick.

    loader = pipelines.build("torchvision", data, batch_size=512, device="cuda", seed=0, workers=8)
    loader.set_epoch(epoch)
    for batch in loader: ...                      # Batch(view1, view2, labels) on the device

Per image, in `workers` processes: uint8 array -> PIL image -> torchvision transforms -> normalised
float tensor, twice for SimCLR; the default collate stacks a batch, pinned memory and a non-blocking
copy move it to the device, where it is made channels_last. The transforms are the SimCLR CIFAR recipe
(Chen et al. 2020, appendix B.9) with the parameters of `recipes.SimCLRRecipe`:
RandomResizedCrop(size, scale, ratio, bilinear) -> RandomHorizontalFlip -> RandomApply(ColorJitter,
0.8) -> RandomGrayscale(0.2) [-> RandomApply(GaussianBlur(spec.blur_kernel, spec.blur_sigma), 0.5)
above 32 px] -> ToTensor -> Normalize. "supervised": RandomCrop(pad 4, reflect) +
flip; "eval": ToTensor + Normalize only, dataset order. This is the reference the other pipelines
are checked against (recipe "simclr/pil": PIL rounds to 8 bits after the crop and each colour op).

Randomness. Epoch e's order is a permutation seeded from (seed, e), the same on every rank; each
rank takes its own contiguous N // world_size slice of it (DistributedSampler's role; the remainder
is skipped that epoch). The sampler hands every worker (sample seed, index) pairs, the seeds drawn
from (seed, e, rank), and a sample's transforms run under its own seed. So a batch is a pure function
of (seed, epoch, rank) whatever the number of workers, even with persistent workers (which are seeded
only once, when they start) and after a resume; the caller's global RNG is left untouched.
"""

import os

import torch
from PIL import Image

from .. import recipes
from ..batch import Batch, check_per_process
from ..data.arrays import as_dataset
from ..errors import DataError
from ..formats.converted import ConvertedDataset
from ..recipes import PAD, RECIPES, SimCLRRecipe, derive_seed

_IMPORT_ERROR = None
try:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T
except (ImportError, RuntimeError) as e:  # absent, or built for another torch
    T, _IMPORT_ERROR = None, e

EXTRA = "torchvision"


def transform(recipe, spec, mean, std, size):
    """The torchvision transform of one view: PIL image -> float32 (3, H, W) normalised tensor.
    size: (H, W) of the images, kept by the supervised and eval recipes."""
    # ToTensor + Normalize, ending in a plain tensor (not a tv_tensors.Image) for the default collate
    finish = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std), T.ToPureTensor()]
    if recipe == "simclr":
        blur = (
            [T.RandomApply([T.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_prob)]
            if spec.blur_prob > 0
            else []
        )
        return T.Compose(
            [
                T.RandomResizedCrop(
                    spec.size,
                    scale=spec.scale,
                    ratio=spec.ratio,
                    interpolation=InterpolationMode.BILINEAR,
                    antialias=True,
                ),
                T.RandomHorizontalFlip(spec.flip_p),
                T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p),
                T.RandomGrayscale(spec.gray_p),
                *blur,
                *finish,
            ]
        )
    if recipe == "supervised":
        return T.Compose(
            [
                T.RandomCrop(size, padding=PAD, padding_mode="reflect"),
                T.RandomHorizontalFlip(spec.flip_p),
                *finish,
            ]
        )
    return T.Compose(finish)


class ViewDataset(torch.utils.data.Dataset):
    """images uint8 (N, H, W, 3), labels (N,); item (sample seed, i) -> (view, [view,] label)."""

    def __init__(self, images, labels, transform, views):
        self.images, self.labels, self.transform, self.views = images, labels, transform, views

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        seed, i = key
        image = Image.fromarray(self.images[i])
        state = torch.get_rng_state()  # torchvision draws from torch's global RNG: borrow it for this sample
        torch.default_generator.manual_seed(seed)
        views = [self.transform(image) for _ in range(self.views)]
        torch.set_rng_state(state)
        return (*views, int(self.labels[i]))


class EpochSampler(torch.utils.data.Sampler):
    """Yields this rank's (sample seed, index) pairs of the current epoch (see the module docstring)."""

    def __init__(self, n, *, seed, rank, world_size, shuffle):
        self.n, self.seed, self.rank, self.shuffle = n, seed, rank, shuffle
        self.shard = n // world_size
        self.epoch = 0

    def __len__(self):
        return self.shard

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, self.epoch))  # same order on every rank
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        mine = order[self.rank * self.shard : (self.rank + 1) * self.shard]
        g.manual_seed(derive_seed(self.seed, self.epoch, 1, self.rank))
        seeds = torch.randint(0, 2**62, (self.shard,), generator=g)
        return iter(zip(seeds.tolist(), mine.tolist()))


class TorchvisionLoader:
    """Loader protocol (see batch.py) around a torch DataLoader."""

    def __init__(self, loader, sampler, device, mean, std, recipe):
        self.loader, self.sampler, self.device = loader, sampler, device
        self.mean, self.std = mean, std
        self.recipe_name = recipes.name("torchvision", recipe)  # what the trainer records in config.json
        self.rank = sampler.rank

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = int(epoch)

    def _to_device(self, x):
        return x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def __iter__(self):
        # The DataLoader draws its workers' base seed from this generator (from torch's global RNG
        # without one): seeded from (seed, epoch, rank), so Python's and numpy's RNGs in workers, for
        # any user transform that reads them, are reproducible too.
        self.loader.generator.manual_seed(derive_seed(self.sampler.seed, self.sampler.epoch, 2, self.rank))
        for *views, labels in self.loader:
            views = [self._to_device(v) for v in views]
            yield Batch(
                views[0], views[1] if len(views) == 2 else None, labels.to(self.device, non_blocking=True)
            )


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus)


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
    spec=None,
    workers=None,
) -> TorchvisionLoader:
    """torchvision DataLoader over `data` (an ArrayDataset; its mean/std normalise).
    Backend keywords: spec, the SimCLR augmentation parameters (augment.SimCLRRecipe; simclr views come
    out spec.size x spec.size, the other recipes keep the images' size; the supervised recipe flips with
    spec.flip_p); workers, DataLoader worker processes (default min(8, CPUs); 0 = in this process)."""
    if T is None:
        why = f" ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})" if _IMPORT_ERROR else ""
        raise DataError(f"the torchvision pipeline needs torchvision: pip install -e .[torchvision]{why}")
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if int(batch_size) < 1 or int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DataError(
            f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})"
        )
    if isinstance(data, ConvertedDataset):
        raise DataError(
            f"{data.path}: the torchvision pipeline reads in-memory datasets (an image folder with "
            f"--dataset imagefolder --data-dir DIR); a converted dataset streams through "
            f"--pipeline {data.format}"
        )
    data = as_dataset(data)
    images, labels = data.images, data.labels
    batch_size, rank, world_size = int(batch_size), int(rank), int(world_size)
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")
    check_per_process(len(labels), batch_size, world_size, drop_last)
    if recipe == "supervised" and min(images.shape[1:3]) <= PAD:
        raise DataError(
            f"the supervised recipe pads by {PAD}: images of {images.shape[1]}x{images.shape[2]} "
            "are too small"
        )
    device = torch.device(device)
    mean, std = data.mean, data.std
    spec = spec or SimCLRRecipe()
    views = 2 if recipe == "simclr" else 1
    dataset = ViewDataset(images, labels, transform(recipe, spec, mean, std, tuple(images.shape[1:3])), views)
    sampler = EpochSampler(
        len(labels),
        seed=int(seed),
        rank=rank,
        world_size=world_size,
        shuffle=bool(shuffle) and recipe != "eval",
    )  # eval keeps dataset order
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=bool(drop_last),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator(),
    )
    return TorchvisionLoader(loader, sampler, device, mean, std, recipe)
