"""`python -m fastssl.convert`: a real conversion prints one summary line and leaves a verified output
with its manifest; user errors (bad flag, unknown dataset, missing data, existing output) are one
`error:` line on stderr and exit code 2, and never touch an existing output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
from fastssl import convert as cli  # noqa: E402
from pipelines import datasets, files  # noqa: E402
from pipelines.data import arrays
from pipelines.formats import dali as dali_format
from pipelines.formats import writer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fails(argv, capsys):
    """Run the command in-process; return its single stderr line (asserting exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_converts_cifar10_test_split_to_dali(cifar_root, tmp_path):
    out = tmp_path / "c10_test"
    cmd = [
        sys.executable,
        "-m",
        "fastssl.convert",
        "--dataset",
        "cifar10",
        "--data-dir",
        cifar_root,
        "--split",
        "test",
        "--to",
        "dali",
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote 10000 images (10 classes, 32x32, raw) to {out}"), (
        lines
    )
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["source"] == {
        "dataset": "cifar10",
        "split": "test",
        "data_dir": cifar_root,
        "image_size": None,
    }
    assert manifest["encoding"] == "raw" and manifest["count"] == 10000
    assert manifest["order"] == {"shuffled": True, "seed": 0}  # the default: a seeded permutation
    images, labels = dali_format.read_all(out, workers=2)
    data = datasets.load("cifar10", "test", data_dir=cifar_root)
    order = np.random.default_rng(0).permutation(10000)  # stored sample j is source sample order[j]
    np.testing.assert_array_equal(images, data.images[order])
    np.testing.assert_array_equal(labels, data.labels[order])


def test_user_errors_are_one_line_and_exit_2(cifar_root, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert "--frobnicate" in fails(["--frobnicate", "3"], capsys)
    assert "mnist" in fails(["--dataset", "mnist", "--to", "dali", "--out", out], capsys)
    assert "parquet" in fails(["--to", "parquet", "--out", out], capsys)
    assert "--to and --out are required" in fails(["--dataset", "cifar10"], capsys)
    assert "quality" in fails(["--to", "dali", "--out", out, "--quality", "0"], capsys)
    assert "expected an integer" in fails(["--to", "dali", "--out", out, "--workers", "many"], capsys)
    assert "imagefolder only" in fails(["--to", "dali", "--out", out, "--image-size", "64"], capsys)
    missing = str(tmp_path / "no_such_dir")
    line = fails(["--dataset", "imagefolder", "--data-dir", missing, "--to", "dali", "--out", out], capsys)
    assert "no_such_dir" in line, line
    # A CIFAR folder that exists but is empty (the loader downloads only into an absent one).
    empty = tmp_path / "empty"
    (empty / "cifar-10-batches-py").mkdir(parents=True)
    line = fails(["--dataset", "cifar10", "--data-dir", str(empty), "--to", "dali", "--out", out], capsys)
    assert "cifar-10-batches-py" in line or "data_batch" in line, line
    assert not os.path.exists(out)


def test_existing_output_needs_force(cifar_root, tmp_path, capsys):
    data = datasets.load("cifar10", "test", data_dir=cifar_root)
    out = str(tmp_path / "existing")
    small = arrays.ArrayDataset(
        images=data.images[:50],
        labels=data.labels[:50],
        classes=data.classes,
        name="first50",
        mean=data.mean,
        std=data.std,
    )
    writer.convert(small, "dali", out, progress=False)
    before = {f: files.sha256(os.path.join(out, f)) for f in os.listdir(out)}
    argv = ["--dataset", "cifar10", "--data-dir", cifar_root, "--split", "test", "--to", "dali", "--out", out]
    assert "already exists" in fails(argv, capsys)
    assert {f: files.sha256(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert cli.main(argv + ["--force", "--encoding", "jpg", "--quality", "95"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "jpg" in summary[0] and "dB PSNR" in summary[0]
    assert dali_format.check(out)["count"] == 10000 and dali_format.check(out)["encoding"] == "jpg"


def small_disk(tmp_path, size="1m"):
    """A tmpfs of `size` (root in a container may mount one); skips with the reason otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
            "the injected-ENOSPC tests cover the same path"
        )
    return mnt


@pytest.mark.parametrize("to, name", [("dali", "shards"), ("ffcv", "c10.beton")])
def test_disk_full_is_one_line_and_leaves_no_temporary(tmp_path, capsys, monkeypatch, to, name):
    if to == "ffcv":
        pytest.importorskip("ffcv")
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    mnt = small_disk(tmp_path)
    try:
        err = fails(
            ["--dataset", "cifar10-sample", "--to", to, "--out", str(mnt / name), "--workers", "2"], capsys
        )
        assert "No space left on device" in err and name in err
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_injected_enospc_in_dali_shards(tmp_path, capsys, monkeypatch):
    """The same path without a small filesystem: the shard writer's open() fails with ENOSPC."""
    import builtins
    import errno

    real_open = builtins.open

    def full_open(path, mode="r", *a, **kw):
        if "w" in mode and ".tar" in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", full_open)
    err = fails(["--dataset", "cifar10-sample", "--to", "dali", "--out", str(tmp_path / "shards")], capsys)
    assert "No space left on device" in err
    assert os.listdir(tmp_path) == []


def test_a_writer_worker_killed_by_a_signal_does_not_hang(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ffcv")
    from pipelines.formats import ffcv as ffcv_format

    monkeypatch.setattr(ffcv_format, "STALL_S", 1.0)
    real_getitem, parent = ffcv_format._Samples.__getitem__, os.getpid()

    def getitem(self, i):
        if i == 1500 and os.getppid() != parent:  # in a writer worker, not the writer's host
            os.kill(os.getpid(), 9)
        return real_getitem(self, i)

    monkeypatch.setattr(ffcv_format._Samples, "__getitem__", getitem)
    err = fails(
        ["--dataset", "cifar10-sample", "--to", "ffcv", "--out", str(tmp_path / "c.beton"), "--workers", "2"],
        capsys,
    )
    assert "c.beton" in err and "died" in err
    assert os.listdir(tmp_path) == []


def test_unwritable_out_and_dead_temporaries(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = fails(
        ["--dataset", "cifar10-sample", "--to", "dali", "--out", str(tmp_path / "file" / "sub" / "shards")],
        capsys,
    )
    assert "cannot create" in err
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"old.beton.tmp-{dead.pid}").write_bytes(b"partial")
    (tmp_path / f"keep.tmp-{os.getpid()}").write_bytes(b"ours")
    cli.main(["--dataset", "cifar10-sample", "--to", "dali", "--out", str(tmp_path / "shards")])
    assert sorted(os.listdir(tmp_path)) == ["file", f"keep.tmp-{os.getpid()}", "shards"]
