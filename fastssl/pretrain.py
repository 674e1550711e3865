"""Self-supervised pretraining: `python -m fastssl.pretrain`.

    # a short run on the small CIFAR-10 sample shipped inside the package (CPU is fine)
    python -m fastssl.pretrain --dataset cifar10-sample --epochs 3 --batch-size 128 --out runs/sample
    # SimCLR ResNet-18 on CIFAR-10 at GPU speed (bf16, compiled, data augmented on the GPU)
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --epochs 200 --out runs/simclr
    # the same with DALI or FFCV feeding the GPU, or the plain torchvision DataLoader
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --pipeline dali --out runs/simclr_dali
    # watch a run live: the metrics also as TensorBoard event files (the `tensorboard` extra)
    python -m fastssl.pretrain --dataset cifar10-sample --epochs 3 --logger tensorboard --out runs/x
    tensorboard --logdir runs/x/tensorboard
    # a new run starting from trained weights (a run, backbone.safetensors, a torchvision state_dict)
    python -m fastssl.pretrain --dataset cifar100 --data-dir data --init runs/simclr --out runs/from_simclr
    # continue an interrupted run exactly where its last checkpoint left it
    python -m fastssl.pretrain --out runs/simclr --resume
    # on preemptible machines: SIGTERM/SIGINT/SIGUSR1 save the position and exit 128 + signal;
    # a checkpoint every 500 steps bounds what a kill -9 loses
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --save-every-steps 500 --out runs/simclr
    # several GPUs: torchrun, one process per GPU; --batch-size is the global batch, and NT-Xent and
    # BatchNorm (--sync-bn, default) span it; scripts/two_node.sh runs the two-host path on one machine
    torchrun --nproc_per_node 4 -m fastssl.pretrain --dataset cifar10 --data-dir data --out runs/ddp
    # the other families on the same backbone: a (denoising) autoencoder and Deep InfoMax
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --method autoencoder --ae-noise 0.5 --out runs/ae
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --method dim --dim-estimator infonce --out runs/dim
    # 80/10/10 of the 60,000 pooled CIFAR-10 images: pretrain on the 48,000 train images (no labels),
    # kNN monitor on the 6,000 validation images, the 6,000 test images scored once at the end
    python -m fastssl.pretrain --dataset cifar10 --data-dir data --split 80/10/10 --out runs/simclr_split
    # a converted image folder (python -m fastssl.convert ... --to ffcv), streamed, views of 224 px
    python -m fastssl.pretrain --dataset data/photos_train.beton --pipeline ffcv --stem imagenet --out runs/photos
    # photos without labels (a folder of images, no class subfolders; docs/data.md): no kNN monitor
    python -m fastssl.pretrain --dataset imagefolder --data-dir trip/ --knn-every 0 --out runs/trip
    # settings from a file, flags override it
    python -m fastssl.pretrain --config simclr.toml --temperature 0.5

Every flag is listed by --help. The run directory gets config.json, metrics.jsonl, last.pt,
best.pt and backbone.pt / .safetensors / .json (see fastssl/checkpoint.py).
"""

import sys
from dataclasses import dataclass, field

import pipelines
from pipelines import datasets

from . import loggers
from .config import cli, parse
from .data import check_split, split_field, split_seed_field
from .methods import METHODS
from .models import BACKBONES
from .step import COMPILE_MODES


@dataclass
class PretrainConfig:
    # data
    # Converted datasets are written by fastssl.convert. cifar10-sample is a 2,000-image CIFAR-10 sample
    # shipped with fastssl, so it needs no download.
    dataset: str = field(
        default="cifar10",
        metadata={
            "help": "training data: a name or a converted dataset's path (.beton file or DALI shard directory)",
            "choices": datasets.Choices(datasets.DATASETS),
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "where the dataset lives (else $FASTSSL_DATA)"}
    )
    subset: int | None = field(
        default=None, metadata={"help": "use only the first N training images, class-balanced"}
    )
    split: str = (
        split_field()
    )  # a train/val/test split: pretrain on its train part, monitor its validation part
    split_seed: int = split_seed_field()
    pipeline: str = field(
        default="gpu", metadata={"help": "data pipeline", "choices": list(pipelines.PIPELINES)}
    )
    workers: int | None = field(
        default=None, metadata={"help": "loader worker processes/threads (torchvision, dali, ffcv)"}
    )
    # The views are RandomResizedCrop outputs; evaluation resizes and centre-crops to the same side. Unset: 32
    # (the CIFAR recipe) for named datasets; for a converted dataset its stored side when all images share
    # one, else 224 with --stem imagenet and 96 with the cifar stem (STL-10-like data).
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "side of the views in pixels (unset: 32 for named datasets, else from the converted data)"
        },
    )
    # method and model
    method: str = field(default="simclr", metadata={"help": "training method", "choices": list(METHODS)})
    backbone: str = field(
        default="resnet18", metadata={"help": "backbone network", "choices": list(BACKBONES)}
    )
    stem: str = field(
        default="cifar",
        metadata={
            "help": "cifar: 3x3 conv, no max-pool; imagenet: 7x7/2 conv + max-pool",
            "choices": ["cifar", "imagenet"],
        },
    )
    # A new run whose backbone starts from these weights (heads start fresh); config.json records the path
    # and the file's sha256. Architecture and stem must match --backbone and --stem.
    init: str | None = field(
        default=None,
        metadata={
            "help": "start the backbone from weights: run dir, backbone.pt/.safetensors, torchvision state_dict"
        },
    )
    # The SimCLR defaults mix two sources: solo-learn's CIFAR temperature (0.2) and optimiser (below);
    # SimCLR's own (Chen et al. 2020) 2048 -> 128 projection and CIFAR colour-jitter strength 0.5
    # (the pipelines' SimCLRRecipe). solo-learn's CIFAR config projects to 256 and jitters at strength 1.0.
    proj_hidden_dim: int = field(default=2048, metadata={"help": "projection head hidden width"})
    proj_dim: int = field(default=128, metadata={"help": "projection (embedding) dimension"})
    # SimCLR's own code (and lightly) end the head with a BatchNorm; fastssl's default is decided by the
    # race's ablation (benchmarks/race, docs/race.md).
    proj_out_bn: bool = field(
        default=False,
        metadata={"help": "BatchNorm1d on the projection's output (and no bias on its last Linear)"},
    )
    temperature: float = field(default=0.2, metadata={"help": "NT-Xent temperature"})
    # Above 0 it is a denoising autoencoder (Vincent et al. 2008): the encoder sees the noisy view and the
    # target stays the clean one.
    ae_noise: float = field(
        default=0.0,
        metadata={
            "help": "autoencoder: std of Gaussian noise on the input view, normalised units (0: plain)"
        },
    )
    dim_estimator: str = field(
        default="jsd", metadata={"help": "Deep InfoMax MI estimator", "choices": ["jsd", "infonce"]}
    )
    dim_alpha: float = field(default=0.0, metadata={"help": "Deep InfoMax weight of the global MI term"})
    dim_beta: float = field(default=1.0, metadata={"help": "Deep InfoMax weight of the local MI term"})
    dim_gamma: float = field(
        default=0.1, metadata={"help": "Deep InfoMax weight of the adversarial uniform-prior matching"}
    )
    # optimisation: solo-learn's SimCLR CIFAR optimiser (LARS eta 0.02 clipped, lr 0.4 per 256 images,
    # weight decay 1e-5 as in its simclr.sh, 10 warm-up epochs then cosine); 200 epochs and batch 512
    # are fastssl's own (solo-learn: 1000 and 256)
    epochs: int = field(default=200, metadata={"help": "training epochs"})
    batch_size: int = field(
        default=512, metadata={"help": "global batch size (images; each gives two views)"}
    )
    optimizer: str = field(
        default="lars", metadata={"help": "optimiser", "choices": ["lars", "sgd", "adamw"]}
    )
    # Linear scaling, lr_used = lr * batch_size / 256, so one base rate serves every batch size.
    lr: float | None = field(
        default=None,
        metadata={
            "help": "base learning rate per 256 images (default per optimiser: lars 0.4, sgd 0.4, adamw 1e-3)"
        },
    )
    weight_decay: float = field(
        default=1e-5, metadata={"help": "weight decay (not applied to biases and BatchNorm)"}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD/LARS momentum"})
    # Plain momentum is the rule LARS uses for biases and BatchNorm, so sgd without Nesterov is LARS without
    # the trust ratio.
    nesterov: bool = field(
        default=False, metadata={"help": "sgd only: Nesterov momentum (off: plain momentum)"}
    )
    # solo-learn's LARS: eta 0.02 with clipping (step min(lr, eta*|w|/|g|)); SimCLR's TF code and lightly:
    # eta 0.001 without clipping (step lr*eta*|w|/|g|). See fastssl/optim.py.
    lars_eta: float = field(default=0.02, metadata={"help": "lars only: trust coefficient"})
    lars_clip: bool = field(
        default=True, metadata={"help": "lars only: clip each layer's rate at the scheduled lr"}
    )
    warmup_epochs: float = field(
        default=10, metadata={"help": "linear warm-up length in epochs, then cosine decay"}
    )
    # execution
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N"})
    precision: str = field(
        default="auto",
        metadata={"help": "auto: bf16 autocast on CUDA, fp32 on CPU", "choices": ["auto", "bf16", "fp32"]},
    )
    compile: bool | None = field(
        default=None, metadata={"help": "torch.compile the training step (default: on for CUDA)"}
    )
    # reduce-overhead's CUDA graphs replay from static input buffers.
    compile_mode: str = field(
        default="default",
        metadata={
            "help": "torch.compile mode of the model + loss graph; reduce-overhead = CUDA graphs",
            "choices": list(COMPILE_MODES),
        },
    )
    compile_fullgraph: bool = field(
        default=True,
        metadata={
            "help": "compile the model + loss as one graph: a graph break is an error, not a silent split"
        },
    )
    # The multi-tensor LARS update is used either way: this flag only decides whether it is compiled.
    compile_optimizer: bool = field(
        default=False, metadata={"help": "lars only: torch.compile the LARS update into fused kernels"}
    )
    # On by default so that a multi-process run normalises like one process with the same global batch.
    sync_bn: bool = field(
        default=True,
        metadata={
            "help": "under torchrun: BatchNorm statistics over the global batch (all ranks); off: per rank"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and augmentation"})
    # monitoring and outputs
    out: str = field(default="runs/simclr", metadata={"help": "run directory"})
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its last checkpoint"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run directory"})
    knn_every: int = field(
        default=10,
        metadata={"help": "kNN monitor (on the validation split) every N epochs and at the end (0: never)"},
    )
    # These images' labels do not vote. best.pt is chosen on them, so the test split is scored only once, at
    # the end.
    knn_val_fraction: float = field(
        default=0.1,
        metadata={"help": "stratified fraction of the labelled training images the kNN monitor scores"},
    )
    # A linear classifier on the detached features, with its own optimiser (fastssl/online_probe.py);
    # scored with the kNN monitor. Only on a labelled dataset; it never changes the backbone's gradients.
    online_probe: bool = field(
        default=True,
        metadata={"help": "online linear probe: val_online_top1/top5 with the kNN monitor"},
    )
    knn_k: int = field(default=200, metadata={"help": "kNN neighbours"})
    knn_t: float = field(default=0.1, metadata={"help": "kNN temperature"})
    log_interval: int = field(
        default=50, metadata={"help": "steps between metric records (each costs one host sync)"}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    # metrics.jsonl is always written and stays the source of truth; tensorboard mirrors its records
    # under <out>/tensorboard/ (the `tensorboard` extra), see fastssl/loggers.py.
    logger: str = field(
        default="jsonl",
        metadata={"help": "where metric records go, comma-separated: jsonl (always on), tensorboard"},
    )
    # Exported outside the timed epoch, so the epoch times do not include the export.
    backbone_every: int = field(
        default=0,
        metadata={"help": "also export backbone_epochNNN.pt every N epochs (0: only the final backbone.pt)"},
    )
    # Bounds what a kill -9 loses to N steps.
    save_every_steps: int = field(
        default=0,
        metadata={
            "help": "also checkpoint the exact position every N steps inside an epoch (0: only at epoch ends)"
        },
    )

    def __post_init__(self):
        positive = ["epochs", "batch_size", "proj_hidden_dim", "proj_dim", "log_interval", "knn_k"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.compile_optimizer and self.optimizer != "lars":
            raise ValueError("--compile-optimizer applies to --optimizer lars only")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("--nesterov needs --optimizer sgd and --momentum > 0")
        for name in ["temperature", "knn_t", "lars_eta"]:
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.subset is not None and self.subset <= 0:
            raise ValueError(f"--subset must be positive, got {self.subset}")
        if not 0 < self.knn_val_fraction < 1:
            raise ValueError(f"--knn-val-fraction must be in (0, 1), got {self.knn_val_fraction}")
        if (
            self.weight_decay < 0
            or self.warmup_epochs < 0
            or self.knn_every < 0
            or not 0 <= self.momentum < 1
        ):
            raise ValueError(
                "--weight-decay, --warmup-epochs and --knn-every must be >= 0 and --momentum in [0, 1)"
            )
        if self.backbone_every < 0:
            raise ValueError(f"--backbone-every must be >= 0, got {self.backbone_every}")
        if self.save_every_steps < 0:
            raise ValueError(f"--save-every-steps must be >= 0, got {self.save_every_steps}")
        if min(self.ae_noise, self.dim_alpha, self.dim_beta, self.dim_gamma) < 0:
            raise ValueError("--ae-noise, --dim-alpha, --dim-beta and --dim-gamma must be >= 0")
        if self.method == "dim" and self.dim_alpha == self.dim_beta == 0:
            raise ValueError(
                "--method dim needs --dim-alpha or --dim-beta > 0: there is no MI term to maximise"
            )
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image-size must be positive, got {self.image_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError("--workers must be >= 0")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other")
        loggers.names(self.logger)  # an unknown name: ValueError
        check_split(self)


@cli
def main(argv=None):
    from .train import train

    cfg = parse(PretrainConfig, argv, description=__doc__)
    train(cfg, argv if argv is not None else sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
