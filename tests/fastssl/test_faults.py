"""Preemption and damage: a signal saves the exact position, kill -9 at random moments loses
nothing, a second writer is refused, and every damaged run file ends in one line and exit 2
with the run directory left exactly as it was."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import pipelines
from fastssl import checkpoint as ckpt
from fastssl.lock import RunLock
from fastssl.pretrain import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 64 images / batch 16 = 4 steps per epoch; a record per step so that losses compare step by step.
TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "64",
    "--batch-size",
    "16",
    "--stem",
    "imagenet",
    "--device",
    "cpu",
    "--no-progress",
    "--knn-every",
    "0",
    "--proj-hidden-dim",
    "64",
    "--proj-dim",
    "32",
    "--no-compile",
    "--log-interval",
    "1",
    "--epochs",
    "2",
]


def losses(out):
    return [r["loss"] for r in ckpt.read_jsonl(os.path.join(out, "metrics.jsonl")) if "loss" in r]


def snapshot(out):
    """Every file's bytes except the lock: what "nothing touched" compares."""
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            if n != ".lock":
                p = os.path.join(root, n)
                files[os.path.relpath(p, out)] = open(p, "rb").read()
    return files


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: the reference every interrupted one must match bit for bit."""
    out = str(tmp_path_factory.mktemp("faults") / "straight")
    assert main(TINY + ["--out", out]) == 0
    return out


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """A resumable run directory: epoch 1 of 2 done."""
    out = str(tmp_path_factory.mktemp("faults") / "half")
    assert main([a if a != "2" else "1" for a in TINY] + ["--out", out]) == 0
    state = ckpt.load(os.path.join(out, "last.pt"))
    state["config"]["epochs"] = 2  # as if a 2-epoch run had been stopped after its first epoch
    ckpt.atomic_save(state, os.path.join(out, "last.pt"))
    os.remove(os.path.join(out, "summary.json"))
    return out


def signal_at(monkeypatch, epoch, step, signum=signal.SIGTERM):
    """Make the loader deliver `signum` to this process while it hands out batch `step` of `epoch`."""
    real_build = pipelines.build

    def build(*a, **kw):
        loader = real_build(*a, **kw)
        real_iter, real_set_epoch, seen = loader.__iter__, loader.set_epoch, {}

        def set_epoch(e):
            seen["epoch"] = e
            real_set_epoch(e)

        class Loader:
            def __len__(self):
                return len(loader)

            def set_epoch(self, e):
                set_epoch(e)

            def __iter__(self):
                for i, batch in enumerate(real_iter()):
                    if seen.get("epoch") == epoch and i == step:
                        os.kill(os.getpid(), signum)
                    yield batch

        return Loader()

    monkeypatch.setattr(pipelines, "build", build)
    return real_build


def test_sigterm_mid_epoch_saves_position_and_resumes_bit_identical(tmp_path, straight, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real_build = signal_at(monkeypatch, epoch=1, step=1)
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 128 + signal.SIGTERM
    assert len(err) == 1 and "SIGTERM at epoch 2/2, step 2/4" in err[0] and "--resume" in err[0]
    state = ckpt.load(os.path.join(out, "last.pt"))
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1 and state["position"]["step"] == 2
    assert len(losses(out)) == 6  # 4 of epoch 1, 2 of epoch 2
    monkeypatch.setattr(pipelines, "build", real_build)
    assert main(["--out", out, "--resume"]) == 0
    assert losses(out) == losses(straight)  # bit-identical floats
    a, b = ckpt.load(os.path.join(straight, "last.pt")), ckpt.load(os.path.join(out, "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    ref = json.loads(open(os.path.join(straight, "summary.json")).read())
    assert summary["epochs_run"] == 2 and summary["final_loss"] == ref["final_loss"]


def test_signal_at_the_last_step_stops_at_the_epoch_end(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    signal_at(monkeypatch, epoch=0, step=3, signum=signal.SIGUSR1)
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", out])
    assert e.value.code == 128 + signal.SIGUSR1 and "end of epoch 1/2" in capsys.readouterr().err
    state = ckpt.load(os.path.join(out, "last.pt"))
    assert state["epoch"] == 0 and "position" not in state


def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    """A subprocess checkpointing every step is killed at seeded random times (during steps and
    during checkpoint writes alike) and resumed until it finishes."""
    out, rng, kills = str(tmp_path / "run"), random.Random(13), 0
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("FASTSSL_DATA", None)
    cmd = [sys.executable, "-m", "fastssl.pretrain", *TINY, "--save-every-steps", "1", "--out", out]
    # The reference runs uninterrupted in a fresh process too: a process that has run other tests
    # (libraries loaded, thread pools made) may round the same float sums differently.
    straight = str(tmp_path / "straight")
    subprocess.run(
        cmd[:-4] + ["--out", straight], cwd=REPO, env=env, check=True, capture_output=True, timeout=120
    )
    for attempt in range(6):
        # Killed before its first checkpoint, a run has nothing to resume: start it again.
        resume = ["--resume"] if os.path.isfile(os.path.join(out, "last.pt")) else ["--overwrite"]
        p = subprocess.Popen(cmd + resume, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        if attempt < 3:
            time.sleep(rng.uniform(3.0, 7.0))  # interpreter start takes ~3 s, each step ~0.1 s
            if p.poll() is None:
                p.kill()
                kills += 1
        _, err = p.communicate(timeout=120)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err
    assert p.returncode == 0 and kills >= 1
    assert losses(out) == losses(straight)
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert (
        summary["epochs_run"] == 2
        and summary["final_loss"] == json.load(open(os.path.join(straight, "summary.json")))["final_loss"]
    )
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_second_writer_is_refused_and_dead_holders_never_block(tmp_path, capsys):
    out = str(tmp_path / "run")
    with RunLock(out):
        with pytest.raises(SystemExit) as e:
            main(TINY + ["--out", out, "--overwrite"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and f"pid {os.getpid()}" in err[0]
    # A holder killed with -9 leaves its lock file behind, but the kernel has dropped the lock.
    code = f"from fastssl.lock import RunLock; RunLock({out!r}).acquire(); print('held', flush=True); import time; time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(SystemExit):
        main(TINY + ["--out", out, "--overwrite"])
    assert f"pid {p.pid}" in capsys.readouterr().err
    p.kill()
    p.wait(timeout=10)
    assert os.path.isfile(os.path.join(out, ".lock"))
    assert main(TINY + ["--out", out, "--overwrite", "--epochs", "1"]) == 0


def _state_dict_only(path):
    torch.save(ckpt.load(path)["model"], path)


def _foreign_dict(path):
    torch.save({"weights": torch.ones(3), "step": 7}, path)


def _no_optimizer(path):
    state = ckpt.load(path)
    state["optimizer"] = {}
    torch.save(state, path)


def _config_mismatch(path):
    state = ckpt.load(path)
    state["config"]["proj_dim"] = 16
    torch.save(state, path)


def _truncated(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _binary_lines(path):
    lines = open(path, "rb").read().split(b"\n")
    lines.insert(1, bytes(range(256)))
    open(path, "wb").write(b"\n".join(lines))


def _directory(path):
    os.remove(path)
    os.mkdir(path)


@pytest.mark.parametrize(
    "name, damage, words",
    [
        ("last.pt", _state_dict_only, "not a fastssl training checkpoint"),
        ("last.pt", _foreign_dict, "not a fastssl training checkpoint"),
        ("last.pt", _no_optimizer, "no optimizer state"),
        ("last.pt", _config_mismatch, "does not match its saved config"),
        ("last.pt", _truncated, "cannot read checkpoint"),
        ("last.pt", _directory, "no checkpoint"),
        ("metrics.jsonl", _binary_lines, "line 2 is not a JSON record"),
        ("metrics.jsonl", _directory, "not a regular file"),
        ("config.json", _directory, "not a regular file"),
    ],
)
def test_damaged_run_files_are_refused_untouched(tmp_path, half, capsys, name, damage, words):
    out = str(tmp_path / "run")
    shutil.copytree(half, out)
    damage(os.path.join(out, name))
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        main(["--out", out, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and name in err[0] and words in err[0], err
    assert snapshot(out) == before


def test_metrics_cut_mid_line_drops_the_partial_record(tmp_path, half, straight):
    out = str(tmp_path / "run")
    shutil.copytree(half, out)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 1, "step": 5, "lo')  # an append that a kill interrupted
    assert main(["--out", out, "--resume"]) == 0
    assert losses(out) == losses(straight)


def test_moved_run_resumes_and_finished_run_is_left_alone(tmp_path, half, straight, capsys):
    out = str(tmp_path / "moved")
    shutil.copytree(half, out)  # a copy under another name: `out` is where it is now
    assert main(["--out", out, "--resume"]) == 0
    assert losses(out) == losses(straight)
    assert json.load(open(os.path.join(out, "config.json")))["config"]["out"] == out
    capsys.readouterr()
    before = snapshot(out)
    assert main(["--out", out, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(out) == before


def test_non_finite_loss_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    real_build = pipelines.build

    def build(*a, **kw):
        loader = real_build(*a, **kw)
        real_iter, real_set_epoch = loader.__iter__, loader.set_epoch
        epoch = {}

        class Loader:
            def __len__(self):
                return len(loader)

            def set_epoch(self, e):
                epoch["e"] = e
                real_set_epoch(e)

            def __iter__(self):
                for i, b in enumerate(real_iter()):
                    if epoch["e"] == 1 and i == 2:
                        b.view1 = b.view1 * float("nan")
                    yield b

        return Loader()

    monkeypatch.setattr(pipelines, "build", build)
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 3 and len(err) == 1 and "epoch 2/2, step 3/4" in err[0]
    state = ckpt.load(os.path.join(out, "last.pt"))
    assert state["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )


def test_dead_temporaries_are_removed_live_ones_kept(tmp_path, half):
    out = str(tmp_path / "run")
    shutil.copytree(half, out)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (dead.pid, live.pid):
            open(os.path.join(out, f"last.pt.tmp-{pid}"), "wb").write(b"partial")
        assert main(["--out", out, "--resume"]) == 0
        left = sorted(n for n in os.listdir(out) if ".tmp-" in n)
        assert left == [f"last.pt.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_disk_full_on_a_checkpoint_write_is_one_line(tmp_path, monkeypatch, capsys):
    """ENOSPC injected into the write path: one line naming the file, exit 2, no temporary."""
    out = str(tmp_path / "run")
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 3:  # config.json and metrics.jsonl succeed, the first checkpoint fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", out])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "last.pt" in err[0] and "No space left" in err[0]
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_disk_full_on_a_real_small_filesystem(tmp_path, capsys):
    """The same through a 1 MiB tmpfs, where mounting is allowed (root in a container)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
            "test_disk_full_on_a_checkpoint_write_is_one_line covers the same path"
        )
    try:
        out = str(mnt / "run")
        with pytest.raises(SystemExit) as e:
            main(TINY + ["--out", out, "--epochs", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and "No space left" in err[0]
        assert not [n for n in os.listdir(out) if ".tmp-" in n]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
