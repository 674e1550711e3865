"""fastssl, trained by its own code (fastssl.train, the loop `python -m fastssl.pretrain` runs) with
its own defaults except the race's shared recipe; `--pipeline gpu` unless the race says otherwise.

Knobs: any PretrainConfig field, e.g. `fastssl:proj_out_bn=true` or
`fastssl:lars_eta=0.001,lars_clip=false` (lightly's LARS rule) or `fastssl:pipeline=torchvision`
(the views made by torchvision's PIL ops in worker processes).
"""

import dataclasses
import json
import os

from fastssl import checkpoint
from fastssl.config import parse
from fastssl.pretrain import PretrainConfig
from fastssl.train import train as fastssl_train

from .spec import RaceSpec, images

DIFFERENCES = []  # the reference the others are compared with
BOOLEAN = {f.name for f in dataclasses.fields(PretrainConfig) if f.type in (bool, "bool", bool | None)}
KNOBS = {}  # any PretrainConfig field


def available() -> str | None:
    return None


def argv(spec: RaceSpec, knobs: dict, out: str) -> list[str]:
    """The `python -m fastssl.pretrain` flags of this race run."""
    flags = {
        "dataset": spec.dataset,
        "subset": spec.subset or None,
        "data-dir": spec.data_dir,
        "stem": spec.stem,
        "epochs": spec.epochs,
        "batch-size": spec.batch_size,
        "lr": spec.lr,
        "weight-decay": spec.weight_decay,
        "warmup-epochs": spec.warmup_epochs,
        "temperature": spec.temperature,
        "proj-hidden-dim": spec.proj_hidden_dim,
        "proj-dim": spec.proj_dim,
        "pipeline": spec.pipeline,
        "workers": spec.workers,
        "device": spec.device,
        "seed": spec.seed,
        "knn-every": 0,
        "backbone-every": spec.snapshot_every,
        "out": out,
    }
    flags.update({k.replace("_", "-"): v for k, v in knobs.items()})
    args = []
    for k, v in flags.items():
        if str(v).lower() in ("true", "false") and k.replace("-", "_") in BOOLEAN:  # --flag / --no-flag
            args.append(f"--{k}" if str(v).lower() == "true" else f"--no-{k}")
        elif v is not None:
            args.append(f"--{k}={v}")
    return args + ["--overwrite", "--no-progress"]


def train(spec: RaceSpec, knobs: dict, out: str, device) -> dict:
    run = os.path.join(out, "run")
    args = argv(spec, knobs, run)
    cfg = parse(PretrainConfig, args)
    fastssl_train(cfg, args)
    with open(os.path.join(run, "config.json")) as f:
        info = json.load(f)
    epochs = [
        {
            "epoch": r["epoch"],
            "time_s": r["epoch_time_s"],
            "data_wait_s": r["epoch_data_wait_s"],
            "images": info["steps_per_epoch"] * spec.batch_size,
            "loss": r["epoch_loss"],
        }
        for r in checkpoint.read_jsonl(os.path.join(run, "metrics.jsonl"))
        if r.get("summary")
    ]
    snapshots = [
        {"epoch": e, "path": os.path.join(run, f"backbone_epoch{e:03d}.pt")}
        for e in range(1, spec.epochs)
        if spec.snapshot_every and e % spec.snapshot_every == 0
    ]
    data = images(spec)
    return {
        "epochs": epochs,
        "backbone": os.path.join(run, "backbone.pt"),
        "snapshots": snapshots,
        "mean": data.mean,
        "std": data.std,
        "version": info["environment"]["commit"],
    }
