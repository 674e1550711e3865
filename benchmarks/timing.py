"""How a benchmark times a window of work: one stopwatch for every measurement.

    with Stopwatch(device) as sw:
        ...              # the work; no host sync inside
    seconds = sw.seconds

On a GPU the window is bracketed by `torch.cuda.synchronize()` and timed with CUDA events, so
queued work is neither missed at the end nor counted from before the start; on the CPU it is
`time.perf_counter()`.
"""

import time

import torch


class Stopwatch:
    """Times the work issued inside a `with` block, in seconds (`.seconds`).

    CUDA: synchronize, start event, ..., synchronize (every stream, so DALI's own streams count too),
    end event; the events give the GPU-side span. CPU: perf_counter. Two syncs per window, none inside.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.seconds = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)  # host sync: outside the timed window
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)  # host sync: closes the window
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.seconds = self.start.elapsed_time(end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.t0
        return False
