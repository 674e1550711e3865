"""The PNG figures of fastssl.eval.plots: written atomically, for any number of classes."""

import numpy as np
import pytest

from fastssl.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("classes", [3, 30])  # a legend, and too many classes for one
def test_scatter_writes_a_png(tmp_path, classes):
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, classes, 200)  # -1: no label, drawn grey
    path = tmp_path / "map.png"
    names = [f"class {c}" for c in range(classes)]
    assert plots.scatter(str(path), rng.normal(size=(200, 2)), labels, names, "t", ("a", "b")) == str(path)
    assert path.read_bytes()[:8] == PNG and [p.name for p in tmp_path.iterdir()] == ["map.png"]
