"""--logger tensorboard: the event files, read back by TensorBoard's own reader, hold what
metrics.jsonl holds, once per step after a resume too; bad --logger values and a missing
tensorboard package end in one line with exit code 2 before --out is touched."""

import os
import signal

import pytest
from tensorboard.backend.event_processing import event_accumulator

import pipelines
from fastssl import checkpoint as ckpt
from fastssl import loggers
from fastssl import train as train_module
from fastssl.config import parse
from fastssl.pretrain import PretrainConfig, main
from fastssl.train import train

TINY = [
    "--dataset",
    "cifar10-sample",
    "--stem",
    "imagenet",  # 7x7/2 conv + max-pool: 16x cheaper on a CPU
    "--subset",
    "64",
    "--batch-size",
    "32",
    "--proj-hidden-dim",
    "64",
    "--proj-dim",
    "32",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
    "--log-interval",
    "1",
    "--epochs",
    "2",
    "--knn-every",
    "1",
]


def run(out, *extra):
    argv = TINY + ["--out", str(out), *extra]
    return train(parse(PretrainConfig, argv), argv)


def scalars(out) -> dict:
    """{tag: [(step, value)]} of every event file under <out>/tensorboard, as TensorBoard reads them."""
    acc = event_accumulator.EventAccumulator(
        str(out / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def expected(out) -> dict:
    """The same {tag: [(step, value)]} computed from metrics.jsonl, the source of truth."""
    steps_per_epoch = 2  # 64 images, batch 32
    want = {}
    for r in ckpt.read_jsonl(out / "metrics.jsonl"):
        summary = r.get("summary", False)
        step = (r["epoch"] + 1) * steps_per_epoch if summary else r["step"]
        for k, v in r.items():
            if k not in ("epoch", "step", "summary"):
                tag = "epoch/" + k.removeprefix("epoch_") if summary else "step/" + k
                want.setdefault(tag, []).append((step, v))
    return want


def assert_same(got: dict, want: dict):
    assert got.keys() == want.keys()
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag  # each step once, in order
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32


def test_tensorboard_holds_the_metrics_records(tmp_path):
    out = tmp_path / "run"
    run(out, "--logger", "jsonl,tensorboard")
    got, want = scalars(out), expected(out)
    assert_same(got, want)
    assert len(got["step/loss"]) == 4 and len(got["epoch/loss"]) == 2
    for tag in ["step/lr", "step/img_per_s", "epoch/img_per_s", "epoch/data_wait_s"]:
        assert tag in got
    assert {"epoch/val_knn_top1", "epoch/val_knn_top5", "epoch/knn_top1", "epoch/knn_top5"} <= got.keys()


def test_jsonl_alone_writes_no_event_files(tmp_path):
    out = tmp_path / "run"
    run(out, "--epochs", "1", "--knn-every", "0", "--logger", "jsonl")
    assert not (out / "tensorboard").exists() and ckpt.read_jsonl(out / "metrics.jsonl")


class Crash(Exception):
    pass


def test_resume_drops_the_events_of_the_steps_trained_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = train_module.save_checkpoints

    def crash_at_epoch_1(run_, epoch, summary):  # epoch 1 logged in full, but its checkpoint never written
        if epoch == 1:
            raise Crash
        save(run_, epoch, summary)

    monkeypatch.setattr(train_module, "save_checkpoints", crash_at_epoch_1)
    with pytest.raises(Crash):
        run(out, "--knn-every", "0", "--logger", "tensorboard")
    assert [s for s, _ in scalars(out)["epoch/loss"]] == [2, 4]
    monkeypatch.setattr(train_module, "save_checkpoints", save)
    run(out, "--knn-every", "0", "--resume")  # --logger is kept from the saved config
    got, want = scalars(out), expected(out)
    assert_same(got, want)  # epoch 1's steps once, with the resumed run's values
    assert [s for s, _ in got["step/loss"]] == [1, 2, 3, 4]


def test_a_signal_closes_the_event_files_and_resume_continues_them(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_build = pipelines.build

    def build_that_signals(*a, **kw):  # SIGTERM during epoch 1's first step: it stops after that step
        loader = real_build(*a, **kw)
        set_epoch, epoch = loader.set_epoch, {}

        class Loader:
            def __len__(self):
                return len(loader)

            def set_epoch(self, e):
                epoch["now"] = e
                set_epoch(e)

            def __iter__(self):
                for i, batch in enumerate(loader):
                    if (epoch["now"], i) == (1, 0):
                        os.kill(os.getpid(), signal.SIGTERM)
                    yield batch

        return Loader()

    closed, close = [], loggers.TensorBoard.close

    def counted_close(self):
        closed.append(self)
        close(self)

    monkeypatch.setattr(pipelines, "build", build_that_signals)
    monkeypatch.setattr(loggers.TensorBoard, "close", counted_close)
    with pytest.raises(SystemExit) as e:
        run(out, "--knn-every", "0", "--logger", "tensorboard")
    assert e.value.code == 128 + signal.SIGTERM and len(closed) == 1
    assert [s for s, _ in scalars(out)["step/loss"]] == [1, 2, 3]  # step 3: mid-epoch, after the last flush
    monkeypatch.setattr(pipelines, "build", real_build)
    run(out, "--knn-every", "0", "--resume")
    assert_same(scalars(out), expected(out))


def test_unknown_logger_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(out), "--logger", "jsonl,wandb"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "'wandb'" in err and "tensorboard" in err
    assert not out.exists()


def test_missing_tensorboard_names_the_extra_and_leaves_out_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loggers, "SummaryWriter", None)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(out), "--logger", "tensorboard"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and ".[tensorboard]" in err
    assert not out.exists()
