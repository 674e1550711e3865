"""benchmarks.throughput.timed_pass measures a loader at the rate it really delivers, whatever sits
in its prefetch queue when the window opens. The loaders here are simulated on a virtual clock (one
worker making a batch every 1/rate s, at most `depth` batches ahead of the consumer), so the test
is exact and instant; the naive window is measured too, to show what the lead-in protects from."""

from types import SimpleNamespace

import pytest

from benchmarks import throughput, timing

BATCH = 8


class Clock:
    t = 0.0


class SimLoader:
    """One worker, `rate` batches/s, at most `depth` batches made or in the making ahead of the
    consumer. Like DataLoader's persistent workers, a new epoch first finishes every batch already
    handed to the worker for a part-read epoch (stale batches). ahead=True: the worker goes on with
    the next epoch's batches whenever the queue has room, before iter() asks (as DALI does)."""

    def __init__(self, clock, n, rate, depth, ahead):
        self.clock, self.n, self.rate, self.depth, self.ahead = clock, n, rate, depth, ahead
        self.finish, self.taken = [], []  # per batch handed to the worker: made at, left the queue at
        self.base, self.used = 0, 0  # first batch of the current epoch; batches read from it

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        pass

    def _make(self, k, not_before):
        while len(self.finish) <= k:
            j = len(self.finish)
            start = max(
                self.finish[-1] if self.finish else 0.0,
                not_before,
                self.taken[j - self.depth] if j >= self.depth else 0.0,
            )
            self.finish.append(start + 1 / self.rate)

    def __iter__(self):
        if 0 < self.used < self.n:  # stale batches of a part-read epoch: finished, then dropped
            last = self.base + min(self.used + self.depth, self.n) - 1
            self._make(last, 0.0)
            for k in range(len(self.taken), last + 1):
                self.clock.t = max(self.clock.t, self.finish[k])
                self.taken.append(self.clock.t)
            self.finish = self.finish[: last + 1]
        self.base, self.used = len(self.taken), 0
        not_before = 0.0 if self.ahead else self.clock.t
        for i in range(self.n):
            k = self.base + i
            self._make(k, not_before)
            self.clock.t = max(self.clock.t, self.finish[k])
            self.taken.append(self.clock.t)
            self.used += 1
            yield SimpleNamespace(view1=SimpleNamespace(shape=(BATCH,)))


def virtual_stopwatch(clock):
    class Stopwatch:
        def __init__(self, device):
            self.seconds = None

        def __enter__(self):
            self.t0 = clock.t
            return self

        def __exit__(self, *exc):
            self.seconds = clock.t - self.t0
            return False

    return Stopwatch


def naive(loader, clock, steps, step=None):
    """The first `steps` batches of a fresh epoch, timed from iter(): what a window without lead-in sees."""
    t0 = clock.t
    it = iter(loader)
    for _ in range(steps):
        next(it)
        if step:
            step(None)
    return steps * BATCH / (clock.t - t0)


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("steps", [40, 20])  # a whole epoch of 40 batches; a part longer than the queue
def test_a_full_queue_neither_flatters_nor_penalises(monkeypatch, ahead, steps):
    clock = Clock()
    monkeypatch.setattr(timing, "Stopwatch", virtual_stopwatch(clock))
    rate, depth = 100.0, 16
    loader = SimLoader(clock, n=40, rate=rate, depth=depth, ahead=ahead)
    for epoch in range(0, 12, 4):
        clock.t += 50.0  # the other pipelines' passes: the worker fills its queue meanwhile
        got = throughput.timed_pass(loader, epoch, steps, "cpu")
        assert got == pytest.approx(rate * BATCH, rel=0.02), (ahead, steps, epoch)

    # Training-bound (a step slower than the loader): the window measures the step's rate.
    step_s = 2 / rate
    train = lambda batch: setattr(clock, "t", clock.t + step_s)  # noqa: E731
    for epoch in range(20, 28, 4):
        clock.t += 50.0
        got = throughput.timed_pass(loader, epoch, steps, "cpu", train)
        assert got == pytest.approx(BATCH / step_s, rel=0.05), (ahead, steps, epoch)


def test_without_lead_in_the_queue_distorts_the_window():
    # What the lead-in is for: timed from iter(), a loader that prepared batches ahead looks faster
    # than it is, and one that must first finish a part-read epoch's batches looks slower.
    rate = 100.0
    clock = Clock()
    ahead = SimLoader(clock, n=40, rate=rate, depth=16, ahead=True)
    list(ahead)
    clock.t += 50.0
    assert naive(ahead, clock, 40) > 1.3 * rate * BATCH
    clock = Clock()
    stale = SimLoader(clock, n=40, rate=rate, depth=16, ahead=False)
    naive(stale, clock, 10)  # a part-read epoch: 16 batches handed out ahead
    assert naive(stale, clock, 10) < 0.5 * rate * BATCH
