"""Linear evaluation of a frozen backbone: `python -m fastssl.linear`.

    # a SimCLR run (directory, checkpoint or backbone.pt) probed on CIFAR-100
    python -m fastssl.linear --backbone runs/simclr --dataset cifar100 --data-dir data --out runs/linear_simclr
    # the ImageNet-supervised baseline: torchvision's ResNet18_Weights.IMAGENET1K_V1, images upsampled to 224
    python -m fastssl.linear --backbone imagenet --weights resnet18-f37072fd.pth --resize 224 \\
        --dataset cifar100 --data-dir data --out runs/linear_imagenet
    # any torchvision-format ResNet-18 state_dict (stem inferred from conv1: 7x7 = ImageNet)
    python -m fastssl.linear --backbone resnet18.pth --dataset cifar10 --data-dir data --out runs/linear_tv
    # the untrained control
    python -m fastssl.linear --backbone random --dataset cifar100 --data-dir data --out runs/linear_random
    # 80/10/10 of the 60,000 pooled CIFAR-10 images: lr x wd tuned on the 6,000 validation images, the
    # classifier refit on train + validation, the 6,000 test images scored once
    python -m fastssl.linear --backbone runs/simclr_split --dataset cifar10 --split 80/10/10 --out runs/linear_split
    # seconds on a CPU: the CIFAR-10 sample shipped with fastssl
    python -m fastssl.linear --backbone random --dataset cifar10-sample --epochs 20 --device cpu --out runs/lin_sample

Protocol (fastssl/eval/probe.py, docs/evaluation.md): features extracted once (backbone frozen, eval
mode, no augmentation); learning rate x weight decay chosen on a stratified validation split of
the training set; retrained on the full training set; test top-1/top-5 measured once. A weighted
kNN classifier (k=200, t=0.1) is scored on the same features. --out gets config.json, metrics.jsonl (one record per classifier epoch), classifier.pt,
curves.png and, last, summary.json. CIFAR-100 files that are not the official ones (md5) are
labelled "CIFAR-100 (JPEG-recompressed copy)", as fastssl's measured copy is; --data-note overrides.
"""

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from pipelines import DataError, datasets
from pipelines.data import cifar, splits
from pipelines.data.arrays import require_labels

from .. import checkpoint as ckpt
from ..config import ConfigError, cli, parse
from ..data import check_split, split_field, split_seed_field
from .setup import image_size_field, run_info

# torchvision's ResNet18_Weights.IMAGENET1K_V1 (69.758% ImageNet top-1); the name ends in the
# first 8 hex digits of its SHA-256, which torch.hub verifies.
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# md5 of the official CIFAR-100 python archive's files (as listed by torchvision.datasets.CIFAR100).
CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "cifar10-sample": "CIFAR-10 sample",
    "imagefolder": "image folder",
    "images": "image collection (no labels)",
    "cifar10+cifar100": "CIFAR-10 + CIFAR-100 (no labels)",
}
METHOD_NAMES = {
    "simclr": "SimCLR",
    "supervised": "supervised",
    "autoencoder": "autoencoder",
    "dim": "Deep InfoMax",
}


@dataclass
class LinearConfig:
    # State dicts are in torchvision's format. 'imagenet': torchvision's ImageNet weights (resnet18
    # IMAGENET1K_V1, or the resnet18/resnet50 file given by --weights); 'random': an untrained ResNet-18, as a
    # control.
    backbone: str | None = field(
        default=None,
        metadata={
            "help": "run directory, checkpoint, backbone.pt, ResNet-18/50 state_dict, 'imagenet' or 'random'"
        },
    )
    # The resnet18 file is IMAGENET_URL (IMAGENET1K_V1). Unset: torch.hub's cache, else that file is
    # downloaded.
    weights: str | None = field(
        default=None,
        metadata={
            "help": f"--backbone imagenet: local {IMAGENET_URL.rsplit('/', 1)[1]} or torchvision's resnet50 weights"
        },
    )
    stem: str = field(
        default="cifar", metadata={"help": "stem of the 'random' backbone", "choices": ["cifar", "imagenet"]}
    )
    # data
    dataset: str = field(
        default="cifar100",
        metadata={
            "help": "labelled dataset to probe on: a name or the path of a converted dataset",
            "choices": datasets.Choices(datasets.DATASETS),
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "dataset location (else $FASTSSL_DATA)"})
    subset: int | None = field(
        default=None, metadata={"help": "use only N training images, class-balanced (quick looks, tests)"}
    )
    # Detected, e.g. 'JPEG-recompressed copy' for CIFAR-100 files whose md5 differs from the official archive,
    # so that no number measured on them passes for an official result (see dataset_label).
    data_note: str | None = field(
        default=None, metadata={"help": "note shown after the dataset name in results (default: detected)"}
    )
    split: str = split_field()
    split_seed: int = split_seed_field()
    # A train/val/test --split has its own validation part, which is used instead.
    val_fraction: float = field(
        default=0.1,
        metadata={
            "help": "official split: stratified training fraction held out to choose lr and weight decay"
        },
    )
    # features
    resize: int | None = field(
        default=None,
        metadata={"help": "upsample images to SxS before the backbone (224 for ImageNet backbones)"},
    )
    image_size: int | None = image_size_field()
    # A backbone is fed pixels normalised as in its training: ImageNet mean/std for ImageNet-trained weights.
    normalize: str = field(
        default="auto",
        metadata={
            "help": "pixel normalisation: auto = ImageNet's for ImageNet-trained backbones, else the dataset's",
            "choices": ["auto", "dataset", "imagenet"],
        },
    )
    precision: str = field(
        default="fp32",
        metadata={"help": "feature extraction precision (bf16 only on CUDA)", "choices": ["fp32", "bf16"]},
    )
    feature_batch_size: int = field(default=1024, metadata={"help": "images per feature-extraction batch"})
    # classifier
    epochs: int = field(default=100, metadata={"help": "classifier epochs (grid search and final run)"})
    batch_size: int = field(default=512, metadata={"help": "classifier mini-batch size"})
    lrs: str = field(default="0.01,0.03,0.1,0.3,1", metadata={"help": "comma-separated learning-rate grid"})
    wds: str = field(default="0,1e-5,1e-4,1e-3", metadata={"help": "comma-separated weight-decay grid"})
    knn_k: int = field(
        default=200,
        metadata={
            "help": "also score a weighted kNN classifier on the same features with k neighbours (0: skip)"
        },
    )
    knn_t: float = field(default=0.1, metadata={"help": "kNN temperature"})
    # execution and outputs
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    seed: int = field(
        default=0, metadata={"help": "seed of the validation split, batch order and 'random' backbone"}
    )
    out: str = field(default="runs/linear", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        if not self.backbone:
            raise ValueError("--backbone is required (a run directory, a checkpoint, 'imagenet' or 'random')")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        for name in ["epochs", "batch_size", "feature_batch_size"]:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.knn_k < 0 or self.knn_t <= 0:
            raise ValueError("--knn-k must be >= 0 and --knn-t > 0")
        if self.image_size is not None and self.image_size < 0:
            raise ValueError(f"--image-size must be >= 0, got {self.image_size}")
        for name in ["subset", "resize"]:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        lrs, wds = parse_grid(self.lrs, "lrs"), parse_grid(self.wds, "wds")
        if min(lrs) <= 0 or min(wds) < 0:
            raise ValueError("--lrs must be > 0 and --wds >= 0")
        if self.weights is not None and self.backbone != "imagenet":
            raise ValueError("--weights is only used with --backbone imagenet")
        check_split(self)


def parse_grid(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    if not all(math.isfinite(v) for v in values):  # nan would slip past the range checks
        raise ValueError(f"--{name}: expected finite numbers, got {text!r}")
    return values


# ---- what was measured: dataset and backbone descriptions stored with every result ----------


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _cifar100_files(data_dir: str | None) -> str | None:
    """The folder holding CIFAR-100's `train` and `test` pickles (found as datasets.load finds it), or None."""
    try:
        return cifar.find_cifar("cifar100", data_dir, download=False)
    except DataError:
        return None


def dataset_label(name: str, data_dir: str | None = None, note: str | None = None) -> dict:
    """{"label": human-readable dataset name for results, "official_files": True/False/None}.

    CIFAR-100 files whose md5 differs from the official archive are labelled as the
    JPEG-recompressed copy fastssl is measured on (same images, labels and order; pixels differ by
    JPEG error), so no number measured on them can pass for an official CIFAR-100 result. CIFAR-10
    is judged by its pixels elsewhere (the measured copy is pixel-exact), so it needs no label.
    """
    official = None
    if name == "cifar100" and note is None:
        d = _cifar100_files(data_dir)
        if d is not None and all(os.path.isfile(os.path.join(d, s)) for s in CIFAR100_MD5):
            official = all(_md5(os.path.join(d, s)) == m for s, m in CIFAR100_MD5.items())
            note = None if official else "JPEG-recompressed copy"
    base = DATASET_NAMES.get(name, name)
    return {"label": f"{base} ({note})" if note else base, "official_files": official}


def describe_backbone(spec: str, info: dict) -> dict:
    """kind / label / seed of a backbone, from the training run's config.json when there is one.
    `label` names what was trained on what, without the seed: results with equal labels are
    repeats of one setting and the report averages them."""
    if spec == "imagenet":
        weights = "IMAGENET1K_V1" if info.get("arch", "resnet18") == "resnet18" else info["arch"]
        return {
            "kind": "imagenet",
            "label": f"ImageNet-supervised (torchvision {weights})",
            "seed": None,
            **info,
        }
    if spec == "random":
        return {"kind": "random", "label": f"random init ({info['stem']} stem)", "seed": None, **info}
    run = run_info(spec)
    if run is None:
        name = os.path.basename(os.path.normpath(spec))
        arch = {"resnet50": "ResNet-50"}.get(info.get("arch"), "ResNet-18")
        return {
            "kind": "state_dict",
            "label": f"{arch} state_dict {name} ({info['stem']} stem)",
            "seed": None,
            **info,
        }
    c = run["config"]
    data = dataset_label(c.get("dataset", "?"), c.get("data_dir"))["label"]
    images = f", {c['subset']:,} images" if c.get("subset") else ""
    extra = (
        f", batch {c.get('batch_size')}, τ {c.get('temperature'):g}" if c.get("method") == "simclr" else ""
    )
    arch = (
        "" if c.get("backbone", "resnet18") == "resnet18" else f" {c['backbone']}"
    )  # runs of two depths never average
    label = f"{METHOD_NAMES.get(c.get('method'), c.get('method'))}{arch} ({data}{images}, {c.get('epochs')} ep{extra})"
    pretrain = {
        k: c.get(k)
        for k in ("method", "dataset", "subset", "epochs", "batch_size", "temperature", "lr", "seed")
    }
    pretrain["train_images"] = run.get("train_images")
    pretrain["split"] = c.get("split", splits.OFFICIAL)
    pretrain["split_seed"] = c.get("split_seed") if pretrain["split"] != splits.OFFICIAL else None
    if pretrain["split"] != splits.OFFICIAL:  # runs on two splits (or two draws of one) never average
        label = f"{label[:-1]}, split {pretrain['split']} seed {pretrain['split_seed']})"
    return {
        "kind": c.get("method", "run"),
        "label": label,
        "seed": c.get("seed"),
        "pretrain": pretrain,
        **info,
    }


# ---- backbones -----------------------------------------------------------------------------


def imagenet_state_dict(weights: str | None) -> tuple[dict, str]:
    """torchvision's ImageNet ResNet state_dict: from `weights` (resnet18 or resnet50), else the
    ResNet-18 from torch.hub's cache, else downloaded. Offline without a file: one DataError that says what to fetch and where to put it."""
    if weights is not None:
        sd = ckpt.load(weights)
        return sd.get("state_dict", sd), os.path.abspath(weights)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(IMAGENET_URL))
    try:
        return torch.hub.load_state_dict_from_url(
            IMAGENET_URL, progress=True, check_hash=True, map_location="cpu"
        ), cached
    except Exception as e:  # URLError, OSError, HTTP errors, a hash mismatch: all mean "no weights here"
        raise DataError(
            f"--backbone imagenet: no ImageNet weights available ({type(e).__name__}); download "
            f"{IMAGENET_URL} and pass --weights FILE, or put the file at {cached}"
        ) from None


def load_eval_backbone(cfg: LinearConfig):
    """(frozen backbone in eval mode, description dict) for --backbone / --weights."""
    from ..models import BACKBONES, arch_of, load_torchvision_state_dict

    if cfg.backbone == "imagenet":
        sd, source = imagenet_state_dict(cfg.weights)
        arch = arch_of(sd) or "resnet18"  # neither: the load below names what does not fit
        model = BACKBONES[arch](stem="imagenet")
        try:
            load_torchvision_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("fc.")})
        except (ValueError, RuntimeError) as e:
            raise DataError(
                f"{source}: not a torchvision ResNet-18/50 state_dict: {str(e).splitlines()[0][:200]}"
            ) from None
        info = {"source": source, "stem": "imagenet", "arch": arch}
    else:
        torch.manual_seed(cfg.seed)  # the 'random' control's initialisation
        model, info = ckpt.load_network(cfg.backbone, stem=cfg.stem if cfg.backbone == "random" else None)
        info = {"source": info["source"], "stem": info["stem"], "arch": info["arch"]}
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), describe_backbone(cfg.backbone, info)


def normalization(cfg: LinearConfig, backbone: dict, data) -> dict:
    """Pixel statistics the backbone expects: an ImageNet-trained network was trained on images
    normalised with ImageNet's mean/std, a fastssl network with its dataset's."""
    imagenet_trained = backbone["kind"] == "imagenet" or (
        backbone["kind"] == "state_dict" and backbone["stem"] == "imagenet"
    )
    use = cfg.normalize if cfg.normalize != "auto" else ("imagenet" if imagenet_trained else "dataset")
    if use == "imagenet":
        return {"source": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"source": "dataset", "mean": list(data.mean), "std": list(data.std)}


def validation_indices(labels, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the stratified validation split (pipelines.data.splits.stratified_split)."""
    _, val = splits.stratified_split(labels, fraction, seed)
    return torch.as_tensor(val, dtype=torch.long)


# ---- the command -----------------------------------------------------------------------------


def check_out(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or any(os.scandir(out))) and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")


def evaluate(cfg: LinearConfig, argv=(), command="fastssl.linear") -> dict:
    """Run the protocol as `cfg` says and write --out; returns the summary (also summary.json)."""
    from ..progress import console
    from ..runtime import environment
    from .knn import knn_predict, topk_accuracy
    from .plots import figure
    from .probe import linear_protocol
    from .setup import check_backbone_split, features, on_device, setup

    check_out(cfg.out, cfg.overwrite)
    check_backbone_split(cfg.backbone, cfg)
    t0 = time.perf_counter()
    lrs, wds = parse_grid(cfg.lrs, "lrs"), parse_grid(cfg.wds, "wds")
    device, parts = setup(cfg, subset=cfg.subset)
    require_labels(parts.train, "fastssl.linear")
    train, val_idx = parts.labelled()  # a train/val/test split: train + its validation part
    test = parts.test
    backbone, desc = load_eval_backbone(cfg)
    norm = normalization(cfg, desc, train)
    # The pipeline normalises with data.mean/std: hand it the statistics the backbone expects.
    train_n, test_n = (replace(d, mean=tuple(norm["mean"]), std=tuple(norm["std"])) for d in (train, test))
    with console.status("extracting features"):
        feats = features(
            on_device(backbone, device),
            {"train": train_n, "test": test_n},
            device,
            cfg.feature_batch_size,
            cfg.resize,
            cfg.precision,
        )
    (train_f, train_y), (test_f, test_y) = feats["train"], feats["test"]
    del backbone
    t_features = time.perf_counter() - t0
    val_idx = (
        validation_indices(train.labels, cfg.val_fraction, cfg.seed)
        if val_idx is None
        else torch.as_tensor(val_idx)
    )

    records = []
    from rich.progress import Progress

    with Progress(console=console, disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(
            f"linear classifier ({len(lrs) * len(wds)}-point grid, then final)", total=2 * cfg.epochs
        )

        def log(rec):
            records.append(rec)
            bar.advance(task)

        result = linear_protocol(
            train_f,
            train_y,
            test_f,
            test_y,
            len(train.classes),
            val_idx=val_idx.to(device),
            lrs=lrs,
            wds=wds,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            log=log,
        )
    knn = {"top1": None, "top5": None}
    if cfg.knn_k:
        knn = topk_accuracy(
            knn_predict(train_f, train_y, test_f, len(train.classes), cfg.knn_k, cfg.knn_t), test_y
        )
    data = {
        "dataset": cfg.dataset,
        **dataset_label(cfg.dataset, cfg.data_dir, cfg.data_note),
        "train_images": len(train.labels),
        "fit_images": len(train.labels) - len(val_idx),
        "val_images": len(val_idx),
        "test_images": len(test.labels),
        "classes": len(train.classes),
        "image_size": parts.image_size(),
        "subset": cfg.subset,
        "resize": cfg.resize,
        "normalization": norm,
        "split": cfg.split,
        "split_seed": parts.info()["split_seed"],
    }
    summary = {
        "protocol": "linear",
        "backbone": desc,
        "data": data,
        "test_top1": result["test"]["top1"],
        "test_top5": result["test"]["top5"],
        "val_top1": result["val"]["top1"],
        "val_top5": result["val"]["top5"],
        "knn_top1": knn["top1"],
        "knn_top5": knn["top5"],
        "knn_k": cfg.knn_k,
        "knn_t": cfg.knn_t,
        "final_train_top1": result["final_train_top1"],
        "lr": result["lr"],
        "weight_decay": result["weight_decay"],
        "grid": result["grid"],
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "feature_dim": train_f.shape[1],
        "features_time_s": t_features,
        "wall_time_s": time.perf_counter() - t0,
    }

    # All computed: only now is an existing --out (with --overwrite) replaced.
    if cfg.overwrite and os.path.isdir(cfg.out):
        shutil.rmtree(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    out = lambda name: os.path.join(cfg.out, name)  # noqa: E731
    ckpt.atomic_write_text(
        out("config.json"),
        json.dumps(
            {
                "config": asdict(cfg),
                "command": ["python", "-m", command, *argv],
                "environment": environment(),
                "device": str(device),
            },
            indent=2,
        ),
    )
    ckpt.atomic_write_text(out("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    ckpt.atomic_save(
        {**result["classifier"], "lr": result["lr"], "weight_decay": result["weight_decay"]},
        out("classifier.pt"),
    )
    figure(out("curves.png"), linear_panels(records, summary), title=f"{desc['label']} on {data['label']}")
    ckpt.atomic_write_text(out("summary.json"), json.dumps(summary, indent=2))
    return summary


def linear_panels(records: list[dict], summary: dict) -> list[dict]:
    """Plot panels from metrics.jsonl records: validation top-1 of every grid point, and the final
    classifier's train/test top-1 per epoch."""
    grid = [r for r in records if r["phase"] == "grid"]
    final = [r for r in records if r["phase"] == "final"]
    series, chosen = [], []
    if grid:
        x = [r["epoch"] + 1 for r in grid]
        for i, (lr, wd) in enumerate(zip(grid[0]["lr"], grid[0]["weight_decay"])):
            if lr == summary["lr"] and wd == summary["weight_decay"]:
                chosen.append(
                    {
                        "label": f"chosen: lr {lr:g}, wd {wd:g}",
                        "x": x,
                        "y": [r["val_top1"][i] for r in grid],
                        "style": "C0-",
                    }
                )
            else:
                series.append(
                    {
                        "label": None if series else "other (lr, wd) pairs",
                        "x": x,
                        "y": [r["val_top1"][i] for r in grid],
                        "style": "-",
                        "alpha": 0.25,
                    }
                )
        for s in series:
            s["style"] = "C7-"
    epochs = [r["epoch"] + 1 for r in final]
    return [
        {
            "title": "grid search: validation top-1",
            "xlabel": "epoch",
            "ylabel": "top-1 (%)",
            "series": series + chosen,
        },
        {
            "title": f"final classifier (lr {summary['lr']:g}, wd {summary['weight_decay']:g})",
            "xlabel": "epoch",
            "ylabel": "top-1 (%)",
            "series": [
                {"label": "train (running)", "x": epochs, "y": [r["train_top1"] for r in final]},
                {"label": "test", "x": epochs, "y": [r["test_top1"] for r in final]},
            ],
        },
    ]


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"linear probe: {s['backbone']['label']} on {s['data']['label']}", show_header=False)
    rows = [
        ("test top-1 / top-5 (%)", f"{s['test_top1']:.2f} / {s['test_top5']:.2f}"),
        ("validation top-1 (%)", f"{s['val_top1']:.2f}"),
        (
            "kNN top-1 / top-5 (%)",
            "-" if s["knn_top1"] is None else f"{s['knn_top1']:.2f} / {s['knn_top5']:.2f} (k={s['knn_k']})",
        ),
        ("chosen lr / weight decay", f"{s['lr']:g} / {s['weight_decay']:g}"),
        (
            "images fit / val / test",
            f"{s['data']['fit_images']:,} / {s['data']['val_images']:,} / {s['data']['test_images']:,}",
        ),
        ("normalisation, resize", f"{s['data']['normalization']['source']}, {s['data']['resize'] or 'none'}"),
        ("wall time (s)", f"{s['wall_time_s']:.1f} (features {s['features_time_s']:.1f})"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console(file=sys.stdout).print(t)


@cli
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse(LinearConfig, argv, description=__doc__)
    print_summary(evaluate(cfg, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
