"""PNG line plots and bar charts for evaluation outputs (matplotlib, Agg canvas, no display needed).

    from fastssl.eval.plots import figure
    figure("curves.png", [{"title": "linear classifier", "xlabel": "epoch", "ylabel": "top-1 (%)",
                           "series": [{"label": "test", "x": [1, 2], "y": [40.0, 45.0]}]}])

A figure is a row of panels; a panel is a list of series; a series is {"label", "x", "y"} plus
optional "err" (error bars: mean ± std over seeds), "style" (matplotlib format string) and "alpha".
Callers turn run files into these plain dicts, so this module knows nothing about runs.
`scatter` draws points coloured by class (a 2-D map of features).
"""

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LEGEND = 12  # more entries than this make a legend unreadable; the lines still show
INSIDE_LEGEND = 4  # up to this many entries the legend fits inside the axes


def figure(path: str, panels: list[dict], title: str | None = None, width: float = 5.5, height: float = 4.0):
    """Draw `panels` side by side and write a PNG to `path` atomically. Returns `path`."""
    # A Figure with its own Agg canvas, not pyplot: no global state, no GUI backend, thread-safe.
    # Beyond a few entries the legend goes below the axes (it would hide the lines): taller figure.
    entries = max(len([s for s in p["series"] if s.get("label")]) for p in panels)
    below = INSIDE_LEGEND < entries <= MAX_LEGEND
    fig = Figure(
        figsize=(width * len(panels), height + (0.2 * entries if below else 0)), layout="constrained"
    )
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for s in panel["series"]:
            kw = {"label": s.get("label"), "alpha": s.get("alpha", 1.0)}
            if s.get("err") is not None:
                ax.errorbar(s["x"], s["y"], yerr=s["err"], fmt=s.get("style", "o-"), capsize=3, **kw)
            else:
                ax.plot(s["x"], s["y"], s.get("style", "-"), **kw)
        ax.set_title(panel.get("title", ""))
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("logx"):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        labelled = [s for s in panel["series"] if s.get("label")]
        if 0 < len(labelled) <= INSIDE_LEGEND:
            ax.legend(fontsize="small")
        elif len(labelled) <= MAX_LEGEND:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bars(path: str, panel: dict, width: float = 7.0, height: float = 4.0):
    """Grouped bar chart: panel = {"title", "ylabel", "groups": [names], "series": [{"label",
    "values": [one per group, None = no bar], optional "err", "hatch", "alpha"}]}. Writes a PNG atomically."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = len(panel["series"])
    step = 0.8 / max(n, 1)
    for i, s in enumerate(panel["series"]):
        xs = [g + (i - (n - 1) / 2) * step for g in range(len(panel["groups"]))]
        keep = [j for j, v in enumerate(s["values"]) if v is not None]
        err = s.get("err")
        ax.bar(
            [xs[j] for j in keep],
            [s["values"][j] for j in keep],
            step * 0.95,
            label=s.get("label"),
            yerr=None if err is None else [err[j] or 0 for j in keep],
            capsize=3,
            hatch=s.get("hatch"),
            alpha=s.get("alpha", 1.0),
            edgecolor="black",
            linewidth=0.5,
        )
    ax.set_xticks(range(len(panel["groups"])), panel["groups"])
    ax.set_title(panel.get("title", ""))
    ax.set_ylabel(panel.get("ylabel", ""))
    ax.grid(axis="y", alpha=0.3)
    if n:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False, ncol=2)
    return _save(fig, path)


def scatter(path: str, xy, labels, classes, title: str = "", axes=("", ""), width=7.5, height=5.5):
    """Points xy (N, 2) coloured by labels (N,) ints indexing `classes` (-1: no label, grey), named in a
    legend when there are at most MAX_LEGEND classes. Writes a PNG atomically."""
    xy, labels = np.asarray(xy), np.asarray(labels)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(len(classes), 1)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    size = min(12.0, max(0.5, 6000 / max(len(xy), 1)))  # dots shrink as they crowd: 6 px² at 1,000 points
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(*xy[unlabelled].T, s=size, c="lightgrey", label="no label", rasterized=True)
    for c in np.unique(labels[~unlabelled]):
        colour = cmap(c % cmap.N if cmap.N < 256 else c / max(n - 1, 1))
        name = str(classes[c]) if c < len(classes) else str(c)
        ax.scatter(*xy[labels == c].T, s=size, color=colour, alpha=0.8, label=name, rasterized=True)
    ax.set_title(title)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.grid(alpha=0.3)
    if n <= MAX_LEGEND:
        ax.legend(
            fontsize="small",
            markerscale=max(1.0, 24 / size) ** 0.5,
            loc="center left",
            bbox_to_anchor=(1, 0.5),
        )
    return _save(fig, path)


def _save(fig, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
