"""The pure-torch pipeline: the whole dataset lives on the device, batches are augmented there.

    loader = pipelines.build("gpu", data, batch_size=512, device="cuda", seed=0)
    loader.set_epoch(epoch)
    for batch in loader: ...                     # Batch(view1, view2, labels), all on the device
    python -m pipelines.loaders.gpu --device cpu --n 10000 --batch-size 512   # loader-only images/s

As airbench does for CIFAR: the uint8 images are copied to the device once (N, 3, H, W; 150 MB for
CIFAR-10), and each step gathers the next batch of the epoch order and makes its views with
`augment` (simclr: two independent views; supervised: reflect-pad-4 crop + flip; eval: normalise
only). No worker processes, no host round trip, no host-device sync per step: the step's index
slice is taken with Python integers and everything else is queued on the device. On CUDA the next
batch is augmented on a side stream while the current step computes; two-view batches come as one
contiguous (2B, 3, H, W) tensor (`Batch.from_views`), which SimCLR feeds to its network as is.

Randomness: epoch e's order comes from a generator on the device seeded from (seed, e), the same on
every rank; augmentation from one seeded from (seed, e, rank). Both are re-created each time an epoch
is iterated, so a batch is a pure function of (seed, epoch, rank): resume is exact, and iterating an
epoch twice gives the same batches. With world_size > 1 each rank takes its own contiguous slice of
the same permutation, N // world_size images (the remainder of the permutation is skipped that
epoch), so shards are disjoint and every rank runs the same number of steps.
"""

import numpy as np
import torch

from .. import augment, recipes
from ..batch import Batch, check_per_process
from ..data.arrays import as_dataset
from ..errors import DataError
from ..formats.converted import ConvertedDataset, decode_for_device
from ..recipes import PAD, RECIPES, SimCLRRecipe, derive_seed

EXTRA = None  # pure torch


class GPULoader:
    """Loader protocol (see batch.py) over images (N, 3, H, W) uint8 and labels (N,) int64 on `device`."""

    def __init__(
        self,
        images,
        labels,
        *,
        batch_size,
        recipe,
        spec,
        seed,
        rank,
        world_size,
        drop_last,
        shuffle,
        mean,
        std,
    ):
        self.images, self.labels = images, labels
        self.device = images.device
        self.batch_size, self.recipe, self.spec = batch_size, recipe, spec
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = drop_last
        self.shuffle = shuffle and recipe != "eval"  # eval keeps dataset order
        self.mean, self.std = mean, std
        self.shard = len(labels) // world_size if world_size > 1 else len(labels)
        self.epoch = 0
        self.recipe_name = recipes.name("gpu", recipe)  # recorded in config.json and benchmark tables

    def __len__(self):
        steps, rest = divmod(self.shard, self.batch_size)
        return steps + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, *parts):
        gen = torch.Generator(device=self.device)
        gen.manual_seed(derive_seed(self.seed, self.epoch, *parts))
        return gen

    def order(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, (shard,) int64 on the device."""
        n = len(self.labels)
        if self.shuffle:  # same generator state on every rank -> the same permutation everywhere
            perm = torch.randperm(n, generator=self._generator(0), device=self.device)
        else:
            perm = torch.arange(n, device=self.device)
        return perm[self.rank * self.shard : (self.rank + 1) * self.shard]

    def _make(self, idx, gen) -> Batch:
        """The batch of sample indices `idx`, queued on the current stream."""
        labels = self.labels.index_select(0, idx)
        if self.recipe == "simclr":
            # Both views in one pass (2n independent parameter draws, half the kernel launches),
            # yielded as the one contiguous (2B, 3, H, W) tensor they already are.
            views = augment.simclr_view(
                self.images.index_select(0, torch.cat([idx, idx])), self.spec, gen, self.mean, self.std
            )
            return Batch.from_views(views, labels)
        if self.recipe == "supervised":
            view = augment.crop_flip_view(
                self.images.index_select(0, idx), gen, self.mean, self.std, flip_p=self.spec.flip_p
            )
            return Batch(view, None, labels)
        return Batch(augment.eval_view(self.images.index_select(0, idx), self.mean, self.std), None, labels)

    def __iter__(self):
        """Batch k+1 is made before batch k is handed over. On CUDA it is made on a side stream, so
        its augmentation overlaps step k's compute; on a CPU the same code runs in order."""
        mine, gen = self.order(), self._generator(1, self.rank)
        b, steps = self.batch_size, len(self)
        cuda = self.device.type == "cuda"
        main = torch.cuda.current_stream(self.device) if cuda else None
        side = torch.cuda.Stream(self.device) if cuda else None

        def make(step):
            idx = mine[step * b : (step + 1) * b]  # Python-int slice of a device tensor: no sync
            if not cuda:
                return self._make(idx, gen)
            with torch.cuda.stream(side):
                return self._make(idx, gen)

        if cuda:
            side.wait_stream(main)  # `mine` was computed on the main stream
        ahead = make(0) if steps else None
        for step in range(steps):
            batch = ahead
            if cuda:
                main.wait_stream(side)  # the step waits for its batch, not for the one after it
                for t in (batch.view1, batch.view2, batch.labels):
                    if t is not None:
                        t.record_stream(main)  # made on `side`, used on `main`: keep the memory until then
            ahead = make(step + 1) if step + 1 < steps else None
            yield batch


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
) -> GPULoader:
    """GPU-resident loader over `data` (an ArrayDataset; its mean/std normalise).
    Backend keyword: spec, the SimCLR augmentation parameters (recipes.SimCLRRecipe, default its
    defaults; simclr views come out spec.size x spec.size, the other recipes keep the images' size;
    the supervised recipe flips with spec.flip_p)."""
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if int(batch_size) < 1 or int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DataError(
            f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})"
        )
    if isinstance(data, ConvertedDataset):  # decoded onto the device only when it fits there
        data = decode_for_device(data, device)
    data = as_dataset(data)  # the one validation every backend runs
    images, labels = data.images, data.labels
    batch_size, rank, world_size = int(batch_size), int(rank), int(world_size)
    check_per_process(len(labels), batch_size, world_size, drop_last)
    if recipe == "supervised" and min(images.shape[1:3]) <= PAD:
        raise DataError(
            f"the supervised recipe pads by {PAD}: images of {images.shape[1]}x{images.shape[2]} "
            "are too small"
        )
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    # Once per build: NHWC host array -> NCHW uint8 on the device (the permute runs there).
    on_device = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(labels.astype(np.int64)).to(device)
    return GPULoader(
        on_device,
        labels,
        batch_size=batch_size,
        recipe=recipe,
        spec=spec or SimCLRRecipe(),
        seed=int(seed),
        rank=rank,
        world_size=world_size,
        drop_last=bool(drop_last),
        shuffle=bool(shuffle),
        mean=tuple(float(m) for m in data.mean),
        std=tuple(float(s) for s in data.std),
    )


def _measure(argv=None):
    """Loader-only throughput on random CIFAR-sized data: two-view images per second."""
    import argparse
    import time
    from types import SimpleNamespace

    parser = argparse.ArgumentParser(description=_measure.__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=10000, help="images in the random dataset")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--recipe", default="simclr", choices=RECIPES)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one untimed warm-up)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    data = SimpleNamespace(
        images=rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8),
        labels=rng.integers(0, 10, args.n),
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
    )
    loader = build(data, batch_size=args.batch_size, device=args.device, recipe=args.recipe)
    sync = torch.cuda.synchronize if loader.device.type == "cuda" else (lambda: None)
    times = []
    for epoch in range(args.epochs + 1):
        loader.set_epoch(epoch)
        sync()
        start = time.perf_counter()
        for batch in loader:
            pass
        sync()  # the only host-device sync: once per epoch, for the clock
        times.append(time.perf_counter() - start)
    per_epoch = float(np.median(times[1:]))
    images = len(loader) * args.batch_size
    views = images * (2 if args.recipe == "simclr" else 1)
    cuda = loader.device.type == "cuda"
    name = torch.cuda.get_device_name(loader.device) if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"gpu pipeline, recipe {args.recipe}, {args.device} ({name}), torch {torch.__version__}: {args.n} images "
        f"32x32, batch {args.batch_size}, {len(loader)} steps/epoch, median of {args.epochs} epochs "
        f"{per_epoch:.3f} s -> {images / per_epoch:,.0f} images/s ({views / per_epoch:,.0f} views/s)"
    )


if __name__ == "__main__":
    _measure()
