"""Frozen-backbone feature extraction, shared by the kNN monitor and the linear protocol."""

import torch
import torch.nn.functional as F

import pipelines


@torch.no_grad()
def extract(backbone, data, device, batch_size=1024, resize=None, precision="fp32"):
    """Features of every image of `data` (an ArrayDataset, or a converted dataset:
    ConvertedDataset, read batch by batch), in dataset order.

    Images go through the `gpu` pipeline's "eval" recipe (no augmentation, normalised with
    data.mean/std). `resize=S` upsamples to S×S on the device (ImageNet backbones on 32×32 data).
    Returns (features float32 (N, D), labels int64 (N,)), both on `device`.
    """
    # A converted dataset streams through its own format's pipeline (resize + centre crop to
    # data.image_size, see pipelines/formats/converted.py); in-memory data goes to the device whole.
    name = getattr(data, "format", "gpu")
    loader = pipelines.build(
        name,
        data,
        batch_size=min(batch_size, len(data.labels)),
        device=device,
        recipe="eval",
        drop_last=False,
        shuffle=False,
    )
    loader.set_epoch(0)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    use_bf16 = precision == "bf16" and torch.device(device).type == "cuda"
    for batch in loader:
        x = batch.view1
        if resize:
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=False)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            feats.append(backbone(x).float())
        labels.append(batch.labels)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
