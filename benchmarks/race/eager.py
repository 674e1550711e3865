"""The eager training loop the peers run (lightly's documented loop and the plain PyTorch one):
forward both views, loss, backward, optimiser and schedule step, timed as fastssl's trainer times it.

    record = train_eager(spec, backbone, head, loss_fn, optimizer, schedule, loader, out, amp=True)

An epoch is timed whole, from asking the loader for its iterator (worker start-up included) to the
last step's loss on the host; `data_wait_s` is the part spent waiting for batches. Backbone
snapshots (for the kNN-vs-time curve) are written between epochs, outside the timed window.
"""

import os
import time

import PIL.Image
import torch
from torch import nn

from fastssl import checkpoint, weights

from .spec import RaceSpec


def torchvision_resnet18(stem: str) -> nn.Module:
    """torchvision's resnet18 without its classifier; the CIFAR stem swaps conv1 for a 3x3 stride-1
    conv and drops the max-pool, as every CIFAR SimCLR code does. Its state_dict keeps torchvision's
    names, which fastssl.checkpoint.load_backbone reads for the shared evaluation."""
    return weights.torchvision_resnet("resnet18", stem)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epochs(step, loader, epochs: int, device, after_epoch=None) -> list[dict]:
    """Run `step(batch) -> loss` over `epochs` epochs of `loader`; one timing record per epoch."""
    records = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        it = iter(loader)
        wait, total, steps = time.perf_counter() - t0, None, 0
        while True:
            t_ask = time.perf_counter()
            batch = next(it, None)
            wait += time.perf_counter() - t_ask
            if batch is None:
                break
            loss = step(batch).detach()
            total = loss if total is None else total + loss
            steps += 1
        mean_loss = (total / steps).item()  # host sync: the epoch's last step has run
        _sync(device)
        records.append(
            {
                "epoch": epoch,
                "time_s": time.perf_counter() - t0,
                "data_wait_s": wait,
                "images": steps * loader.batch_size,
                "loss": mean_loss,
            }
        )
        if after_epoch is not None:
            after_epoch(epoch)
    return records


def train_eager(
    spec: RaceSpec,
    backbone,
    head,
    loss_fn,
    optimizer,
    schedule,
    loader,
    out: str,
    device,
    *,
    amp: str | None,
    joint: bool = False,
) -> dict:
    """Train `backbone` + `head` with `loss_fn(z1, z2)`; amp: None (fp32), "fp16" (autocast + grad
    scaler, PyTorch Lightning's "16-mixed") or "bf16". Each view goes through the network on its
    own, as lightly's examples and most SimCLR code do (BatchNorm statistics per view); joint=True
    sends both as one batch, as fastssl does. Returns the entrant's record."""
    model = nn.Sequential(backbone, head).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16

    def step(batch):
        (x1, x2), _ = batch
        x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp is not None):
            if joint:
                z1, z2 = model(torch.cat([x1, x2])).chunk(2)
            else:
                z1, z2 = model(x1), model(x2)
            loss = loss_fn(z1.float(), z2.float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        return loss

    snapshots = []

    def after_epoch(epoch):
        if spec.snapshot_every and (epoch + 1) % spec.snapshot_every == 0 and epoch + 1 < spec.epochs:
            path = os.path.join(out, f"backbone_epoch{epoch + 1:03d}.pt")
            checkpoint.export_backbone(backbone, path)
            snapshots.append({"epoch": epoch + 1, "path": path})

    model.train()
    records = run_epochs(step, loader, spec.epochs, device, after_epoch)
    final = os.path.join(out, "backbone.pt")
    checkpoint.export_backbone(backbone, final)
    return {"epochs": records, "backbone": final, "snapshots": snapshots}


class Views(torch.utils.data.Dataset):
    """The race's images (uint8 NHWC) as a map-style dataset: `transform` gets a PIL image (pil=True,
    as lightly's transforms and torchvision's CIFAR10 dataset give) or a uint8 (3, H, W) tensor
    (transforms v2) and returns the two views."""

    def __init__(self, data, transform, pil: bool):
        self.images, self.labels, self.transform, self.pil = data.images, data.labels, transform, pil

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        image = PIL.Image.fromarray(image) if self.pil else torch.from_numpy(image).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


def data_loader(dataset, spec: RaceSpec, device) -> torch.utils.data.DataLoader:
    """The DataLoader of lightly's examples: shuffled, whole batches only, `spec.workers` processes,
    pinned memory on CUDA; seeded so that a seed replays its order."""
    generator = torch.Generator().manual_seed(spec.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=spec.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=spec.workers,
        pin_memory=device.type == "cuda",
        generator=generator,
    )
