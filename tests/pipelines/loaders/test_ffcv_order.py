"""The windowed FFCV order: a permutation per epoch (pure function of seed and epoch), equal disjoint
parts per rank that together cover the epoch, and, scheduled by FFCV's own page scheduler, a page
pool that does not grow with the file while order "random" grows with it."""

import numpy as np
import pytest

from pipelines.loaders.ffcv_order import windowed

PER_PAGE = 50  # samples per page of these synthetic files (a 15 KB JPEG in 8 MiB pages: ~550)


def pages(n):
    return np.arange(n) // PER_PAGE


def test_each_epoch_is_a_permutation_that_replays():
    n = 1000
    a = windowed(np.arange(n), pages(n), seed=7, epoch=0, window=128)
    np.testing.assert_array_equal(np.sort(a), np.arange(n))
    np.testing.assert_array_equal(a, windowed(np.arange(n), pages(n), seed=7, epoch=0, window=128))
    assert not np.array_equal(a, windowed(np.arange(n), pages(n), seed=7, epoch=1, window=128))
    assert not np.array_equal(a, windowed(np.arange(n), pages(n), seed=8, epoch=0, window=128))
    subset = np.arange(0, n, 3)  # a split's indices: exactly those, once each
    np.testing.assert_array_equal(np.sort(windowed(subset, pages(n), seed=7, epoch=0, window=128)), subset)


def test_blocks_are_whole_pages_shuffled_and_the_pages_permuted():
    n, window = 2000, 200  # 4 pages of 50 samples a block
    order = windowed(np.arange(n), pages(n), seed=0, epoch=0, window=window, min_pages=1)
    blocks = order.reshape(-1, window)
    assert all(len(np.unique(pages(n)[b])) == window // PER_PAGE for b in blocks)  # whole pages
    assert np.mean(np.diff(blocks, axis=1) == 1) < 0.05  # shuffled inside
    first = [pages(n)[b].min() for b in blocks]
    assert first != sorted(first)  # the pages come in a random order, not the file's
    other = windowed(np.arange(n), pages(n), seed=0, epoch=1, window=window, min_pages=1).reshape(-1, window)
    mates = [{int(p) for p in np.unique(pages(n)[b])} for b in other]
    assert mates != [{int(p) for p in np.unique(pages(n)[b])} for b in blocks]  # new page groups each epoch


def test_a_block_spans_at_least_min_pages_when_samples_are_small():
    """Raw CIFAR holds ~2,700 samples per 8 MiB page: a 4,096-sample block would be 1-2 pages, and
    a page's samples would share batches only with each other. Blocks span MIN_PAGES pages then."""
    per_page, n = 2700, 2700 * 19
    page_of = np.arange(n) // per_page
    order = windowed(np.arange(n), page_of, seed=3, epoch=0, window=4096)
    head = order[: 8 * per_page]  # the first block: 8 pages
    assert len(np.unique(page_of[head])) == 8
    assert len(np.unique(page_of[head[:512]])) == 8  # one batch already mixes them all


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_equal_disjoint_parts_that_cover_the_epoch(world):
    n = 1001  # not a multiple of world: padded by repetition, as torch's DistributedSampler
    parts = [
        windowed(np.arange(n), pages(n), seed=1, epoch=4, window=64, rank=r, world_size=world)
        for r in range(world)
    ]
    per_rank = -(-n // world)
    assert all(len(p) == per_rank for p in parts)
    counts = np.bincount(np.concatenate(parts), minlength=n)
    assert counts.min() == 1 and counts.max() <= 2  # every sample; none on two ranks but the padding
    assert (counts == 2).sum() == per_rank * world - n


def test_ffcv_page_pool_stays_bounded_as_the_file_grows():
    """FFCV's ProcessCacheManager allocates one slot per page its schedule keeps open at once
    (ffcv.memory_managers.process_cache.schedule.compute_schedule). With the windowed order that
    count is the same for a file 4x larger; with order "random" it grows with the file."""
    pytest.importorskip("ffcv")
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    batch, window = 64, 1024

    def slots(n, order):
        batches = [set(pages(n)[order[i : i + batch]]) for i in range(0, len(order) - batch + 1, batch)]
        return compute_schedule(batches).num_slots

    small, large = 20_000, 80_000
    w = [slots(n, windowed(np.arange(n), pages(n), seed=0, epoch=0, window=window)) for n in (small, large)]
    rng = np.random.default_rng(0)
    r = [slots(n, rng.permutation(n)) for n in (small, large)]
    bound = 2 * (window // PER_PAGE + 1)  # two blocks of whole pages
    assert w[0] <= bound and w[1] <= bound, (w, bound)
    assert abs(w[1] - w[0]) <= 2, w
    assert r == [small // PER_PAGE, large // PER_PAGE], r  # random: every page open till the end


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        windowed(np.arange(10), pages(10), seed=0, epoch=0, window=0)
    with pytest.raises(ValueError):
        windowed(np.arange(10), pages(10), seed=0, epoch=0, window=4, rank=2, world_size=2)
