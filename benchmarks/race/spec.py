"""What every entrant of the race shares: the recipe, the images, and how an epoch is timed.

    spec = RaceSpec(subset=2000, epochs=6, batch_size=128, seed=0)
    name, knobs = parse_entrant("lightly:lars=fastssl")     # ("lightly", {"lars": "fastssl"})
    train = images(spec)                                     # the same ArrayDataset for every entrant

The recipe is what a SimCLR comparison must hold equal (images, backbone, batch, epochs, schedule
shape, projection, temperature, base lr); what each entrant still does its own way is listed in its
module's DIFFERENCES and printed beside the results.
"""

import dataclasses
import json
from dataclasses import dataclass

import torch

from pipelines import DataError, datasets


@dataclass
class RaceSpec:
    dataset: str = "cifar10"
    data_dir: str | None = None
    subset: int = 2000  # the first N training images, class-balanced (0: all)
    stem: str = "imagenet"  # imagenet: 7x7/2 conv + max-pool (16x cheaper at 32 px); cifar: 3x3, no pool
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.4  # base lr per 256 images, scaled by batch / 256
    weight_decay: float = 1e-5
    warmup_epochs: int = 1
    temperature: float = 0.2
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    workers: int = 2  # DataLoader worker processes (lightly, plain; fastssl's torchvision/dali/ffcv)
    pipeline: str = "gpu"  # fastssl's pipeline
    device: str = "cpu"
    seed: int = 0
    snapshot_every: int = 2  # export the backbone every N epochs for the kNN-vs-time curve (0: final only)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RaceSpec":
        return cls(**json.loads(text))

    @property
    def lr_used(self) -> float:
        return self.lr * self.batch_size / 256


def parse_entrant(text: str) -> tuple[str, dict]:
    """ "name" or "name:key=value,key=value" -> (name, {key: value}); values stay strings, each entrant
    reads its own knobs (an ablation swaps one recipe difference at a time)."""
    name, _, rest = text.partition(":")
    knobs = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise DataError(f"entrant {text!r}: knobs are key=value pairs separated by commas")
        knobs[key.strip()] = value.strip()
    return name.strip(), knobs


def images(spec: RaceSpec, split: str = "train"):
    """The race's images as one ArrayDataset (uint8 NHWC + labels), read once by fastssl's reader:
    every entrant trains on exactly these pixels in this order of indices."""
    subset = (spec.subset or None) if split == "train" else None
    return datasets.load(spec.dataset, split, spec.data_dir, subset=subset, download=False)


def device_of(spec: RaceSpec) -> torch.device:
    return torch.device(
        "cuda"
        if spec.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if spec.device == "auto"
        else spec.device
    )
