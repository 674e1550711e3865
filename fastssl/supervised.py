"""Supervised training from scratch, the reference point for the linear protocol: `python -m fastssl.supervised`.

    # ResNet-18 (CIFAR stem) trained with labels on CIFAR-100, then scored on its test set
    python -m fastssl.supervised --dataset cifar100 --data-dir data --epochs 100 --out runs/scratch
    # continue an interrupted run (then the test evaluation runs)
    python -m fastssl.supervised --out runs/scratch --resume
    # seconds on a CPU
    python -m fastssl.supervised --dataset cifar10-sample --epochs 2 --batch-size 64 --device cpu --no-compile --out runs/scratch_sample

The same network, pipelines and loop as pretraining (fastssl.train.train, method "supervised":
one random-crop (pad 4) + flip view, cross-entropy; bf16 + torch.compile on CUDA). Defaults are the
usual CIFAR recipe: SGD with Nesterov momentum 0.9, lr 0.1 per 128 images (0.2 per 256, scaled by
batch size), weight decay 5e-4, 2 warm-up epochs then cosine. After training, the classifier of
the LAST epoch is scored once on the test set; top-1/top-5 go into summary.json. best.pt is not
used: it holds the epoch with the best kNN monitor score on held-out training images (the
--knn-val-fraction part, or the validation part of --split), or the lowest epoch loss when the
monitor is off; the test set selects nothing. Curves come from metrics.jsonl.
"""

import json
import os
import sys
from dataclasses import asdict, field, fields, make_dataclass

import torch

from pipelines.formats import converted

from . import checkpoint as ckpt
from .config import cli, from_dict, parse
from .pretrain import PretrainConfig

# SupervisedConfig is PretrainConfig without the SimCLR-only fields and with supervised defaults.
# Built from PretrainConfig's fields rather than copied, so a field added to pretraining (which
# train() may read) appears here too, with its help text, type and validation.
SIMCLR_ONLY = {"proj_hidden_dim", "proj_dim", "proj_out_bn", "temperature"}
DEFAULTS = {
    "method": "supervised",
    "dataset": "cifar100",
    "epochs": 100,
    "batch_size": 512,
    "optimizer": "sgd",
    "nesterov": True,
    "lr": 0.2,
    "weight_decay": 5e-4,
    "warmup_epochs": 2,
    "out": "runs/supervised",
}


def _field(f):
    meta = dict(f.metadata)
    if f.name == "method":
        meta["choices"] = ["supervised"]
    if f.name == "batch_size":
        meta["help"] = "global batch size (images)"
    return f.name, f.type, field(default=DEFAULTS.get(f.name, f.default), metadata=meta)


def _validate(self):
    # PretrainConfig's checks, on these values (the SimCLR-only fields keep their valid defaults).
    PretrainConfig(**asdict(self))


SupervisedConfig = make_dataclass(
    "SupervisedConfig",
    [_field(f) for f in fields(PretrainConfig) if f.name not in SIMCLR_ONLY],
    namespace={
        "__post_init__": _validate,
        "__doc__": "fastssl.supervised settings (PretrainConfig minus SimCLR-only fields)",
    },
)
SupervisedConfig.__module__ = __name__


@torch.no_grad()
def test_accuracy(cfg, out: str, device) -> dict:
    """Top-1/top-5 (%) of the last checkpoint's backbone + classifier on the test split (or the test
    part of cfg.split)."""
    from .data import load_data
    from .eval.knn import topk_accuracy
    from .eval.setup import features, on_device
    from .methods import METHODS

    test = load_data(cfg.dataset, cfg.data_dir, cfg.split, cfg.split_seed).test
    test = converted.sized(test, cfg.image_size, cfg.stem)  # a converted split: eval crops as in training
    state = ckpt.load(os.path.join(out, "last.pt"))
    method = METHODS["supervised"](cfg, len(test.classes))
    method.load_state_dict(state["model"])
    method = on_device(method, device).eval()
    feats, labels = features(method.backbone, {"test": test}, device)["test"]
    return {
        **topk_accuracy(method.classifier(feats), labels),
        "test_images": len(labels),
        "epoch": state["epoch"],
    }


def run(cfg, argv=(), command="fastssl.supervised") -> dict:
    """Train (or resume) as `cfg` says, then score the test set; returns the updated summary."""
    from .eval.linear import dataset_label
    from .train import resolve_device, train

    result = train(cfg, argv, command=command)
    out = cfg.out
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    cfg = from_dict(
        SupervisedConfig, saved["config"], source=os.path.join(out, "config.json")
    )  # resumed runs
    acc = test_accuracy(cfg, out, resolve_device(cfg.device))
    data = dataset_label(cfg.dataset, cfg.data_dir)
    images = f", {cfg.subset:,} images" if cfg.subset else ""
    summary = {
        **result,
        "protocol": "supervised",
        "test_top1": acc["top1"],
        "test_top5": acc["top5"],
        "data": {
            "dataset": cfg.dataset,
            **data,
            "train_images": saved.get("train_images"),
            "test_images": acc["test_images"],
            "split": cfg.split,
            "split_seed": cfg.split_seed,
        },
        "backbone": {
            "kind": "supervised",
            "label": f"supervised from scratch ({data['label']}{images}, {cfg.epochs} ep)",
            "seed": cfg.seed,
            "source": os.path.abspath(out),
        },
        "evaluated_epoch": acc["epoch"],
    }
    ckpt.atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2))
    return summary


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(SupervisedConfig, argv, description=__doc__)
    s = run(cfg, argv)
    print(
        f"test top-1 {s['test_top1']:.2f}%  top-5 {s['test_top5']:.2f}%  on {s['data']['label']}  ({s['out']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
