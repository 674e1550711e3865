"""The windowed FFCV order: a permutation per epoch (pure function of seed and epoch), equal disjoint
parts per rank that together cover the epoch, and, scheduled by FFCV's own page scheduler, a page
pool that does not grow with the file while order "random" grows with it."""
import numpy as np
import pytest

from pipelines.ffcv_order import windowed

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


def test_blocks_are_shuffled_and_the_pages_permuted():
    n, window = 2000, 200
    order = windowed(np.arange(n), pages(n), seed=0, epoch=0, window=window)
    blocks = order.reshape(-1, window)
    # a block holds the samples of about window / PER_PAGE pages, in no particular order
    assert max(len(np.unique(pages(n)[b])) for b in blocks) <= window // PER_PAGE + 1
    assert np.mean(np.diff(blocks, axis=1) == 1) < 0.05
    # the pages come in a random order, not the file's
    first = [pages(n)[b].min() for b in blocks]
    assert first != sorted(first)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_equal_disjoint_parts_that_cover_the_epoch(world):
    n = 1001  # not a multiple of world: padded by repetition, as torch's DistributedSampler
    parts = [windowed(np.arange(n), pages(n), seed=1, epoch=4, window=64, rank=r, world_size=world)
             for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(p) == per_rank for p in parts)
    together = np.concatenate(parts)
    np.testing.assert_array_equal(np.unique(together), np.arange(n))
    assert len(together) - n == per_rank * world - n  # only the padding repeats


def test_ffcv_page_pool_stays_bounded_as_the_file_grows():
    """FFCV's ProcessCacheManager allocates one slot per page its schedule keeps open at once
    (ffcv.memory_managers.process_cache.schedule.compute_schedule). With the windowed order that
    count is the same for a file 4x larger; with order "random" it grows with the file."""
    pytest.importorskip("ffcv")
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    batch, window = 64, 1024

    def slots(n, order):
        batches = [set(pages(n)[order[i:i + batch]]) for i in range(0, len(order) - batch + 1, batch)]
        return compute_schedule(batches).num_slots

    small, large = 20_000, 80_000
    w = [slots(n, windowed(np.arange(n), pages(n), seed=0, epoch=0, window=window)) for n in (small, large)]
    rng = np.random.default_rng(0)
    r = [slots(n, rng.permutation(n)) for n in (small, large)]
    bound = 2 * (window // PER_PAGE + 1) + 2  # two blocks' pages, the pages straddling their edges
    assert w[0] <= bound and w[1] <= bound, (w, bound)
    assert abs(w[1] - w[0]) <= 2, w
    assert r == [small // PER_PAGE, large // PER_PAGE], r  # random: every page open till the end


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        windowed(np.arange(10), pages(10), seed=0, epoch=0, window=0)
    with pytest.raises(ValueError):
        windowed(np.arange(10), pages(10), seed=0, epoch=0, window=4, rank=2, world_size=2)
