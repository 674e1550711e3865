"""Terminal output of the trainer: a rich progress bar (epoch, loss, img/s, ETA) and a summary table.

Kept apart from the loop so that the loop reads as the algorithm. Everything here runs on the
host with numbers the loop already synchronised; nothing here touches the device.
"""

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

console = Console(stderr=True)


class Progress:
    def __init__(self, epochs: int, steps_per_epoch: int, start_epoch: int = 0, enabled: bool = True):
        self.epochs, self.enabled = epochs, enabled
        self.bar = RichProgress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task(
            "train",
            total=epochs * steps_per_epoch,
            completed=start_epoch * steps_per_epoch,
            epoch=start_epoch + 1,
            epochs=epochs,
            loss="-",
            rate="-",
        )

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def advance(self):
        self.bar.advance(self.task)

    def update(self, epoch: int, loss: float, rate: float):
        self.bar.update(self.task, epoch=epoch + 1, loss=f"{loss:.4f}", rate=f"{rate:,.0f}")

    def note(self, text: str):
        if self.enabled:
            self.bar.console.print(text)


def summary_table(result: dict, cfg) -> None:
    table = Table(title=f"fastssl {cfg.method} on {cfg.dataset}", show_header=False)
    rows = [
        ("run directory", result["out"]),
        ("epochs run", str(result["epochs_run"])),
        ("final loss", _fmt(result["final_loss"], ".4f")),
        ("kNN top-1 / top-5 (%)", f"{_fmt(result['knn_top1'], '.2f')} / {_fmt(result['knn_top5'], '.2f')}"),
        ("mean images/s", _fmt(result["img_per_s"], ",.0f")),
        ("wall time (s)", _fmt(result["wall_time_s"], ".1f")),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console(file=sys.stdout).print(table)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)
