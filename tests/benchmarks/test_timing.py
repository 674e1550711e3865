"""benchmarks.timing.Stopwatch measures the window it brackets, on the CPU and (where there is
one) on a GPU, where the end event is recorded only after the host has left the block."""

import time

import pytest
import torch

from benchmarks import timing

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_stopwatch_times_its_window(device):
    with timing.Stopwatch(device) as sw:
        time.sleep(0.02)
    assert sw.seconds >= 0.02
