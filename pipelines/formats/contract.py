"""What every on-disk format module provides, and which modules those are.

A format module (`formats/ffcv.py`, `formats/dali.py`) is imported only when its format is asked
for, so a missing optional library (FFCV, DALI) costs nothing until then.
"""

import importlib
from typing import Protocol

import numpy as np

from ..errors import DataError

# format name -> module; the name is also the manifest's "format" and `fastssl.convert --to`.
FORMATS = {"ffcv": "pipelines.formats.ffcv", "dali": "pipelines.formats.dali"}


class Format(Protocol):
    """The contract writer.py and converted.py rely on."""

    EXTRA: str  # the pip extra that installs the library

    def VERSION(self) -> str: ...  # the library's version; DataError naming EXTRA when it is missing

    def require(self) -> None: ...  # DataError naming EXTRA when the library cannot be imported

    def write(self, data, out, **opts) -> None: ...  # an ArrayDataset or ImageFiles, to `out` (not atomic)

    def verify(self, out, data, n_check: int) -> dict: ...  # read back with the library's reader

    def check(self, out) -> dict: ...  # structure: count, height, width; DataError naming the file

    def labels(self, out, info: dict) -> np.ndarray: ...  # int64, without decoding an image

    def read(self, out, indices=None) -> tuple: ...  # (uint8 images, int64 labels) of `indices`


def module(name: str) -> Format:
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])
