"""The one batch contract every pipeline honours.

A pipeline yields `Batch(view1, view2, labels)` per step, already on the training device:
- view1, view2: float32, shape (B, 3, H, W) in `torch.channels_last` memory format, normalised with
  the dataset's per-channel mean/std (so roughly zero-mean, unit-variance). Two independently
  augmented views of the same B images, in the same order. `view2` is None for single-view
  recipes (supervised training, feature extraction).
- labels: int64, shape (B,), on the same device; used only by monitors and supervised methods.
- views (optional): one contiguous channels_last (2B, 3, H, W) tensor whose halves are view1 and
  view2 (`Batch.from_views`). `batch.both` is that tensor when a pipeline made one, so a method
  that feeds both views through its network in one pass needs no per-step copy; otherwise `both`
  concatenates. Assigning view1 or view2 afterwards drops `views`, so `both` never goes stale.
The trainer never looks inside a pipeline: anything satisfying this contract can be plugged in.
"""

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import torch

from .errors import DataError


@dataclass
class Batch:
    view1: torch.Tensor
    view2: Optional[torch.Tensor]
    labels: torch.Tensor
    views: Optional[torch.Tensor] = field(default=None, repr=False)

    @classmethod
    def from_views(cls, views: torch.Tensor, labels: torch.Tensor) -> "Batch":
        """A two-view batch over one (2B, 3, H, W) tensor: view1 = views[:B], view2 = views[B:]
        (slices along the outermost dimension stay channels_last and share its memory)."""
        b = len(labels)
        return cls(views[:b], views[b:], labels, views)

    @property
    def both(self) -> torch.Tensor:
        """(2B, 3, H, W): view1 then view2, without a copy when the pipeline made them as one tensor."""
        return self.views if self.views is not None else torch.cat([self.view1, self.view2])

    def __setattr__(self, name, value):
        if name in ("view1", "view2") and getattr(self, "views", None) is not None:
            object.__setattr__(self, "views", None)  # the joint tensor no longer holds this view
        object.__setattr__(self, name, value)

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
        if self.views is not None:
            b = self.view1.shape[0]
            assert self.view2 is not None and self.views.shape == (2 * b, *self.view1.shape[1:]), (
                self.views.shape
            )
            assert self.views.is_contiguous(memory_format=torch.channels_last), "views must be channels_last"
            assert (
                self.view1.data_ptr() == self.views.data_ptr()
                and self.view2.data_ptr() == self.views[b:].data_ptr()
            ), "view1/view2 must be the halves of views"
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
        raise DataError(
            f"batch size {batch_size} exceeds the {shard} images of this process's shard "
            f"(drop_last would leave no batch); lower the batch size or use drop_last=False"
        )
    return shard
