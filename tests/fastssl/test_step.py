"""The one train step: compiled with fullgraph=True it never recompiles after the first step and
trains like the eager step; a graph break is an error; CUDA-graph inputs live in static buffers."""

import pytest
import torch

from fastssl.methods import METHODS
from fastssl.optim import build_optimizer, warmup_cosine
from fastssl.pretrain import PretrainConfig
from fastssl.step import TrainStep, compile_counters
from pipelines import Batch


def cfg():
    return PretrainConfig(
        stem="imagenet", proj_hidden_dim=32, proj_dim=16, batch_size=8, knn_every=0, progress=False
    )


def batches(n, b=8, size=16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        views = torch.randn(2 * b, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        out.append(Batch.from_views(views, torch.zeros(b, dtype=torch.int64)))
    return out


def make_step(**kwargs):
    torch.manual_seed(0)
    method = METHODS["simclr"](cfg()).to(memory_format=torch.channels_last)
    opt = build_optimizer("lars", method, 0.4, 1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(10, 2))
    return method, TrainStep(method, opt, schedule, "cpu", bf16=False, **kwargs)


def test_compiled_fullgraph_step_never_recompiles_and_trains_like_eager():
    torch._dynamo.reset()
    data = batches(3)
    eager, step = make_step()
    eager_logs = [step(b)["loss"] for b in data]
    compiled, step = make_step(compile=True, fullgraph=True, backend="aot_eager")
    logs, graphs = [], []
    for b in data:
        logs.append(step(b)["loss"])
        graphs.append(compile_counters()["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] == graphs[0] and graphs[2] == graphs[0], graphs
    torch.testing.assert_close(torch.stack(logs), torch.stack(eager_logs), rtol=1e-4, atol=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_graph_break_is_an_error():
    class Breaks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, batch):
            y = self.lin(batch.view1.flatten(1)[:, :3]).mean()
            torch._dynamo.graph_break()
            return y, {"loss": y.detach()}

    model = Breaks()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    b = batches(1)[0]
    TrainStep(model, opt, sched, "cpu", bf16=False, compile=True, fullgraph=False, backend="eager")(
        b
    )  # splits
    torch._dynamo.reset()  # else the split graphs above are reused for the same code
    with pytest.raises(Exception, match="(?i)graph.break"):
        TrainStep(model, opt, sched, "cpu", bf16=False, compile=True, fullgraph=True, backend="eager")(b)


def test_static_input_buffers_keep_their_addresses():
    _, step = make_step()
    first, second = batches(2)
    a = step._stage(first)
    ptr = a.views.data_ptr()
    assert torch.equal(a.both, first.both) and a.view1.data_ptr() == ptr
    b = step._stage(second)
    assert b is a and b.views.data_ptr() == ptr and torch.equal(b.both, second.both)
    b.check()


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="reduce-overhead"):
        make_step(compile=True, mode="fast")
