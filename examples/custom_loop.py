"""SimCLR in a plain PyTorch loop, built from fastssl's pieces: the `gpu` pipeline on the 2,000
CIFAR-10 images shipped with fastssl, a torchvision ResNet-18 with a projection head, and NT-Xent.
torchvision's ImageNet stem shrinks 32 px images at once, which keeps this cheap on a CPU; fastssl's
own backbones use SimCLR's CIFAR stem instead (docs/pretraining.md).

    python examples/custom_loop.py                                # 20 steps on the CPU
    python examples/custom_loop.py --steps 500 --batch-size 512 --device cuda
"""

import argparse

import torch
import torchvision
from torch import nn

import fastssl
from pipelines import datasets


def main(argv=None):
    parser = argparse.ArgumentParser(description="SimCLR in a plain PyTorch loop")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    data = datasets.load("cifar10-sample", "train")
    loader = fastssl.build("gpu", data, batch_size=args.batch_size, device=args.device, seed=0)
    backbone = torchvision.models.resnet18()
    backbone.fc = nn.Identity()  # the 512-d pooled features, not ImageNet's 1000 logits
    head = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
    model = nn.Sequential(backbone, head).to(args.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    step, epoch = 0, 0
    while step < args.steps:
        loader.set_epoch(epoch)  # a new order and new views each epoch
        for batch in loader:
            z1, z2 = model(batch.both).chunk(2)  # both views in one forward pass, (B, 128) each
            loss = fastssl.nt_xent(z1, z2, temperature=0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            print(f"step {step} loss {loss.item():.4f}")  # .item() waits for the device: fine here
            step += 1
            if step == args.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
