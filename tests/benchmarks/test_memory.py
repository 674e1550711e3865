"""benchmarks.memory: its --quick run writes the table with both sizes and the RSS check; the check,
the generated folder and the RSS meters are compared with answers computed here independently."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
from PIL import Image

from benchmarks import common, memory


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_quick_run_reports_both_sizes_and_the_rss_check(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nvidia.dali")
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    out = tmp_path / "out"
    memory.main(["--quick", "--pipelines", "dali", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    result = json.loads((out / "memory.json").read_text())
    assert result["environment"]["command"].startswith("python -m benchmarks.memory --quick")
    for ext in ("csv", "md", "png"):
        assert (out / f"memory.{ext}").stat().st_size > 0
    assert not list(out.glob("*.tmp-*"))
    assert [d["images"] for d in result["datasets"]] == [120, 240]
    recs = result["records"]
    assert [(r["pipeline"], r["view"], r["images"], r["status"]) for r in recs] == [
        ("dali", 48, 120, "ok"),
        ("dali", 48, 240, "ok"),
    ]
    for r in recs:
        assert r["stream_images"] == r["images"]  # the eval pass read every image once
        for key in (
            "peak_rss_mib",
            "rss_before_loading_mib",
            "stream_img_per_s",
            "sampled_tree_peak_rss_mib",
        ):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert (
            0 < r["views_img_per_s"]["min"] <= r["views_img_per_s"]["median"] <= r["views_img_per_s"]["max"]
        )
        assert r["rss_before_loading_mib"] <= r["peak_rss_views_mib"] <= r["peak_rss_mib"]
    (check,) = result["checks"]
    lo, hi = recs[0]["peak_rss_mib"], recs[1]["peak_rss_mib"]
    assert check["peak_rss_mib"] == [lo, hi] and check["ratio"] == pytest.approx(hi / lo)
    assert check["status"] == ("pass" if hi - lo <= 64 else "fail")
    md = (out / "memory.md").read_text()
    assert "| dali | 48 | 120 / 240 |" in md and check["status"] in md
    assert capsys.readouterr().out.rstrip().splitlines()[-1] in md  # the table is printed last


def test_check_compares_the_largest_with_the_smallest_size():
    recs = [
        {"pipeline": "ffcv", "view": 96, "images": n, "status": "ok", "peak_rss_mib": rss}
        for n, rss in ((1000, 1000.0), (4000, 1140.0), (2000, 1300.0))
    ]
    recs += [
        {"pipeline": "dali", "view": 96, "images": 1000, "status": "ok", "peak_rss_mib": 900.0},
        {"pipeline": "dali", "view": 96, "images": 4000, "status": "failed: x"},
    ]
    data = [{"images": n, "stored_bytes": {"ffcv": n * 2**20, "dali": n}} for n in (1000, 2000, 4000)]
    ffcv, dali = memory.checks(recs, data, margin_mib=150)
    assert ffcv["images"] == [1000, 4000] and ffcv["ratio"] == pytest.approx(1.14)
    assert ffcv["growth_mib"] == pytest.approx(140) and ffcv["status"] == "pass"
    assert ffcv["stored_growth_mib"] == pytest.approx(3000) and ffcv["decoded_growth_mib"] == pytest.approx(
        3000 * 96 * 96 * 3 / 2**20
    )
    assert dali["status"].startswith("not measured")
    assert memory.checks(recs[:2], data, margin_mib=100)[0]["status"] == "fail"  # 140 MiB > 100 MiB


def test_generated_folder_prefix_sizes_and_compressibility(tmp_path):
    small = memory.make_folder(str(tmp_path / "small"), 30, sides=(40, 120), seed=5, png_every=0)
    big = memory.make_folder(str(tmp_path / "big"), 60, sides=(40, 120), seed=5, png_every=0)
    names = {c: sorted(os.listdir(os.path.join(small, "train", c))) for c in memory.CLASSES}
    assert [len(v) for v in names.values()] == [10, 10, 10]  # class i % 3: balanced
    pixels = encoded = 0
    shapes = set()
    for c, files in names.items():
        for f in files:  # image i depends on (seed, i) only: an n-folder is a prefix of a larger one
            assert digest(os.path.join(small, "train", c, f)) == digest(os.path.join(big, "train", c, f))
            img = Image.open(os.path.join(small, "train", c, f))
            assert img.format == "JPEG" and all(40 <= s <= 120 for s in img.size)
            shapes.add(img.size)
            pixels += img.size[0] * img.size[1]
            encoded += os.path.getsize(os.path.join(small, "train", c, f))
    assert len(shapes) > 20  # mixed sizes
    # Not trivially compressible: a smooth field alone encodes to ~0.05 bytes/pixel at quality 90.
    assert encoded / pixels > 0.2


def test_rss_meters_see_memory_touched_by_the_process_and_its_children():
    # Independent answers: 256 MiB written by this process raise its high-water mark by >= 256 MiB;
    # a child holding 300 MiB shows in the sampled tree peak (and not in this process's own peak).
    code = """
import json, subprocess, sys, time
import numpy as np
from benchmarks.memory import TreeSampler, peak_rss_mib
before = peak_rss_mib()
a = np.ones(256 * 2**20, np.uint8)
own = peak_rss_mib() - before
del a
sampler = TreeSampler(every=0.05)
child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"])
child.wait()
print(json.dumps({"own": own, "tree": sampler.close(), "self": peak_rss_mib()}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=common.REPO, check=True
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["own"] >= 255
    assert got["tree"] >= got["self"] - 256 + 300 - 10  # the child's 300 MiB on top of this process's RSS


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "100"], "two different dataset sizes"),
        (["--pipelines", "ffcv,torchvision"], "unknown torchvision"),
        (["--repeats", "2"], "--repeats must be >= 5"),
        (["--sizes", "10,20"], "the smallest size must hold"),
        (["--margin-mib", "0"], "--margin-mib must be positive"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        memory.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_results_and_a_file_as_work_dir_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "memory.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        memory.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "memory.json").read_text() == "{}" and not (tmp_path / "work").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        memory.main(["--quick", "--out", str(tmp_path / "out2"), "--work-dir", str(tmp_path / "file")])
    assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err
