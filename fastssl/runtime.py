"""Where a command runs: the device, the torchrun process group, and what produced a run.

Shared by every CLI (`fastssl.train`, `fastssl.knn`, `fastssl.linear`, the benchmarks), so that
`--device` means the same everywhere and no evaluation module needs the training loop.
"""

import inspect
import os
import platform
import subprocess
import sys

import torch
import torch.distributed as dist

from .config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA GPU is available")
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device and events want an index
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_name: str = "auto"):
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) otherwise.
    On CUDA the process's GPU is selected before the group is made, and handed to it as
    `device_id` where torch accepts it: NCCL then binds its communicator to that GPU at once
    instead of guessing from the rank (which hangs when ranks share a GPU by mistake)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        device = resolve_device(device_name, local_rank)
        kwargs = {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", **kwargs)
    return dist.get_rank(), dist.get_world_size(), local_rank


def agree(error: BaseException | None) -> None:
    """Collective: every rank calls it, `error` being what went wrong here (or None). If any rank
    failed, all stop: the failing ones raise their own error, the others exit 2 quietly, so a
    bad flag seen by rank 0 alone (e.g. its run lock) never leaves the other ranks waiting in the
    next collective. Single process: raises `error` if there is one."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        ok = torch.tensor([0 if error is not None else 1], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if error is None and not ok.item():
            print(f"rank {dist.get_rank()}: stopping, another process failed", file=sys.stderr, flush=True)
            raise SystemExit(2)
    if error is not None:
        raise error


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Average of `t` over the ranks (a copy; `t` itself unchanged). One all_reduce: call it at
    log intervals, not per step."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def git_commit() -> str | None:
    """The commit of fastssl's source checkout, or None (an installed copy, no git, a timeout)."""
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(__file__),
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """What produced a run: versions, hardware and code revision, stored beside its results."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
