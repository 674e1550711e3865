"""How many epochs a time-to-accuracy run gets: what a run costs besides its steps, measured on
this device with the training loop's own model, and the plan that fits the run and its probes in
the time a stage has left (benchmarks.suite's time_to_accuracy and families stages).

    costs = measure_costs(ctx, need_epoch=epoch_seconds(ctx)[0] is None)
    epochs, plan = plan_epochs(ctx, ctx.deadline - time.monotonic(), costs, ["linear"])
"""

import dataclasses
import os
import time

import torch

from . import step as step_bench
from . import timing


def epoch_seconds(ctx) -> tuple[float | None, str]:
    """(estimated seconds per training epoch, where the rate came from), from the earlier stages'
    measured images/s of the step the training loop runs (same batch, precision, compile)."""
    s, images = ctx.sizes, ctx.sizes["train_images"]
    for results, where in ((ctx.results, ""), (getattr(ctx, "earlier", {}), " of --rates-from")):
        tp = (results.get("throughput") or {}).get("result") or {}
        if tp.get("gpu_e2e_img_per_s") and tp["settings"]["batch_size"] == s["train_batch"]:
            return images / tp["gpu_e2e_img_per_s"], f"throughput stage{where}: gpu pipeline end-to-end"
        st = (results.get("step") or {}).get("result") or {}
        if st.get("best_img_per_s") and st["batch_size"] == s["train_batch"] and st["image_size"] == 32:
            return images / st["best_img_per_s"], f"step stage{where}: fastest setting the training loop uses"
    return None, "no measured rate"


def compile_seconds(ctx) -> float | None:
    """Seconds an earlier stage of this run spent warming up the step the training loop runs
    (compilation included): the throughput stage's longest warm-up, else the step stage's row."""
    tp = (ctx.results.get("throughput") or {}).get("result") or {}
    warm = [r["warmup_s"] for r in tp.get("records", []) if r.get("warmup_s")]
    if warm and tp["settings"]["compile"] == ctx.train_compile:
        return max(warm)
    st = (ctx.results.get("step") or {}).get("result") or {}
    return next(
        (
            r["warmup_s"]
            for r in st.get("rows", [])
            if r.get("warmup_s")
            and r["compile"] == ctx.train_compile
            and r["mode"] == "default"
            and r["optimizer"] == "foreach"
        ),
        None,
    )


def measure_costs(ctx, need_epoch: bool) -> dict:
    """Seconds of what a training run spends besides its steps, each measured here with the
    training loop's own model, optimiser and precision: the first step (compilation and autotuning
    when compiled), a kNN feature pass (the backbone's eval forward, as fastssl.eval.features runs
    it), one checkpoint (the model + optimiser state, written and fsynced by fastssl.checkpoint) and
    one epoch of the linear probe's classifier on features of the probe's size. With need_epoch,
    also a few timed steps for the epoch time. When an earlier stage already compiled the step
    (compile_seconds), its warm-up is the compilation estimate and nothing is compiled here.
    Its own seconds are "calibration_s"; the plan is made from the time left after it."""
    from fastssl import checkpoint as ckpt
    from fastssl.eval.probe import grid, train_linear

    t0 = time.monotonic()
    s, dev = ctx.sizes, ctx.device
    known = None if need_epoch else compile_seconds(ctx)
    model = dataclasses.replace(step_bench.model_config(s["train_batch"], ctx.cfg.seed), stem=s["train_stem"])
    st = step_bench.TrainStep(
        model, dev, bf16=dev.type == "cuda", compile=ctx.train_compile and known is None
    )
    batch = step_bench.synthetic_batch(s["train_batch"], 32, dev, True, ctx.cfg.seed)
    with timing.Stopwatch(dev) as sw:
        st(batch)
    costs = {
        "first_step_s": sw.seconds if known is None else known,
        "first_step_source": "measured here" if known is None else "warm-up of an earlier stage",
    }
    if need_epoch:
        st(batch)
        with timing.Stopwatch(dev) as sw:
            for _ in range(3):
                st(batch)
        costs["epoch_s"] = s["train_images"] / (3 * s["train_batch"] / sw.seconds)
    backbone = st.method.backbone
    x = step_bench.synthetic_batch(s["feature_batch"] // 2, 32, dev, True, ctx.cfg.seed).view1
    backbone.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        dim = backbone(x).shape[1]
        with timing.Stopwatch(dev) as sw:
            for _ in range(2):
                backbone(x)
    backbone.train()
    costs["forward_img_per_s"] = 2 * x.shape[0] / sw.seconds
    path = os.path.join(ctx.work, "checkpoint-cost.pt")
    t = time.monotonic()
    ckpt.atomic_save({"model": st.method.state_dict(), "optimizer": st.optimizer.state_dict()}, path)
    costs["checkpoint_s"] = time.monotonic() - t
    os.remove(path)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(s["probe_images"], dim, generator=g).to(dev)
    labels = torch.randint(0, 10, (s["probe_images"],), generator=g).to(dev)
    lrs, wds = grid()
    with timing.Stopwatch(dev) as sw:
        train_linear(feats, labels, 10, lrs, wds, epochs=1)
    costs["probe_head_epoch_s"] = sw.seconds
    costs["calibration_s"] = time.monotonic() - t0
    return costs


def plan_epochs(ctx, seconds_left: float, costs: dict, probes=("linear", "transfer")) -> tuple[int, dict]:
    """Epochs whose whole run fits in `seconds_left` (the time left after measure_costs): per epoch
    its steps and up to two checkpoints (last.pt, and best.pt when the score improved); a kNN pass
    every knn_every epochs; the final test kNN (bank and test features again); compilation (the
    first step's measured seconds); the probes in `probes` (features of their train and test images,
    the classifier twice: grid, then final); 5% of the time left for what varies."""
    s = ctx.sizes
    per_epoch, source = epoch_seconds(ctx)
    if per_epoch is None:
        per_epoch, source = costs.get("epoch_s"), "calibration: timed steps of the training step"
    fwd = costs["forward_img_per_s"]
    knn_s = s["train_images"] / fwd
    probe_s = (s["probe_images"] + s["test_images"]) / fwd + 2 * s["probe_epochs"] * costs[
        "probe_head_epoch_s"
    ]
    # the last epoch's validation kNN, then bank and test features again for the test kNN
    fixed = {
        "compile_s": costs["first_step_s"],
        "final_knn_s": knn_s + (s["train_images"] + s["test_images"]) / fwd,
        "probes_s": len(probes) * probe_s,
        "setup_s": s["train_setup_s"],
        "margin_s": 0.05 * max(0.0, seconds_left),
    }
    plan = {
        "source": source,
        "epoch_s_estimate": per_epoch,
        "knn_s_estimate": knn_s,
        "seconds_left": seconds_left,
        **fixed,
        "max_epochs": ctx.max_epochs,
        "probes_planned": list(probes),
        "costs": costs,
    }
    if ctx.cfg.epochs:
        return ctx.cfg.epochs, {**plan, "source": "--epochs"}
    per = per_epoch + 2 * costs["checkpoint_s"] + knn_s / s["knn_every"]
    epochs = int(max(1, min(ctx.max_epochs, (seconds_left - sum(fixed.values())) // per)))
    return epochs, {
        **plan,
        "seconds_per_epoch_all_in": per,
        "planned_total_s": sum(fixed.values()) + epochs * per,
    }
