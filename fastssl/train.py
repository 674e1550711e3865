"""The one training loop, shared by every method.

Per step: a `pipelines.Batch` already on the device -> `method(batch) -> (loss, logs)` under bf16
autocast (CUDA) and torch.compile -> backward -> optimiser and schedule step. The only host/device
synchronisations are at log intervals, at epoch ends and in the kNN monitor. Under `torchrun`
(WORLD_SIZE > 1) the method is wrapped in DistributedDataParallel, each rank reads its shard of
the epoch and only rank 0 writes the run directory.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

import pipelines
from pipelines.data import splits
from pipelines.data.arrays import require_labels
from pipelines.formats import converted
from pipelines.recipes import SimCLRRecipe

from . import __version__, loggers, online_probe
from . import checkpoint as ckpt
from .config import ConfigError, from_dict, parse
from .data import load_data, view_side
from .distributed import convert_sync_batchnorm
from .eval.knn import knn_eval
from .lock import RunLock, clear_run_dir, has_content
from .methods import METHODS
from .optim import base_lr, build_optimizer, warmup_cosine
from .progress import Progress, summary_table
from .runtime import agree, environment, git_commit, mean_over_ranks, resolve_device, setup_distributed  # noqa: F401  (re-exported)
from .signals import StopFlag
from .signals import name as signal_name
from .step import TrainStep, setup_device

# Settings that may differ when resuming (they change how, not what, is computed).
# `out` too: a moved or copied run directory resumes where it is now.
RESUMABLE_CHANGES = {
    "resume",
    "overwrite",
    "device",
    "compile",
    "progress",
    "logger",
    "log_interval",
    "workers",
    "data_dir",
    "out",
    "save_every_steps",
    "backbone_every",
    "compile_mode",
    "compile_fullgraph",
    "compile_optimizer",
}
# Under torchrun the ranks agree on a stop request every this many steps (an all_reduce + host sync).
STOP_SYNC_EVERY = 16
# Exit code of a run stopped by a non-finite loss (signals exit with 128 + signal number).
DIVERGED_EXIT = 3


def prepare_run_dir(cfg, argv):
    """Check --out / --resume / --overwrite before any work (the caller holds the run lock). Returns
    (cfg, checkpoint or None); when resuming, the saved config is the base and only explicitly given
    flags may override it. Damaged or foreign run files are refused here, before anything is written."""
    out = cfg.out
    exists = has_content(out)
    if cfg.resume and cfg.init:
        raise ConfigError("--init starts a new run from given weights; it cannot be combined with --resume")
    if cfg.resume:
        last = os.path.join(out, "last.pt")
        if not os.path.isfile(last):
            raise ConfigError(f"--resume: no checkpoint at {last}")
        state = ckpt.load_training_state(last)
        saved = state["config"]
        from_dict(type(cfg), saved, source=f"{last}: saved config")
        for name in ("config.json", "summary.json"):
            path = os.path.join(out, name)
            if os.path.lexists(path) and not os.path.isfile(path):
                raise ConfigError(f"{path} is not a regular file; move it away to resume")
        ckpt.read_jsonl(os.path.join(out, "metrics.jsonl"))  # refuses a damaged file now, not mid-run
        new = parse(type(cfg), argv, base={**saved, "resume": True, "overwrite": False, "out": out})
        changed = [
            k for k, v in asdict(new).items() if k not in RESUMABLE_CHANGES and saved.get(k, v) != v
        ]  # keys added since: their default
        if changed:
            raise ConfigError(
                f"--resume: {', '.join(changed)} differ(s) from the run being resumed; "
                "start a new --out instead"
            )
        return new, state
    if exists and not cfg.overwrite:
        raise ConfigError(
            f"--out {out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    return cfg, None


def train(cfg, argv=(), command="fastssl.pretrain"):
    """Run (or resume) training as `cfg` says; returns the summary dict also saved as summary.json.
    `argv` is the command line, kept in config.json and used to re-read flags on --resume.
    A signal (SIGTERM, SIGINT, SIGUSR1) saves the position and exits with 128 + its number; a
    non-finite loss exits with DIVERGED_EXIT, the last good checkpoint kept."""
    rank, world, local_rank = setup_distributed(cfg.device)
    # One writer per run directory, taken before anything in --out is read or written; the other
    # ranks learn whether rank 0 got it (`agree`) instead of waiting for it forever.
    lock, error = None, None
    if rank == 0:
        try:
            lock = RunLock(cfg.out).acquire()
        except Exception as e:
            error = e
    try:
        agree(error)
        with StopFlag() as stop:  # from the start: a signal during setup stops after the first step
            return _train(cfg, argv, command, rank, world, local_rank, stop)
    except BaseException:
        if lock is not None:
            lock.release(remove_if_unused=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _finished_summary(out: str, epochs: int) -> dict | None:
    """summary.json of a run that completed all `epochs`, or None (missing, damaged, or cut short)."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and done.get("epochs_run") == epochs else None


@dataclass
class Data:
    """The training loader and the splits around it (build_data)."""

    loader: object  # a pipelines loader: len(), set_epoch(e), iteration over Batches
    train: object  # the training images, sized for the views
    test: object | None  # scored once, for the final network; never selects anything
    bank: object  # the kNN voters of that final test score
    monitor: tuple | None  # (voters, queries) of the kNN monitor, or None when it is off
    parts: object  # load_data's split, described in config.json
    size: int | None  # the view side; None: the recipe's default (32)


@dataclass
class Run:
    """What the phases of one run share, filled in phase by phase (see `_train`)."""

    cfg: object
    argv: list | tuple  # the command line, for config.json
    command: str  # the module run, e.g. fastssl.pretrain
    rank: int
    world: int
    device: torch.device
    stop: StopFlag
    use_bf16: bool
    use_compile: bool
    data: Data | None = None  # build_data
    method: torch.nn.Module | None = None  # build_model: unwrapped, what checkpoints hold
    optimizer: torch.optim.Optimizer | None = None
    schedule: torch.optim.lr_scheduler.LambdaLR | None = None
    probed: torch.nn.Module | None = None  # the method + online probe (online_probe.Probed), or None: off
    probe_optimizer: torch.optim.Optimizer | None = None
    lr: float = 0.0  # the lr used: base lr x batch / 256
    steps_per_epoch: int = 0
    start_epoch: int = 0  # restore: the first epoch still to train
    best: float | None = None  # best.pt's score so far (see save_checkpoints)
    position: dict | None = None  # a position inside start_epoch to continue from
    step: TrainStep | None = None  # build_step
    history: list = field(default_factory=list)  # epoch summaries, a resumed run's earlier ones too
    init: dict | None = None  # --init: the weights the backbone started from (init_weights)
    loggers: list = field(default_factory=list)  # write_run_dir: rank 0's (fastssl/loggers.py), fed by log()
    progress: Progress | None = None
    t_start: float = 0.0  # when training began: time-to-accuracy's zero

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> str:
        return self.cfg.out


def _train(cfg, argv, command, rank, world, local_rank, stop):
    """The run's phases in order, each a function below: check_run_dir, build_data, build_model,
    restore (when resuming) or init_weights (--init), build_step, write_run_dir, run_epoch per epoch,
    finish."""
    cfg, resume_state, finished = check_run_dir(cfg, argv, rank, world)
    if finished is not None:  # resuming a finished run changes nothing
        return finished
    device = resolve_device(cfg.device, local_rank)
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    setup_device(device)  # CUDA: TF32 matmuls, cuDNN autotuner
    run = Run(cfg, argv, command, rank, world, device, stop, use_bf16, use_compile)
    build_data(run)  # first: a bad dataset must fail before anything in --out is touched
    build_model(run)
    if resume_state is not None:
        restore(run, resume_state)
    elif cfg.init:
        init_weights(run)
    build_step(run)
    write_run_dir(run)
    run.progress = Progress(
        cfg.epochs, run.steps_per_epoch, run.start_epoch, enabled=cfg.progress and run.main_rank
    )
    run.t_start = time.perf_counter()
    # The loggers close when the epochs end, and on a stop, a divergence or a crash: nothing logged is lost.
    with run.progress, loggers.closing(run.loggers):
        for epoch in range(run.start_epoch, cfg.epochs):
            run_epoch(run, epoch)
    return finish(run)


def check_run_dir(cfg, argv, rank, world):
    """prepare_run_dir, agreed by every rank. Returns (cfg, resume state or None, the summary of
    a run that already finished all its epochs or None)."""
    try:
        cfg, resume_state, error = *prepare_run_dir(cfg, list(argv)), None
        loggers.require(cfg.logger)  # a missing optional package (tensorboard) before any work
    except Exception as e:
        error = e
    agree(error)  # a run directory refused on one rank (e.g. not shared between nodes) stops all
    saved_world = (resume_state or {}).get("world_size", 1)
    if resume_state is not None and saved_world != world:
        raise ConfigError(
            f"--resume: {cfg.out} was trained by {saved_world} process(es), this launch has {world}; "
            f"resume with the same number (torchrun --nproc_per_node ...)"
        )
    if (
        resume_state is not None
        and "position" not in resume_state
        and resume_state["epoch"] >= cfg.epochs - 1
    ):
        done = _finished_summary(cfg.out, cfg.epochs)
        if done is not None:
            if rank == 0:
                print(f"{cfg.out} already finished all {cfg.epochs} epochs; nothing to do")
            return cfg, resume_state, done
    return cfg, resume_state, None


def build_data(run: Run) -> None:
    """The training loader, the kNN monitor's split and the final test score's bank and queries."""
    cfg, device, rank, world = run.cfg, run.device, run.rank, run.world
    method_cls = METHODS[cfg.method]
    # test "optional": e.g. an image folder without a test split gives only the validation score
    parts = load_data(
        cfg.dataset,
        cfg.data_dir,
        cfg.split,
        cfg.split_seed,
        subset=cfg.subset,
        seed=cfg.seed,
        test="optional" if cfg.knn_every else "skip",
    )
    train_data, test_data, monitor, bank = parts.train, parts.test, None, parts.train
    # The one place a converted dataset's view side (and evaluation crops) is decided: this command's stem.
    train_data, test_data, bank = (
        converted.sized(d, cfg.image_size, cfg.stem) for d in (train_data, test_data, bank)
    )
    if cfg.method == "supervised":  # learns from the labels themselves
        require_labels(train_data, "supervised training")
    if cfg.knn_every:
        # An unlabelled folder is refused, not silently left unmonitored: --knn-every 0 says so.
        require_labels(train_data, "the kNN monitor (pass --knn-every 0 to pretrain without it)")
        if parts.val is None:
            monitor = monitor_split(train_data, cfg.knn_val_fraction, cfg.seed)
        else:  # a train/val/test split: its validation part; the final test score's bank is
            monitor = (train_data, parts.val)  # train + validation, as for fastssl.knn
            bank, _ = parts.labelled()
    extra = {"workers": cfg.workers} if cfg.workers is not None and cfg.pipeline != "gpu" else {}
    size = view_side(train_data, cfg.image_size)
    if size is not None:  # else the recipe's default side (32)
        extra["spec"] = SimCLRRecipe(size=size)
    loader = pipelines.build(
        cfg.pipeline,
        train_data,
        batch_size=cfg.batch_size // world,
        device=device,
        seed=cfg.seed,
        recipe=method_cls.recipe,
        rank=rank,
        world_size=world,
        **extra,
    )
    run.data = Data(loader, train_data, test_data, bank, monitor, parts, size)


def build_model(run: Run) -> None:
    """The method (seeded), its optimiser and the warm-up + cosine schedule, stepped per step."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    method = (
        METHODS[cfg.method](cfg, len(run.data.train.classes))
        .to(run.device)
        .to(memory_format=torch.channels_last)
    )
    if run.world > 1 and getattr(cfg, "sync_bn", False):  # before the optimiser: new BatchNorm parameters
        convert_sync_batchnorm(method)  # BatchNorm over the global batch; same state_dict keys
    steps_per_epoch = len(run.data.loader)
    lr = base_lr(cfg.optimizer, cfg.lr) * cfg.batch_size / 256
    optimizer = build_optimizer(
        cfg.optimizer,
        method,
        lr,
        cfg.weight_decay,
        cfg.momentum,
        nesterov=cfg.nesterov,
        compiled=cfg.compile_optimizer,
        eta=cfg.lars_eta,
        clip=cfg.lars_clip,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch))
    )
    run.method, run.optimizer, run.schedule = method, optimizer, schedule
    # The online probe needs labels to learn from and the monitor's validation images to be scored on.
    labelled = len(run.data.train.classes) > 0 and bool((np.asarray(run.data.train.labels) >= 0).any())
    if getattr(cfg, "online_probe", False) and labelled and run.data.monitor is not None:
        run.probed, run.probe_optimizer = online_probe.build(method, len(run.data.train.classes))
    run.lr, run.steps_per_epoch = lr, steps_per_epoch


def restore(run: Run, state: dict) -> None:
    """A resumed run's weights, optimiser, schedule and RNG, and the epoch (and step) to continue at.
    A checkpoint whose weights do not fit its config is refused before anything is written."""
    last = os.path.join(run.out, "last.pt")
    try:
        run.method.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["schedule"])
        if run.probed is not None and "probe" in state:  # absent: a run saved before the probe existed
            run.probed.probe.load_state_dict(state["probe"])
            run.probe_optimizer.load_state_dict(state["probe_optimizer"])
        ckpt.set_rng_state(state["rng"], run.device)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(
            f"{last} does not match its saved config: {str(e).strip().splitlines()[0][:200]}"
        ) from None
    run.start_epoch, run.best, run.init = state["epoch"] + 1, state.get("best"), state.get("init")
    run.position = position = state.get("position")  # saved inside an epoch (signal or --save-every-steps)
    if position is not None:
        if not 0 < position["step"] < run.steps_per_epoch:
            raise ConfigError(
                f"{last}: saved at step {position['step']} of an epoch of {run.steps_per_epoch} steps"
            )
        run.start_epoch = position["epoch"]


def init_weights(run: Run) -> None:
    """--init: a new run's backbone starts from given weights (heads, decoder and critics start
    fresh). Weights that do not fit --backbone/--stem are refused before --out is written."""
    try:
        run.init = ckpt.init_backbone(run.method.backbone, run.cfg.init)
    except pipelines.DataError as e:
        raise ConfigError(f"--init: {e}") from None


def build_step(run: Run) -> None:
    """The training step around the method: compiled, and under torchrun inside DistributedDataParallel."""
    cfg, device = run.cfg, run.device
    method = run.probed if run.probed is not None else run.method  # what the step trains
    model, compile_step = method, run.use_compile
    if run.world > 1:
        # Dynamo cannot trace DDP's own forward (its logger): under fullgraph a compiled step
        # around DDP fails. The method is compiled inside DDP instead (gradient hooks stay eager).
        if run.use_compile and cfg.compile_mode == "reduce-overhead":
            raise ConfigError(
                "--compile-mode reduce-overhead (CUDA graphs) is not supported under torchrun; "
                "use default or max-autotune-no-cudagraphs"
            )
        inner = method
        if run.use_compile:
            inner = torch.compile(
                method,
                mode=None if cfg.compile_mode == "default" else cfg.compile_mode,
                fullgraph=cfg.compile_fullgraph,
            )
        model = torch.nn.parallel.DistributedDataParallel(
            inner, device_ids=[device.index] if device.type == "cuda" else None
        )
        compile_step = False
    run.step = TrainStep(
        model,
        run.optimizer,
        run.schedule,
        device,
        bf16=run.use_bf16,
        compile=compile_step,
        mode=cfg.compile_mode,
        fullgraph=cfg.compile_fullgraph,
        probe_optimizer=run.probe_optimizer,
    )


def write_run_dir(run: Run) -> None:
    """Rank 0 writes config.json and cuts metrics.jsonl back to the resumed position; the other
    ranks wait for it. run.history starts as the epoch summaries kept."""
    cfg, out, data, steps_per_epoch = run.cfg, run.out, run.data, run.steps_per_epoch
    resume_step = run.start_epoch * steps_per_epoch + (run.position["step"] if run.position else 0)
    metrics_path = os.path.join(out, "metrics.jsonl")
    prior, error = [], None
    try:
        if run.main_rank:
            ckpt.remove_dead_temporaries(out)  # left by a writer that was killed
            if cfg.overwrite:
                clear_run_dir(out)  # keeps the held lock file
            os.makedirs(out, exist_ok=True)
            info = {
                "config": asdict(cfg),
                "command": ["python", "-m", run.command, *run.argv],
                "environment": environment(),
                "world_size": run.world,
                "steps_per_epoch": steps_per_epoch,
                "lr_used": run.lr,
                "bf16": run.use_bf16,
                "compile": run.use_compile,
                "device": str(run.device),
                "train_images": len(data.train.labels),
                "dataset_name": data.train.name,
                "split": data.parts.info(),
                "image_size": data.size,  # the view side used (a converted dataset's resolved default too)
                "init": run.init,  # --init's path, the file read and its sha256
                # the augmentation as this pipeline computes it (pipelines.recipes.name)
                "recipe": getattr(data.loader, "recipe_name", METHODS[cfg.method].recipe),
            }
            ckpt.atomic_write_text(os.path.join(out, "config.json"), json.dumps(info, indent=2))
            # A crash after the last checkpoint may have logged steps that will now be redone.
            kept = [
                r
                for r in ckpt.read_jsonl(metrics_path)
                if r.get("epoch", -1) < run.start_epoch or ("step" in r and r["step"] <= resume_step)
            ]
            ckpt.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            prior = [r for r in kept if r.get("summary")]
            run.loggers = loggers.open_loggers(cfg.logger, out, steps_per_epoch, resume_step)
    except Exception as e:
        error = e
    agree(error)  # the other ranks wait here until rank 0 has prepared --out
    run.history = prior


def run_epoch(run: Run, epoch: int) -> None:
    """One epoch: its training steps, then its summary, monitor, checkpoints and stop check."""
    summary = train_steps(run, epoch)
    end_epoch(run, epoch, summary)


def train_steps(run: Run, epoch: int) -> dict:
    """The epoch's steps (from run.position's step when the run stopped inside this epoch).
    Returns the epoch's summary record: mean logs, time, loader wait."""
    cfg, loader, steps_per_epoch = run.cfg, run.data.loader, run.steps_per_epoch
    save_every = getattr(cfg, "save_every_steps", 0)
    run.method.train()
    loader.set_epoch(epoch)
    epoch_sum, window_sum, window_steps, skip = None, None, 0, 0
    if run.position is not None and epoch == run.position["epoch"]:
        position = run.position
        skip, window_steps = position["step"], position["window_steps"]
        epoch_sum = position["epoch_sum"].to(run.device)
        window_sum = None if position["window_sum"] is None else position["window_sum"].to(run.device)
    t_window = t_epoch = t_asked = time.perf_counter()
    data_wait = 0.0  # host seconds spent waiting for the loader (on CUDA: its queued work only)
    for i, batch in enumerate(loader):
        data_wait += time.perf_counter() - t_asked
        if i < skip:  # the epoch's batches are a pure function of (seed, epoch): drop those done
            run.progress.advance()
            t_asked = time.perf_counter()
            continue
        logs = run.step(batch)  # autocast, forward, backward, optimiser, schedule (fastssl/step.py)
        # Running sums stay on the device: no host sync here.
        vals = torch.stack([v.float() for v in logs.values()])
        window_sum = vals if window_sum is None else window_sum + vals
        epoch_sum = vals if epoch_sum is None else epoch_sum + vals
        window_steps += 1
        run.progress.advance()
        if window_steps == cfg.log_interval or i == steps_per_epoch - 1:
            t_window = log_window(
                run, epoch, i, logs.keys(), window_sum / window_steps, window_steps, t_window
            )
            window_sum, window_steps = None, 0
        signum = stop_requested(run, i + 1)
        due = save_every and (epoch * steps_per_epoch + i + 1) % save_every == 0
        if i < steps_per_epoch - 1 and (signum or due):  # at the epoch's end the epoch checkpoint follows
            save_position(run, epoch, i, epoch_sum, window_sum, window_steps)
            if signum:
                stop_now(run, signum, f"at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}")
        t_asked = time.perf_counter()
    epoch_means = dict(zip(logs.keys(), mean_over_ranks(epoch_sum / steps_per_epoch).tolist()))
    epoch_time = time.perf_counter() - t_epoch
    # The batch is global and counted in source images (each gives its views).
    return {
        "epoch": epoch,
        "summary": True,
        **{f"epoch_{k}": v for k, v in epoch_means.items()},
        "epoch_time_s": epoch_time,
        "epoch_img_per_s": steps_per_epoch * cfg.batch_size / epoch_time,
        "epoch_data_wait_s": data_wait,
    }


def log_window(run: Run, epoch: int, i: int, names, window_mean, window_steps: int, t_window: float) -> float:
    """One metrics record for the steps since the last: their mean logs over the ranks too (one
    all_reduce, then one host sync per log interval). Returns its time, the next window's start."""
    means = mean_over_ranks(window_mean).tolist()
    if not all(map(_finite, means)):
        _diverged(epoch, i, run.steps_per_epoch, run.cfg, run.out)
    now = time.perf_counter()
    rate = window_steps * run.cfg.batch_size / (now - t_window)  # global batch, in source images
    rec = {
        "epoch": epoch,
        "step": epoch * run.steps_per_epoch + i + 1,
        **dict(zip(names, means)),
        "lr": run.schedule.get_last_lr()[0],
        "img_per_s": rate,
    }
    log(run, rec)
    run.progress.update(epoch, rec["loss"], rate)
    return now


def save_position(run: Run, epoch: int, i: int, epoch_sum, window_sum, window_steps: int) -> None:
    """last.pt at the exact position after step i of `epoch`, with the running sums, so that a
    resumed epoch logs what an uninterrupted one would."""
    if not torch.isfinite(epoch_sum).all():  # host sync: never save a diverged model
        _diverged(epoch, i, run.steps_per_epoch, run.cfg, run.out)
    if run.main_rank:
        pos = {
            "epoch": epoch,
            "step": i + 1,
            "epoch_sum": epoch_sum.cpu(),
            "window_steps": window_steps,
            "window_sum": None if window_sum is None else window_sum.cpu(),
        }
        ckpt.atomic_save(training_state(run, epoch - 1, pos), os.path.join(run.out, "last.pt"))
    if run.world > 1:
        dist.barrier()


def end_epoch(run: Run, epoch: int, summary: dict) -> None:
    """After the epoch's last step: backbone snapshot, kNN monitor, summary record and checkpoints;
    a pending stop request ends the run here, the epoch saved."""
    cfg = run.cfg
    last_epoch = epoch == cfg.epochs - 1
    if run.main_rank and cfg.backbone_every and (epoch + 1) % cfg.backbone_every == 0:
        export(run, f"backbone_epoch{epoch + 1:03d}", epoch + 1)
    if run.data.monitor is not None and run.main_rank and (last_epoch or (epoch + 1) % cfg.knn_every == 0):
        knn_monitor(run, epoch, summary, last_epoch)
    # Seconds since this process began training (compilation and kNN included): time-to-accuracy's x axis.
    summary["wall_s"] = time.perf_counter() - run.t_start
    log(run, summary)
    run.history.append(summary)
    if run.main_rank:
        save_checkpoints(run, epoch, summary)
    if run.world > 1:
        dist.barrier()
    signum = stop_requested(run, run.steps_per_epoch)
    if signum and not last_epoch:
        stop_now(run, signum, f"at the end of epoch {epoch + 1}/{cfg.epochs}")


def knn_monitor(run: Run, epoch: int, summary: dict, last_epoch: bool) -> None:
    """kNN top-1/top-5 on the monitor's validation queries into `summary`; after the last epoch
    also the test split's."""
    cfg, data, device = run.cfg, run.data, run.device
    precision = "bf16" if run.use_bf16 else "fp32"
    val = knn_eval(run.method.backbone, *data.monitor, device, cfg.knn_k, cfg.knn_t, precision=precision)
    summary.update({"val_knn_top1": val["top1"], "val_knn_top5": val["top5"]})
    if run.probed is not None:
        probe = online_probe.evaluate(
            run.method.backbone, run.probed.probe, data.monitor[1], device, precision
        )
        summary.update({"val_online_top1": probe["top1"], "val_online_top5": probe["top5"]})
    note = f"epoch {epoch + 1}: kNN top-1 {val['top1']:.2f}% (validation)"
    if last_epoch and data.test is not None:
        # The test split is scored once, for the final network, and never selects anything.
        test = knn_eval(
            run.method.backbone, data.bank, data.test, device, cfg.knn_k, cfg.knn_t, precision=precision
        )
        summary.update({"knn_top1": test["top1"], "knn_top5": test["top5"]})
        note += f", {test['top1']:.2f}% (test)"
    run.progress.note(note)


def save_checkpoints(run: Run, epoch: int, summary: dict) -> None:
    """last.pt after every epoch; best.pt too when the epoch scores best so far: highest
    validation kNN top-1 when the monitor ran, else lowest epoch loss."""
    score = summary.get("val_knn_top1", -summary["epoch_loss"])
    improved = run.best is None or score > run.best
    run.best = score if improved else run.best
    state = training_state(run, epoch)
    ckpt.atomic_save(state, os.path.join(run.out, "last.pt"))
    if improved:
        ckpt.atomic_save(state, os.path.join(run.out, "best.pt"))


def finish(run: Run) -> dict:
    """summary.json (a resumed run's earlier epochs counted), the final backbone (.pt, .safetensors,
    .json; see export), the console table."""
    cfg, history = run.cfg, run.history
    wall = time.perf_counter() - run.t_start
    knn = next((h for h in reversed(history) if "knn_top1" in h), None)
    val = next((h for h in reversed(history) if "val_knn_top1" in h), None)
    result = {
        "out": run.out,
        "epochs_run": len(history),
        "wall_time_s": wall,
        "final_loss": history[-1]["epoch_loss"] if history else None,
        "img_per_s": (sum(h["epoch_img_per_s"] for h in history) / len(history)) if history else None,
        "knn_top1": knn["knn_top1"] if knn else None,
        "knn_top5": knn["knn_top5"] if knn else None,
        "val_knn_top1": val["val_knn_top1"] if val else None,
        "val_knn_top5": val["val_knn_top5"] if val else None,
        "split": cfg.split,
        "split_seed": cfg.split_seed,
    }
    if run.main_rank:
        export(run, "backbone", len(history))
        ckpt.atomic_write_text(os.path.join(run.out, "summary.json"), json.dumps(result, indent=2))
        summary_table(result, cfg)
    if run.world > 1:
        dist.destroy_process_group()
    return result


def export(run: Run, name: str, epochs: int) -> None:
    """<out>/<name>.pt, .safetensors and .json: the backbone after `epochs` epochs, and what a user of
    the weights needs to feed it (the training data's mean/std in [0, 1] units, the view side)."""
    data, recipe = run.data, METHODS[run.cfg.method].recipe
    # None: SimCLR views take the recipe's default side, the other recipes keep the images' side.
    side = data.size or (SimCLRRecipe().size if recipe == "simclr" else int(data.train.images.shape[1]))
    meta = {
        "mean": list(data.train.mean),
        "std": list(data.train.std),
        "image_size": side,
        "method": run.cfg.method,
        "dataset": data.train.name,
        "epochs": epochs,
        "init": run.init,
        "commit": git_commit(),
        "fastssl": __version__,
    }
    ckpt.export_backbone(run.method.backbone, os.path.join(run.out, f"{name}.pt"), meta)


def training_state(run: Run, epoch_done: int, pos=None) -> dict:
    """What last.pt and best.pt hold: everything a bit-exact resume needs."""
    state = {
        "model": run.method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "rng": ckpt.rng_state(run.device),
        "epoch": epoch_done,
        "best": run.best,
        "config": asdict(run.cfg),
        "world_size": run.world,
        "init": run.init,  # config.json keeps it across --resume
    }
    if run.probed is not None:
        state["probe"] = run.probed.probe.state_dict()
        state["probe_optimizer"] = run.probe_optimizer.state_dict()
    return {**state, "position": pos} if pos is not None else state


def log(run: Run, record: dict) -> None:
    """The one place a metrics record is logged: metrics.jsonl and every --logger (rank 0 holds them)."""
    for logger in run.loggers:
        logger.log(record)


def stop_requested(run: Run, step_in_epoch: int):
    """The signal number of a pending stop request, or None; under torchrun every rank gets the same
    answer at the same step."""
    if run.world == 1:
        return run.stop.signum
    if step_in_epoch % STOP_SYNC_EVERY and step_in_epoch != run.steps_per_epoch:
        return None
    flag = torch.tensor([run.stop.signum or 0], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
    return int(flag.item()) or None  # host sync: every STOP_SYNC_EVERY steps under torchrun


def stop_now(run: Run, signum: int, where: str):
    out = run.out
    if run.main_rank:
        print(
            f"stopped by {signal_name(signum)} {where}; saved {os.path.join(out, 'last.pt')}; "
            f"resume with: python -m {run.command} --out {out} --resume",
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + signum)


def monitor_split(data, fraction: float, seed: int):
    """(bank, queries) for the kNN monitor: a stratified, seeded `fraction` of the labelled training
    images are the queries and the rest vote. Pretraining still sees every image (it uses no
    labels); only the choice of best.pt depends on this split, never on the test split."""
    labelled = np.flatnonzero(data.labels >= 0)
    bank, val = splits.stratified_split(data.labels[labelled], fraction, seed)

    def part(idx):
        idx = labelled[idx]
        return data.take(idx)

    return part(bank), part(val)


def _diverged(epoch, i, steps_per_epoch, cfg, out):
    print(
        f"error: non-finite loss at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}; "
        f"the last good checkpoint {os.path.join(out, 'last.pt')} is kept (try a lower --lr)",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(DIVERGED_EXIT)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
