"""Where the training loop's metric records go: `--logger jsonl,tensorboard`.

    python -m fastssl.pretrain --dataset cifar10-sample --epochs 3 --logger tensorboard --out runs/x
    tensorboard --logdir runs/x/tensorboard

Every record train.log writes goes to each logger of the run, on rank 0 only. `jsonl`
(metrics.jsonl) is always on and is the source of truth: resume cuts it back and reports read it;
the others mirror its records for watching a run live. A logger is a class with
`(out, steps_per_epoch, purge_step)`, `log(record)` and `close()`; LOGGERS names them.
"""

import contextlib
import json
import os

from .config import ConfigError

try:  # the optional `tensorboard` extra; torch.utils.tensorboard imports it
    from torch.utils.tensorboard import SummaryWriter
except ImportError:
    SummaryWriter = None

TENSORBOARD_HINT = 'TensorBoard is not installed: `pip install -e ".[tensorboard]"`'
SKIPPED = {"epoch", "step", "summary"}  # record fields that place a record, not measurements


class Jsonl:
    """metrics.jsonl, one JSON line per record. Opened per record: a kill loses at most the line
    being written, which read_jsonl drops."""

    def __init__(self, out: str, steps_per_epoch: int, purge_step: int | None):
        self.path = os.path.join(out, "metrics.jsonl")  # cut back on resume by train.write_run_dir

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoard:
    """Event files under <out>/tensorboard/, x = the global step. A log-window record's numbers go
    under `step/` (step/loss, step/lr, step/img_per_s, ...), an epoch summary's under `epoch/`
    without the `epoch_` prefix (epoch/loss, epoch/img_per_s, epoch/data_wait_s, epoch/val_knn_top1,
    ...), placed at the epoch's last step so that both share one axis."""

    def __init__(self, out: str, steps_per_epoch: int, purge_step: int | None):
        # purge_step: readers drop the events at and after it written before this resume, the steps
        # that are being trained again (metrics.jsonl is cut back to the same position)
        self.writer = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=purge_step)
        self.steps_per_epoch = steps_per_epoch

    def log(self, record: dict) -> None:
        summary = bool(record.get("summary"))
        step = (record["epoch"] + 1) * self.steps_per_epoch if summary else record["step"]
        for key, value in record.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = "epoch/" + key.removeprefix("epoch_") if summary else "step/" + key
            self.writer.add_scalar(tag, value, step)
        if summary:  # a reader sees each epoch as soon as it ends
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"jsonl": Jsonl, "tensorboard": TensorBoard}


def names(spec: str) -> list:
    """The loggers a comma-separated --logger names, jsonl first (always on), each once.
    ValueError for an unknown or empty name."""
    given = [n.strip() for n in spec.split(",")]
    bad = [n for n in given if n not in LOGGERS]
    if bad:
        raise ValueError(f"--logger: {', '.join(map(repr, bad))} not one of {', '.join(LOGGERS)}")
    return list(dict.fromkeys(["jsonl", *given]))


def require(spec: str) -> None:
    """ConfigError naming the pip extra when a named logger's package is missing (before any work)."""
    if "tensorboard" in names(spec) and SummaryWriter is None:
        raise ConfigError(f"--logger tensorboard: {TENSORBOARD_HINT}")


def open_loggers(spec: str, out: str, steps_per_epoch: int, resume_step: int) -> list:
    """The run's loggers, `resume_step` being the last step already logged (0: a new run)."""
    purge_step = resume_step + 1 if resume_step else None  # the first step logged again
    return [LOGGERS[n](out, steps_per_epoch, purge_step) for n in names(spec)]


@contextlib.contextmanager
def closing(opened: list):
    """Closes every logger in `opened` when the block ends, however it ends (a signal's SystemExit too)."""
    try:
        yield opened
    finally:
        for logger in opened:
            logger.close()
