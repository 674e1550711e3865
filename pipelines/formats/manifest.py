"""The manifest a converted dataset carries: what it holds, where it came from, and every file's sha256.

A .beton's manifest is the file beside it (`<out>.manifest.json`); a DALI shard directory holds its
own (`manifest.json`), so one rename publishes both. `formats/writer.py` writes it; `checked` is the
one reader every opening goes through.
"""

import json
import os

from ..errors import DataError

# 2: split, labels_sha256, mean/std and the image-size policy are recorded (converted.py needs them).
# "labels" (arrays.label_kind: "classes", "none", "partial") was added within version 2: a manifest
# without it was written before unlabelled folders could be converted, so its images have classes.
MANIFEST_VERSION = 2


LIBRARIES = {"ffcv": "ffcv", "dali": "nvidia-dali"}


MANIFEST = "manifest.json"


def manifest_path(to: str, out: str) -> str:
    """Where the manifest of output `out` lives: beside a single-file output, inside a directory one."""
    return os.path.join(out, MANIFEST) if to == "dali" else out + ".manifest.json"


def load_manifest(to: str, out) -> dict:
    """The manifest written by convert for output `out` (DataError if missing or unreadable)."""
    path = manifest_path(to, os.fspath(out))
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest (was {out} written by python -m fastssl.convert?)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e})") from None


def checked(fmt, path) -> dict:
    """The manifest of `path` in format `fmt`, of this version and with every key an opening needs."""
    m = load_manifest(fmt, path)
    where = manifest_path(fmt, path)
    if not isinstance(m, dict) or m.get("manifest_version") != MANIFEST_VERSION:
        got = m.get("manifest_version", 1) if isinstance(m, dict) else "?"
        raise DataError(
            f"{where}: manifest version {got}, this fastssl reads version {MANIFEST_VERSION} "
            "(convert the data again with python -m fastssl.convert)"
        )
    need = {"format", "count", "classes", "split", "labels_sha256", "mean", "std", "image_policy", "sha256"}
    if not need <= set(m) or m["format"] != fmt:
        raise DataError(
            f"{where}: not a {fmt} manifest (missing {', '.join(sorted(need - set(m))) or 'format'})"
        )
    m.setdefault("labels", "classes")
    return m
