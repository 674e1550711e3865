"""Render a run's tensorboard scalars (read back with tensorboard's EventAccumulator) as one PNG."""
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

logdir, out = sys.argv[1], sys.argv[2]
acc = EventAccumulator(logdir)
acc.Reload()
tags = acc.Tags()["scalars"]
want = [t for t in ("step/loss", "step/lr", "epoch/loss", "epoch/val_knn_top1", "epoch/val_online_top1") if t in tags]
want += [t for t in tags if t.startswith("epoch/") and "online" in t and t not in want]
fig, axes = plt.subplots(1, len(want), figsize=(3.2 * len(want), 2.8))
for ax, tag in zip(axes, want):
    ev = acc.Scalars(tag)
    ax.plot([e.step for e in ev], [e.value for e in ev], marker="o" if tag.startswith("epoch/") else None, ms=3)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
fig.tight_layout()
fig.savefig(out, dpi=90)
print("tags:", tags)
