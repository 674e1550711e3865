"""An image folder read one file at a time, each image at its own size: the converters' streaming input.

    from pipelines import imagefiles
    files = imagefiles.scan("photos", "train", max_resolution=512)   # paths + labels, nothing decoded
    image = files.image(7)                                             # uint8 (h, w, 3), longer side <= 512
    files.mean, files.std                                              # after files.measure(workers=8)

Layout as `datasets.read_imagefolder` reads it: root/<class>/**/*.{jpg,jpeg,png}, optionally under
root/train and root/test (the split picks the subfolder; test classes must be training classes).
Every image is decoded with PIL (so CMYK, greyscale, PNG and progressive JPEG all come out RGB)
and, when its longer side exceeds max_resolution, shrunk with an area average (PIL BOX, the DALI
writer's resizer) keeping its aspect ratio. The writers re-encode these pixels as baseline JPEG,
which every decoder (nvJPEG, libjpeg-turbo) reads. An unreadable file is a DataError naming it,
raised while converting, before anything is published.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import datasets
from .errors import DataError


@dataclass(eq=False)
class ImageFiles:
    """Image paths and labels of one split; pixels are decoded on demand by `image(i)`."""

    paths: list
    labels: np.ndarray
    classes: list
    split: str
    root: str
    max_resolution: int | None = None
    name: str = "imagefolder"
    mean: tuple | None = None  # per-channel statistics of these images, set by measure()
    std: tuple | None = None
    sizes: np.ndarray = field(default=None, repr=False)  # (N, 2) stored (h, w), set by measure()

    def __len__(self):
        return len(self.paths)

    def image(self, i) -> np.ndarray:
        """Image i as stored: uint8 (h, w, 3), longer side capped at max_resolution."""
        from PIL import Image

        from .dali_format import resized_shape

        img = datasets._open_rgb(self.paths[i], None)
        h, w = resized_shape(img.shape[0], img.shape[1], self.max_resolution)
        if (h, w) != img.shape[:2]:
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX))
        return np.ascontiguousarray(img)

    def __getitem__(self, i):  # FFCV's writer indexes its dataset: sample i -> (image, label)
        return self.image(i), int(self.labels[i])

    def measure(self, workers=None, on_progress=None) -> "ImageFiles":
        """Decode every image once: per-channel mean and population std (exact, via 256-bin
        histograms) and the stored sizes. Threads: PIL decodes without holding the GIL."""
        hist = np.zeros((3, 256), np.int64)
        sizes = np.empty((len(self), 2), np.int64)

        def one(i):
            img = self.image(i)
            return i, img.shape[:2], [np.bincount(img[..., c].ravel(), minlength=256) for c in range(3)]

        with ThreadPoolExecutor(max(1, int(workers or os.cpu_count() or 1))) as pool:
            for i, size, counts in pool.map(one, range(len(self)), chunksize=16):
                sizes[i] = size
                hist += np.stack(counts)
                if on_progress is not None:
                    on_progress(1)
        levels = np.arange(256, dtype=np.float64) / 255
        total = hist.sum(1).astype(np.float64)
        mean = hist @ levels / total
        std = np.sqrt((hist * (levels[None] - mean[:, None]) ** 2).sum(1) / total)
        self.mean, self.std, self.sizes = tuple(map(float, mean)), tuple(map(float, std)), sizes
        return self


def scan(root, split="train", max_resolution=None) -> ImageFiles:
    """The files of `split` under `root` (see the module docstring); DataError naming what is wrong."""
    if split not in datasets.SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(datasets.SPLITS)}")
    if max_resolution is not None and (isinstance(max_resolution, bool) or int(max_resolution) < 1):
        raise DataError(f"max_resolution must be a positive number of pixels, got {max_resolution!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    classes = None
    folder = root
    if os.path.isdir(os.path.join(root, "train")):
        classes = list(datasets._class_files(os.path.join(root, "train")))
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DataError(f"{root} has train/ but no {split}/ folder")
    files = datasets._class_files(folder)
    classes = classes or list(files)
    if not set(files) <= set(classes):
        raise DataError(f"{folder}: class folders {sorted(set(files) - set(classes))} are not in the training split")
    paths = [p for c in files for p in files[c]]
    labels = np.asarray([classes.index(c) for c in files for _ in files[c]], np.int64)
    return ImageFiles(paths, labels, classes, split, root, None if max_resolution is None else int(max_resolution))


def compare(out, files, pick, decoded, min_psnr) -> float:
    """PSNR (dB) of the decoded samples `pick` of output `out` (an iterable: one image at a time is
    enough) against the folder's images, which a writer read back; DataError naming `out` when a
    size differs or the pixels are too far apart. One image pair is held at a time: the squared
    error is summed exactly (int64) as it goes, so 1000 large photos cost one photo's memory."""
    error, count = 0, 0
    for i, image in zip(pick, decoded):
        source = files.image(int(i))
        if image.shape != source.shape:
            raise DataError(f"{out}: sample {int(i)} reads back as {image.shape[1]}x{image.shape[0]}, "
                            f"its source {files.paths[int(i)]} is {source.shape[1]}x{source.shape[0]}")
        diff = image.astype(np.int32) - source
        error, count = error + int(np.dot(diff.ravel(), diff.ravel().astype(np.int64))), count + diff.size
    value = datasets.psnr_of(error, count)
    if value < min_psnr:
        raise DataError(f"{out}: pixels too far from the source images ({value:.1f} dB PSNR < {min_psnr})")
    return value
