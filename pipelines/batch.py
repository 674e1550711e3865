"""The one batch contract every pipeline honours.

A pipeline yields `Batch(view1, view2, labels)` per step, already on the training device:
- view1, view2: float32, shape (B, 3, H, W) in `torch.channels_last` memory format, normalised with
  the dataset's per-channel mean/std (so roughly zero-mean, unit-variance). Two independently
  augmented views of the same B images, in the same order. `view2` is None for single-view
  recipes (supervised training, feature extraction).
- labels: int64, shape (B,), on the same device; used only by monitors and supervised methods.
The trainer never looks inside a pipeline: anything satisfying this contract can be plugged in.
"""
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import torch

from .errors import DataError


@dataclass
class Batch:
    view1: torch.Tensor
    view2: Optional[torch.Tensor]
    labels: torch.Tensor

    def check(self, device=None) -> "Batch":
        """Assert the contract (used by tests and by pipelines' self-checks, not per step)."""
        for v in (self.view1, self.view2):
            if v is None:
                continue
            assert v.dtype == torch.float32, v.dtype
            assert v.dim() == 4 and v.shape[1] == 3, v.shape
            assert v.is_contiguous(memory_format=torch.channels_last), "views must be channels_last"
        if self.view2 is not None:
            assert self.view2.shape == self.view1.shape and self.view2.device == self.view1.device
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.view1.shape[0],)
        assert self.labels.device == self.view1.device
        if device is not None:
            assert self.view1.device.type == torch.device(device).type
        return self


class Loader(Protocol):
    """What `pipelines.build` returns (a protocol, documented here; backends need not subclass it).

    - `len(loader)`: steps per epoch (full batches only when drop_last=True, the default).
    - `loader.set_epoch(e)`: fixes the shuffle order and augmentation randomness of epoch e as a
      pure function of (seed, e, rank), which is what makes `--resume` bit-exact.
    - `iter(loader)`: yields `Batch` objects for one epoch.
    - `loader.mean`, `loader.std`: the normalisation constants used (tuples of 3 floats, in [0,1]
      pixel units).
    """

    mean: tuple
    std: tuple

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def check_per_process(n_images: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Images per process; DataError unless every process gets at least one batch."""
    shard = n_images // world_size
    if shard == 0:
        raise DataError(f"{n_images} images cannot be shared among {world_size} processes")
    if drop_last and batch_size > shard:
        raise DataError(f"batch size {batch_size} exceeds the {shard} images of this process's shard "
                        f"(drop_last would leave no batch); lower the batch size or use drop_last=False")
    return shard
