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
from pipelines import convert, dali_format, datasets  # noqa: E402

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
    cmd = [sys.executable, "-m", "fastssl.convert", "--dataset", "cifar10", "--data-dir", cifar_root,
           "--split", "test", "--to", "dali", "--out", str(out), "--workers", "2"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote 10000 images (10 classes, 32x32, raw) to {out}"), lines
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["source"] == {"dataset": "cifar10", "split": "test", "data_dir": cifar_root, "image_size": None}
    assert manifest["encoding"] == "raw" and manifest["count"] == 10000
    images, labels = dali_format.read_all(out, workers=2)
    data = datasets.load("cifar10", "test", data_dir=cifar_root)
    np.testing.assert_array_equal(images, data.images)
    np.testing.assert_array_equal(labels, data.labels)


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
    small = datasets.ArrayDataset(images=data.images[:50], labels=data.labels[:50], classes=data.classes,
                                  name="first50", mean=data.mean, std=data.std)
    convert.convert(small, "dali", out, progress=False)
    before = {f: convert.sha256(os.path.join(out, f)) for f in os.listdir(out)}
    argv = ["--dataset", "cifar10", "--data-dir", cifar_root, "--split", "test", "--to", "dali", "--out", out]
    assert "already exists" in fails(argv, capsys)
    assert {f: convert.sha256(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert cli.main(argv + ["--force", "--encoding", "jpg", "--quality", "95"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "jpg" in summary[0] and "dB PSNR" in summary[0]
    assert dali_format.check(out)["count"] == 10000 and dali_format.check(out)["encoding"] == "jpg"
