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
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

import pipelines
from pipelines import datasets, sources
from pipelines.recipes import SimCLRRecipe

from . import checkpoint as ckpt
from .config import ConfigError, from_dict, parse
from .eval.knn import knn_eval
from .eval.setup import load_data
from .lock import RunLock, clear_run_dir, has_content
from .methods import METHODS
from .optim import base_lr, build_optimizer, warmup_cosine
from .progress import Progress, summary_table
from .distributed import convert_sync_batchnorm
from .runtime import agree, environment, mean_over_ranks, resolve_device, setup_distributed  # noqa: F401  (re-exported)
from .signals import StopFlag
from .signals import name as signal_name
from .step import TrainStep, setup_device


# Settings that may differ when resuming (they change how, not what, is computed).
# `out` too: a moved or copied run directory resumes where it is now.
RESUMABLE_CHANGES = {"resume", "overwrite", "device", "compile", "progress", "log_interval", "workers", "data_dir",
                     "out", "save_every_steps", "backbone_every", "compile_mode", "compile_fullgraph", "compile_optimizer"}
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
        changed = [k for k, v in asdict(new).items() if k not in RESUMABLE_CHANGES and saved.get(k, v) != v]  # keys added since: their default
        if changed:
            raise ConfigError(f"--resume: {', '.join(changed)} differ(s) from the run being resumed; "
                              "start a new --out instead")
        return new, state
    if exists and not cfg.overwrite:
        raise ConfigError(f"--out {out} already exists; pass --resume to continue it or --overwrite to replace it")
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


def _train(cfg, argv, command, rank, world, local_rank, stop):
    main_rank = rank == 0
    try:
        cfg, resume_state, error = *prepare_run_dir(cfg, list(argv)), None
    except Exception as e:
        error = e
    agree(error)  # a run directory refused on one rank (e.g. not shared between nodes) stops all
    saved_world = (resume_state or {}).get("world_size", 1)
    if resume_state is not None and saved_world != world:
        raise ConfigError(f"--resume: {cfg.out} was trained by {saved_world} process(es), this launch has {world}; "
                          f"resume with the same number (torchrun --nproc_per_node ...)")
    if resume_state is not None and "position" not in resume_state and resume_state["epoch"] >= cfg.epochs - 1:
        done = _finished_summary(cfg.out, cfg.epochs)
        if done is not None:  # resuming a finished run changes nothing
            if main_rank:
                print(f"{cfg.out} already finished all {cfg.epochs} epochs; nothing to do")
            return done
    device = resolve_device(cfg.device, local_rank)
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    setup_device(device)  # CUDA: TF32 matmuls, cuDNN autotuner

    # Data first: a bad dataset must fail before anything in --out is touched.
    method_cls = METHODS[cfg.method]
    # test "optional": e.g. an image folder without a test split gives only the validation score
    parts = load_data(cfg.dataset, cfg.data_dir, cfg.split, cfg.split_seed, subset=cfg.subset, seed=cfg.seed,
                      test="optional" if cfg.knn_every else "skip")
    train_data, test_data, monitor, bank = parts.train, parts.test, None, parts.train
    # A converted dataset's views (and evaluation crops) get their side here (pipelines.sources.sized).
    train_data, test_data, bank = (sources.sized(d, cfg.image_size, cfg.stem) for d in (train_data, test_data, bank))
    if cfg.knn_every:
        if parts.val is None:
            monitor = monitor_split(train_data, cfg.knn_val_fraction, cfg.seed)
        else:  # a train/val/test split: its validation part; the final test score's bank is
            monitor = (train_data, parts.val)  # train + validation, as for fastssl.knn
            bank, _ = parts.labelled()
    extra = {"workers": cfg.workers} if cfg.workers is not None and cfg.pipeline != "gpu" else {}
    size = getattr(train_data, "image_size", None) or getattr(cfg, "image_size", None)
    if size is not None:  # else the recipe's default side (32)
        extra["spec"] = SimCLRRecipe(size=size)
    loader = pipelines.build(cfg.pipeline, train_data, batch_size=cfg.batch_size // world, device=device,
                             seed=cfg.seed, recipe=method_cls.recipe, rank=rank, world_size=world, **extra)

    torch.manual_seed(cfg.seed)
    method = method_cls(cfg, len(train_data.classes)).to(device).to(memory_format=torch.channels_last)
    if world > 1 and getattr(cfg, "sync_bn", False):  # before the optimiser: new BatchNorm parameters
        convert_sync_batchnorm(method)  # BatchNorm over the global batch; same state_dict keys
    steps_per_epoch = len(loader)
    lr = base_lr(cfg.optimizer, cfg.lr) * cfg.batch_size / 256
    optimizer = build_optimizer(cfg.optimizer, method, lr, cfg.weight_decay, cfg.momentum, nesterov=cfg.nesterov,
                                compiled=cfg.compile_optimizer, eta=cfg.lars_eta, clip=cfg.lars_clip)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))
    start_epoch, best, position = 0, None, None
    if resume_state is not None:
        last = os.path.join(cfg.out, "last.pt")
        try:  # a checkpoint whose weights do not fit its config is refused before anything is written
            method.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            schedule.load_state_dict(resume_state["schedule"])
            ckpt.set_rng_state(resume_state["rng"], device)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise ConfigError(f"{last} does not match its saved config: {str(e).strip().splitlines()[0][:200]}") from None
        start_epoch, best = resume_state["epoch"] + 1, resume_state.get("best")
        position = resume_state.get("position")  # saved inside an epoch (signal or --save-every-steps)
        if position is not None:
            if not 0 < position["step"] < steps_per_epoch:
                raise ConfigError(f"{last}: saved at step {position['step']} of an epoch of {steps_per_epoch} steps")
            start_epoch = position["epoch"]
    resume_step = start_epoch * steps_per_epoch + (position["step"] if position else 0)

    model, compile_step = method, use_compile
    if world > 1:
        # Dynamo cannot trace DDP's own forward (its logger): under fullgraph a compiled step
        # around DDP fails. The method is compiled inside DDP instead (gradient hooks stay eager).
        if use_compile and cfg.compile_mode == "reduce-overhead":
            raise ConfigError("--compile-mode reduce-overhead (CUDA graphs) is not supported under torchrun; "
                              "use default or max-autotune-no-cudagraphs")
        inner = method
        if use_compile:
            inner = torch.compile(method, mode=None if cfg.compile_mode == "default" else cfg.compile_mode,
                                  fullgraph=cfg.compile_fullgraph)
        model = torch.nn.parallel.DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
        compile_step = False
    step = TrainStep(model, optimizer, schedule, device, bf16=use_bf16, compile=compile_step, mode=cfg.compile_mode,
                     fullgraph=cfg.compile_fullgraph)

    out = cfg.out
    metrics_path = os.path.join(out, "metrics.jsonl")
    prior, error = [], None  # epoch summaries of the run so far, for a complete summary.json after a resume
    try:
        if main_rank:
            ckpt.remove_dead_temporaries(out)  # left by a writer that was killed
            if cfg.overwrite:
                clear_run_dir(out)  # keeps the held lock file
            os.makedirs(out, exist_ok=True)
            info = {"config": asdict(cfg), "command": ["python", "-m", command, *argv],
                    "environment": environment(), "world_size": world, "steps_per_epoch": steps_per_epoch,
                    "lr_used": lr, "bf16": use_bf16, "compile": use_compile, "device": str(device),
                    "train_images": len(train_data.labels), "dataset_name": train_data.name, "split": parts.info(),
                    "image_size": size,  # the view side used (a converted dataset's resolved default too)
                    # the augmentation as this pipeline computes it (pipelines.recipes.name)
                    "recipe": getattr(loader, "recipe_name", method_cls.recipe)}
            ckpt.atomic_write_text(os.path.join(out, "config.json"), json.dumps(info, indent=2))
            # A crash after the last checkpoint may have logged steps that will now be redone.
            kept = [r for r in ckpt.read_jsonl(metrics_path)
                    if r.get("epoch", -1) < start_epoch or ("step" in r and r["step"] <= resume_step)]
            ckpt.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            prior = [r for r in kept if r.get("summary")]
    except Exception as e:
        error = e
    agree(error)  # the other ranks wait here until rank 0 has prepared --out

    def log(record):
        if main_rank:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    images_per_step = cfg.batch_size  # global, counted in source images (each gives its views)
    progress = Progress(cfg.epochs, steps_per_epoch, start_epoch, enabled=cfg.progress and main_rank)
    t_start, history = time.perf_counter(), prior
    save_every = getattr(cfg, "save_every_steps", 0)

    def training_state(epoch_done, pos=None):
        state = {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "rng": ckpt.rng_state(device), "epoch": epoch_done,
                 "best": best, "config": asdict(cfg), "world_size": world}
        return {**state, "position": pos} if pos is not None else state

    def stop_requested(step_in_epoch):
        if world == 1:
            return stop.signum
        if step_in_epoch % STOP_SYNC_EVERY and step_in_epoch != steps_per_epoch:
            return None
        flag = torch.tensor([stop.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        return int(flag.item()) or None  # host sync: every STOP_SYNC_EVERY steps under torchrun

    def stop_now(signum, where):
        if main_rank:
            print(f"stopped by {signal_name(signum)} {where}; saved {os.path.join(out, 'last.pt')}; "
                  f"resume with: python -m {command} --out {out} --resume", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    with progress:
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            loader.set_epoch(epoch)
            epoch_sum, window_sum, window_steps, skip = None, None, 0, 0
            if position is not None and epoch == position["epoch"]:
                skip, window_steps = position["step"], position["window_steps"]
                epoch_sum = position["epoch_sum"].to(device)
                window_sum = None if position["window_sum"] is None else position["window_sum"].to(device)
            t_window = t_epoch = t_asked = time.perf_counter()
            data_wait = 0.0  # host seconds spent waiting for the loader (on CUDA: its queued work only)
            for i, batch in enumerate(loader):
                data_wait += time.perf_counter() - t_asked
                if i < skip:  # the epoch's batches are a pure function of (seed, epoch): drop those done
                    progress.advance()
                    t_asked = time.perf_counter()
                    continue
                logs = step(batch)  # autocast, forward, backward, optimiser, schedule (fastssl/step.py)
                # Running sums stay on the device: no host sync here.
                vals = torch.stack([v.float() for v in logs.values()])
                window_sum = vals if window_sum is None else window_sum + vals
                epoch_sum = vals if epoch_sum is None else epoch_sum + vals
                window_steps += 1
                progress.advance()
                if window_steps == cfg.log_interval or i == steps_per_epoch - 1:
                    # Mean over the ranks too (one all_reduce), then one host sync per log interval.
                    means = mean_over_ranks(window_sum / window_steps).tolist()
                    if not all(map(_finite, means)):
                        _diverged(epoch, i, steps_per_epoch, cfg, out)
                    now = time.perf_counter()
                    rate = window_steps * images_per_step / (now - t_window)
                    rec = {"epoch": epoch, "step": epoch * steps_per_epoch + i + 1,
                           **dict(zip(logs.keys(), means)), "lr": schedule.get_last_lr()[0], "img_per_s": rate}
                    log(rec)
                    progress.update(epoch, rec["loss"], rate)
                    window_sum, window_steps, t_window = None, 0, now
                signum = stop_requested(i + 1)
                due = save_every and (epoch * steps_per_epoch + i + 1) % save_every == 0
                if i < steps_per_epoch - 1 and (signum or due):  # at the epoch's end the epoch checkpoint follows
                    if not torch.isfinite(epoch_sum).all():  # host sync: never save a diverged model
                        _diverged(epoch, i, steps_per_epoch, cfg, out)
                    if main_rank:
                        pos = {"epoch": epoch, "step": i + 1, "epoch_sum": epoch_sum.cpu(), "window_steps": window_steps,
                               "window_sum": None if window_sum is None else window_sum.cpu()}
                        ckpt.atomic_save(training_state(epoch - 1, pos), os.path.join(out, "last.pt"))
                    if world > 1:
                        dist.barrier()
                    if signum:
                        stop_now(signum, f"at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}")
                t_asked = time.perf_counter()
            epoch_means = dict(zip(logs.keys(), mean_over_ranks(epoch_sum / steps_per_epoch).tolist()))
            epoch_time = time.perf_counter() - t_epoch
            summary = {"epoch": epoch, "summary": True, **{f"epoch_{k}": v for k, v in epoch_means.items()},
                       "epoch_time_s": epoch_time, "epoch_img_per_s": steps_per_epoch * images_per_step / epoch_time,
                       "epoch_data_wait_s": data_wait}
            last_epoch = epoch == cfg.epochs - 1
            if main_rank and cfg.backbone_every and (epoch + 1) % cfg.backbone_every == 0:
                ckpt.export_backbone(method.backbone, os.path.join(out, f"backbone_epoch{epoch + 1:03d}.pt"))
            if monitor is not None and main_rank and (last_epoch or (epoch + 1) % cfg.knn_every == 0):
                precision = "bf16" if use_bf16 else "fp32"
                val = knn_eval(method.backbone, *monitor, device, cfg.knn_k, cfg.knn_t, precision=precision)
                summary.update({"val_knn_top1": val["top1"], "val_knn_top5": val["top5"]})
                note = f"epoch {epoch + 1}: kNN top-1 {val['top1']:.2f}% (validation)"
                if last_epoch and test_data is not None:
                    # The test split is scored once, for the final network, and never selects anything.
                    test = knn_eval(method.backbone, bank, test_data, device, cfg.knn_k, cfg.knn_t,
                                    precision=precision)
                    summary.update({"knn_top1": test["top1"], "knn_top5": test["top5"]})
                    note += f", {test['top1']:.2f}% (test)"
                progress.note(note)
            # Seconds since this process began training (compilation and kNN included): time-to-accuracy's x axis.
            summary["wall_s"] = time.perf_counter() - t_start
            log(summary)
            history.append(summary)
            if main_rank:
                # "best" = highest validation kNN top-1 when the monitor ran, else lowest epoch loss.
                score = summary.get("val_knn_top1", -summary["epoch_loss"])
                improved = best is None or score > best
                best = score if improved else best
                state = training_state(epoch)
                ckpt.atomic_save(state, os.path.join(out, "last.pt"))
                if improved:
                    ckpt.atomic_save(state, os.path.join(out, "best.pt"))
            if world > 1:
                dist.barrier()
            signum = stop_requested(steps_per_epoch)
            if signum and not last_epoch:
                stop_now(signum, f"at the end of epoch {epoch + 1}/{cfg.epochs}")
    wall = time.perf_counter() - t_start
    knn = next((h for h in reversed(history) if "knn_top1" in h), None)
    val = next((h for h in reversed(history) if "val_knn_top1" in h), None)
    result = {"out": out, "epochs_run": len(history), "wall_time_s": wall,
              "final_loss": history[-1]["epoch_loss"] if history else None,
              "img_per_s": (sum(h["epoch_img_per_s"] for h in history) / len(history)) if history else None,
              "knn_top1": knn["knn_top1"] if knn else None, "knn_top5": knn["knn_top5"] if knn else None,
              "val_knn_top1": val["val_knn_top1"] if val else None, "val_knn_top5": val["val_knn_top5"] if val else None,
              "split": cfg.split, "split_seed": cfg.split_seed}
    if main_rank:
        ckpt.export_backbone(method.backbone, os.path.join(out, "backbone.pt"))
        ckpt.atomic_write_text(os.path.join(out, "summary.json"), json.dumps(result, indent=2))
        summary_table(result, cfg)
    if world > 1:
        dist.destroy_process_group()
    return result


def monitor_split(data, fraction: float, seed: int):
    """(bank, queries) for the kNN monitor: a stratified, seeded `fraction` of the labelled training
    images are the queries and the rest vote. Pretraining still sees every image (it uses no
    labels); only the choice of best.pt depends on this split, never on the test split."""
    labelled = np.flatnonzero(data.labels >= 0)
    bank, val = datasets.stratified_split(data.labels[labelled], fraction, seed)
    def part(idx):
        idx = labelled[idx]
        return datasets.take(data, idx)
    return part(bank), part(val)


def _diverged(epoch, i, steps_per_epoch, cfg, out):
    print(f"error: non-finite loss at epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}; "
          f"the last good checkpoint {os.path.join(out, 'last.pt')} is kept (try a lower --lr)",
          file=sys.stderr, flush=True)
    raise SystemExit(DIVERGED_EXIT)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
