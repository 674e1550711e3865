"""Weighted k-nearest-neighbour evaluation of frozen features (Wu et al. 2018, InstDisc protocol).

    python -m fastssl.knn --backbone runs/simclr --dataset cifar10 --data-dir data
    python -m fastssl.knn --backbone runs/simclr/backbone.pt --dataset cifar10-sample --k 200 --t 0.1
    # a converted dataset: its train split votes, the sibling test split (photos_test.beton) is scored
    python -m fastssl.knn --backbone runs/photos --dataset data/photos_train.beton
    # ... at the run's view side (its config.json) by default; another side for the crops:
    python -m fastssl.knn --backbone runs/photos --dataset data/photos_train.beton --image-size 160
    # a backbone pretrained with --split 80/10/10: the same split's test part (60,000 pooled CIFAR-10 images)
    python -m fastssl.knn --backbone runs/simclr_split --dataset cifar10 --split 80/10/10

Each test image votes with its k most cosine-similar training images, each weighted by
exp(similarity / t). The trainer runs the same code as its monitor every few epochs.
"""

import json
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipelines import datasets
from pipelines.data.arrays import require_labels

from ..config import cli, parse
from ..data import check_split, split_field, split_seed_field
from .features import extract
from .setup import check_backbone_split, image_size_field, on_device, setup


@torch.no_grad()
def knn_predict(train_f, train_y, test_f, num_classes, k=200, t=0.1, chunk=1024):
    """Class scores (M, C) for test features (M, D) from train features (N, D) and labels (N,).
    Features are L2-normalised here; similarities are computed in chunks of `chunk` test rows so
    memory stays O(chunk * N)."""
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    k = min(k, train_f.shape[0])
    out = []
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i : i + chunk] @ train_f.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / t).exp()
        scores = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        scores.scatter_add_(1, train_y[top_idx], weights)  # sum weights per class
        out.append(scores)
    return torch.cat(out)


def topk_accuracy(scores, labels, ks=(1, 5)):
    """Fraction (in %) of rows whose label is among the k highest scores, for each k."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # fewer than 5 classes: top-5 = 100%
    hit = top == labels[:, None]
    return {f"top{k}": 100.0 * hit[:, :k].any(1).float().mean().item() for k in ks}  # host sync: once


def knn_eval(backbone, train_data, test_data, device, k=200, t=0.1, batch_size=1024, precision="fp32"):
    """Top-1/top-5 (%) of the weighted kNN classifier on frozen `backbone` features."""
    train_f, train_y = extract(backbone, train_data, device, batch_size, precision=precision)
    labelled = train_y >= 0  # cifar10+cifar100: only the labelled images vote
    train_f, train_y = train_f[labelled], train_y[labelled]
    test_f, test_y = extract(backbone, test_data, device, batch_size, precision=precision)
    scores = knn_predict(train_f, train_y, test_f, len(train_data.classes), k, t)
    return topk_accuracy(scores, test_y)


@dataclass
class KNNConfig:
    # 'random' scores an untrained backbone: the control that trained backbones are compared with.
    backbone: str = field(
        default="",
        metadata={"help": "run directory, checkpoint, backbone.pt, torchvision state_dict, or 'random'"},
    )
    # A converted dataset's test split is read from the sibling path (see pipelines/formats/converted.py).
    dataset: str = field(
        default="cifar10",
        metadata={
            "help": "labelled dataset: a name or the path of a converted dataset",
            "choices": datasets.Choices(datasets.DATASETS),
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "dataset location (else $FASTSSL_DATA)"})
    split: str = split_field()
    split_seed: int = split_seed_field()
    k: int = field(default=200, metadata={"help": "neighbours per test image"})
    t: float = field(default=0.1, metadata={"help": "temperature of the similarity weights"})
    batch_size: int = field(default=1024, metadata={"help": "feature-extraction batch size"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed for the 'random' backbone"})
    stem: str = field(
        default="cifar",
        metadata={
            "help": "stem of the 'random' backbone (others: read from the weights)",
            "choices": ["cifar", "imagenet"],
        },
    )
    image_size: int | None = image_size_field()

    def __post_init__(self):
        if not self.backbone:
            raise ValueError("--backbone is required")
        if self.k <= 0 or self.t <= 0 or self.batch_size <= 0:
            raise ValueError("--k, --t and --batch-size must be positive")
        if self.image_size is not None and self.image_size < 0:
            raise ValueError(f"--image-size must be >= 0, got {self.image_size}")
        check_split(self)


@cli
def main(argv=None):
    from ..checkpoint import load_network

    cfg = parse(KNNConfig, argv, description=__doc__)
    check_backbone_split(cfg.backbone, cfg)
    device, data = setup(cfg)
    require_labels(data.train, "fastssl.knn")
    torch.manual_seed(cfg.seed)
    backbone, info = load_network(cfg.backbone, cfg.stem if cfg.backbone == "random" else None)
    bank, _ = data.labelled()  # with a train/val/test split the validation images vote too: nothing is tuned
    acc = knn_eval(on_device(backbone, device), bank, data.test, device, cfg.k, cfg.t, cfg.batch_size)
    print(
        json.dumps(
            {
                "backbone": info["source"],
                "dataset": cfg.dataset,
                "k": cfg.k,
                "t": cfg.t,
                **acc,
                **data.info(),
                "image_size": data.image_size(),
                "voting_images": int((bank.labels >= 0).sum()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
