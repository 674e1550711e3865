"""FFCV traversal order for files larger than memory: pages in flight bounded by a sample window.

    from pipelines import ffcv_order
    order = ffcv_order.windowed(indices, page_of, seed=7, epoch=0, window=4096, rank=0, world_size=1)
    loader = Loader(path, order=ffcv_order.Windowed.factory(window=4096, rank=0, world_size=1), ...)

With os_cache=False FFCV reads the pages a batch needs into slots of its own and frees a slot after
the page's last sample of the epoch, so its memory is the largest number of pages any stretch of
the epoch keeps open. Order "random" keeps nearly every page open (memory grows with the file);
FFCV's "quasi_random" draws from 2 x batch_size pages at a time (1 GiB of 8 MiB pages at batch 64,
so any smaller file is held whole) and does not run distributed. This order bounds it by samples:
  1. the pages are put in a random order (the same on every rank);
  2. their samples are listed page after page; under torchrun this list is padded by repetition to a
     multiple of world_size and rank r takes the r-th contiguous part (equal lengths, so every rank
     takes the same number of steps, and together they cover the epoch);
  3. the list is cut into blocks of consecutive whole pages, about `window` samples each and at
     least MIN_PAGES pages, each block shuffled on its own.
A batch then comes from the pages of at most two blocks, so FFCV keeps the pages of about two blocks
(2 x window samples, or 2 x MIN_PAGES pages when samples are small), whatever the file's size: the
bound of DALI's shuffle buffer of the same number of samples. The price is the one any streamed
shuffle pays: a batch mixes the samples of one block's pages, which change every epoch, not of the
whole file. fastssl.convert writes samples in a random order, so any block is a uniform sample of
the classes.
The order is a pure function of (seed, epoch, rank, world_size), so a resumed epoch replays it.
"""

import numpy as np

# A block spans at least this many pages: with small samples (raw CIFAR: ~2,700 per 8 MiB page)
# 4,096 samples would be one or two pages, and a page's samples would meet only each other.
MIN_PAGES = 8

try:
    from ffcv.traversal_order.base import TraversalOrder
except (ImportError, RuntimeError, OSError):  # reported by ffcv_format.require() with the install hint
    TraversalOrder = object


def windowed(
    indices, page_of, *, seed, epoch, window, rank=0, world_size=1, min_pages=MIN_PAGES
) -> np.ndarray:
    """The epoch's order of `indices` (sample ids) for rank `rank`; page_of[i] is sample i's page."""
    indices = np.asarray(indices, dtype=np.int64)
    if window < 1 or min_pages < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"need window >= 1, min_pages >= 1 and 0 <= rank < world_size "
            f"(got {window}, {min_pages}, {rank}, {world_size})"
        )
    rng = np.random.default_rng([int(seed), int(epoch)])
    pages = np.asarray(page_of)[indices]
    used, slot = np.unique(pages, return_inverse=True)  # slot: the sample's page among those used
    place = rng.permutation(len(used))[slot]  # the page's place in this epoch's page order
    # a block: `span` consecutive pages of that order, about `window` samples and at least min_pages
    span = max(int(min_pages), -(-int(window) * len(used) // max(1, len(indices))))
    by_page = np.argsort(place, kind="stable")  # samples of a page together, in file order
    listed, block = indices[by_page], place[by_page] // span
    if world_size > 1:
        per_rank = -(-len(listed) // world_size)
        pad = per_rank * world_size - len(listed)  # repeats from the start, in the last block
        listed = np.concatenate([listed, listed[:pad]])
        block = np.concatenate([block, np.full(pad, block[-1] if len(block) else 0)])
        listed, block = (a[rank * per_rank : (rank + 1) * per_rank] for a in (listed, block))
    # one random key per sample, sorted within its block: each block shuffled on its own
    return listed[np.lexsort((rng.random(len(listed)), block))]


class Windowed(TraversalOrder):
    """`windowed` as an FFCV order (FFCV 1.0.2's Loader takes an instance and calls it with itself)."""

    def __init__(self, loader, window, rank, world_size):
        super().__init__(loader)
        table = loader.reader.alloc_table  # one row per allocation: sample_id, ptr, size
        self.page_of = np.zeros(loader.reader.num_samples, dtype=np.int64)
        self.page_of[table["sample_id"]] = table["ptr"] >> int(np.log2(loader.reader.page_size))
        self.window, self.rank, self.world_size = int(window), int(rank), int(world_size)

    def sample_order(self, epoch):
        return windowed(
            self.indices,
            self.page_of,
            seed=self.seed,
            epoch=epoch,
            window=self.window,
            rank=self.rank,
            world_size=self.world_size,
        )

    @classmethod
    def factory(cls, **options):
        """What to pass as Loader(order=...): FFCV 1.0.2 accepts a TraversalOrder *instance* and then
        calls it with the loader (loader.py: `isinstance(order, TraversalOrder)` -> `order(self)`)."""
        factory = object.__new__(_Factory)
        factory.make = lambda loader: cls(loader, **options)
        return factory


class _Factory(TraversalOrder):
    def __init__(self):  # never called: built by Windowed.factory
        raise TypeError("use Windowed.factory(...)")

    def __call__(self, loader):
        return self.make(loader)

    def sample_order(self, epoch):
        raise TypeError("a factory: FFCV calls it with the loader first")
