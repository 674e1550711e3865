"""The one training step: autocast + method forward + backward + optimiser + schedule.

    step = TrainStep(method, optimizer, schedule, device, bf16=True, compile=True)
    logs = step(batch)     # dict of detached 0-d tensors on the device; no host sync

`fastssl.train` runs it for every batch and `benchmarks.step` times it, so what is measured is
what trains. Compilation covers the model + loss graph (`forward`), `fullgraph=True` by default so
that a graph break fails loudly instead of silently splitting the step. Modes:

- `default`: inductor kernels.
- `max-autotune-no-cudagraphs`: inductor also benchmarks matmul/conv templates (slow to compile).
- `reduce-overhead`: CUDA graphs. Every batch is copied into static input buffers owned by the
  step (marked static: their addresses never change, so the graphs replay on them without
  copying inputs), and each step tells the graph tree that a new iteration begins.

The optimiser's own compiled path is chosen when it is built (`fastssl.optim.LARS(compiled=True)`).
"""

import torch

from pipelines import Batch

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


def setup_device(device) -> None:
    """The CUDA backend settings every training step runs with: TF32 matmuls (inputs rounded to a
    10-bit mantissa, fp32 accumulation; cuDNN convolutions use TF32 by default) and cuDNN's
    autotuner, which pays off because every step has the same shapes."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


class TrainStep:
    """One optimisation step of `model` (a method: `model(batch) -> (loss, logs)`, possibly wrapped
    in DDP) on a `pipelines.Batch`. `compile`: torch.compile the forward (model + loss) with
    `mode`, `fullgraph` and `backend`; the backward follows from it (AOTAutograd).
    `probe_optimizer`: a second optimiser stepped after the first (the online probe's)."""

    def __init__(
        self,
        model,
        optimizer,
        schedule,
        device,
        *,
        bf16: bool,
        compile: bool = False,
        mode: str = "default",
        fullgraph: bool = True,
        backend: str = "inductor",
        probe_optimizer=None,
    ):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        # The online probe's own optimiser (fastssl/online_probe.py), stepped beside the method's.
        self.optimizers = [optimizer] + ([probe_optimizer] if probe_optimizer is not None else [])
        self.device, self.bf16 = torch.device(device), bf16
        self.cudagraphs = compile and mode == "reduce-overhead"
        self._static = None  # the static input buffers of the CUDA-graph mode
        self.forward = self._forward
        if compile:
            self.forward = torch.compile(
                self._forward, mode=None if mode == "default" else mode, fullgraph=fullgraph, backend=backend
            )

    def _forward(self, batch):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(batch)

    def _stage(self, batch):
        """Copy `batch` into the step's static buffers (CUDA-graph mode); shapes fixed by the first."""
        two = batch.view2 is not None
        images = batch.both if two else batch.view1
        if self._static is None:
            buffers = (
                torch.empty_like(images, memory_format=torch.channels_last),
                torch.empty_like(batch.labels),
            )
            for t in buffers:
                torch._dynamo.mark_static_address(t)
            self._static = Batch.from_views(*buffers) if two else Batch(buffers[0], None, buffers[1])
        s = self._static
        (s.views if two else s.view1).copy_(images)
        s.labels.copy_(batch.labels)
        return s

    def __call__(self, batch):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead now
            batch = self._stage(batch)
        loss, logs = self.forward(batch)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.schedule.step()
        if self.cudagraphs:  # graph-owned outputs are overwritten by the next replay
            logs = {k: v.clone() for k, v in logs.items()}
        return logs

    def flops(self, batch) -> int:
        """Matmul/convolution FLOPs of one forward+backward of the (eager) model on `batch`; the
        optimiser's elementwise work is not counted, as usual for MFU. Gradients are discarded."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            loss, _ = self._forward(batch)
            loss.backward()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


def compile_counters() -> dict:
    """torch._dynamo's counters so far in this process: graphs compiled and frames captured. A
    steady-state step must add none: growth between two steps is a recompilation."""
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "frames_total": int(counters["frames"]["total"]),
        "frames_ok": int(counters["frames"]["ok"]),
    }
