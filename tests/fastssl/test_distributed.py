"""Several processes (gloo on CPU) against one process on the concatenated batch.

The reference is the single-process computation the global batch stands for: SimCLR's loss and
parameter gradients on all images at once (BatchNorm over all of them with SyncBatchNorm, over
each rank's shard without); the network runs in float64, so agreement is to rounding."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastssl.distributed import SyncBatchNorm, convert_sync_batchnorm
from fastssl.losses import nt_xent
from fastssl.methods.simclr import SimCLR
from pipelines import Batch

REPO = Path(__file__).resolve().parents[2]
WORLD, B, HW = 2, 8, 32  # global batch of 8 images (16 views), 4 per rank
CFG = SimpleNamespace(
    backbone="resnet18", stem="imagenet", proj_hidden_dim=32, proj_dim=16, proj_out_bn=False, temperature=0.5
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_method(sync_bn: bool):
    torch.manual_seed(0)
    method = SimCLR(CFG).double()
    return convert_sync_batchnorm(method) if sync_bn else method


def make_views():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * B, 3, HW, HW, generator=g, dtype=torch.float64), torch.arange(B)


def shard(views, labels, rank):
    """Rank `rank`'s images: its B/W rows of view 1 and the same rows of view 2."""
    b = B // WORLD
    rows = slice(rank * b, (rank + 1) * b)
    return Batch.from_views(torch.cat([views[:B][rows], views[B:][rows]]), labels[rows])


def _worker(rank, port, sync_bn, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        method = make_method(sync_bn)
        model = torch.nn.parallel.DistributedDataParallel(method)
        loss, _ = model(shard(*make_views(), rank))
        loss.backward()  # DDP averages the ranks' gradients
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            torch.save(
                {
                    "loss": mean_loss / WORLD,
                    "grads": {n: p.grad for n, p in method.named_parameters()},
                    "buffers": {n: b for n, b in method.named_buffers()},
                },
                path,
            )
    finally:
        dist.destroy_process_group()


def reference(sync_bn: bool):
    method = make_method(False)  # plain BatchNorm: one process, no group
    views, labels = make_views()
    if sync_bn:
        loss, _ = method(Batch.from_views(views, labels))  # BatchNorm over all 2B views
    else:
        zs = [
            method.head(method.backbone(shard(views, labels, r).both)).float().chunk(2) for r in range(WORLD)
        ]
        loss = nt_xent(torch.cat([z[0] for z in zs]), torch.cat([z[1] for z in zs]), CFG.temperature)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in method.named_parameters()}, dict(method.named_buffers())


@pytest.mark.parametrize("sync_bn", [True, False], ids=["sync_bn", "per_rank_bn"])
def test_two_process_gradient_equals_single_process_on_the_concatenated_batch(tmp_path, sync_bn):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(free_port(), sync_bn, path), nprocs=WORLD, join=True)
    got = torch.load(path)
    loss, grads, buffers = reference(sync_bn)
    # SimCLR computes the loss in float32 (z.float()): agreement to float32 rounding of sums taken
    # in another order. A missing rank's negatives or a wrong gradient scale errs by > 1e-2.
    torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=0)
    assert got["grads"].keys() == grads.keys()
    for name, g in grads.items():
        err = ((got["grads"][name] - g).norm() / g.norm()).item()
        assert err < 1e-5, (name, err)
    if sync_bn:  # running statistics of the global batch too (unbiased variance, as nn.BatchNorm)
        for name, b in buffers.items():
            torch.testing.assert_close(got["buffers"][name], b, rtol=1e-9, atol=1e-12, msg=name)


def test_sync_batchnorm_conversion_keeps_state_and_eval_is_batchnorm():
    bn = torch.nn.BatchNorm2d(3)
    bn.train()(torch.randn(4, 3, 5, 5) * 3 + 1)  # non-trivial running statistics
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), bn)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    ref.load_state_dict(net.state_dict())
    convert_sync_batchnorm(net)
    assert isinstance(net[1], SyncBatchNorm) and net.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(net.eval()(x), ref.eval()(x), rtol=0, atol=0)  # no process group needed


def _torchrun_env():
    env = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun_cmd(*args, nproc=2):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "fastssl.pretrain",
        *args,
    ]


TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "256",
    "--batch-size",
    "16",
    "--proj-hidden-dim",
    "32",
    "--proj-dim",
    "16",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
    "--stem",
    "imagenet",
    "--log-interval",
    "1",
    "--knn-every",
    "0",
    "--pipeline",
    "torchvision",
    "--workers",
    "0",
    "--epochs",
    "3",
]
STEPS = 3 * 256 // 16


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_stop_on_sigterm_and_resume_into_one_run_dir(tmp_path):
    out = tmp_path / "ddp"
    p = subprocess.Popen(
        _torchrun_cmd(*TINY, "--out", str(out)),
        cwd=REPO,
        env=_torchrun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and records(out)):  # training has begun
            assert p.poll() is None and time.monotonic() < deadline, (
                p.stdout.read() if p.poll() is not None else "slow"
            )
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks, which agree on where to stop
        log = p.communicate(timeout=120)[0]
    finally:
        p.kill()
    assert "stopped by SIGTERM" in log, log[-3000:]
    info = json.loads((out / "config.json").read_text())
    assert info["world_size"] == 2 and info["steps_per_epoch"] == STEPS // 3
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and not (out / "summary.json").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ddp"]

    # one process cannot continue a two-process run: a clear error, the run left as it was
    before = (out / "last.pt").read_bytes()
    q = subprocess.run(
        [sys.executable, "-m", "fastssl.pretrain", "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=_torchrun_env(),
    )
    assert q.returncode == 2 and "2 process" in q.stderr and "Traceback" not in q.stderr, q.stderr[-2000:]
    assert (out / "last.pt").read_bytes() == before

    r = subprocess.run(
        _torchrun_cmd("--out", str(out), "--resume"),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_torchrun_env(),
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[:3000]
    recs = records(out)
    assert [x["epoch"] for x in recs if x.get("summary")] == [0, 1, 2]
    assert [x["step"] for x in recs if not x.get("summary")] == list(
        range(1, STEPS + 1)
    )  # one writer, none twice
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 3


def test_two_node_script_trains_one_run_over_a_c10d_rendezvous(tmp_path):
    out = tmp_path / "two_node"
    args = TINY + ["--epochs", "1", "--out", str(out)]  # the later --epochs wins
    env = {**_torchrun_env(), "PYTHON": sys.executable}
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "two_node.sh"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=240,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert [x["step"] for x in records(out) if not x.get("summary")] == list(range(1, STEPS // 3 + 1))
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1
    assert (p.stdout + p.stderr).count("run directory") == 1  # the summary table: rank 0 only


def test_an_error_on_rank_0_alone_stops_every_rank(tmp_path):
    from fastssl.lock import RunLock

    out = tmp_path / "busy"
    with RunLock(str(out)):  # held here: only rank 0 tries to take it, the other ranks must not wait forever
        p = subprocess.run(
            _torchrun_cmd(*TINY, "--epochs", "1", "--out", str(out)),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_torchrun_env(),
            timeout=120,
        )
    assert p.returncode != 0
    assert p.stderr.count("is in use by another run") == 1 and "another process failed" in p.stderr, p.stderr[
        -3000:
    ]
    assert sorted(x.name for x in out.iterdir()) == [".lock"]  # nothing written
