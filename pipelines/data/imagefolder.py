"""Image folders: root/<class>/**/*.{jpg,jpeg,png}, optionally under root/train and root/test.

    from pipelines.data import imagefolder
    data = imagefolder.read_imagefolder("train", data_dir="photos", image_size=64)  # ArrayDataset, decoded
    files = imagefolder.scan("photos", "train", max_resolution=512)   # paths + labels, nothing decoded
    image = files.image(7)                                             # uint8 (h, w, 3), longer side <= 512
    files.mean, files.std                                              # after files.measure(workers=8)

Two ways to read one: `read_imagefolder` decodes every image into memory at one size (shorter side
resized, centre crop), for folders that fit; `ImageFiles` reads one file at a time, each image at its
own size, as the converters' streaming input. With root/train the split picks the subfolder (test
classes must be training classes). Every image is decoded with PIL (so CMYK, greyscale, PNG and
progressive JPEG all come out RGB); `ImageFiles` shrinks an image whose longer side exceeds
max_resolution with an area average (PIL BOX, the DALI writer's resizer) keeping its aspect ratio.
The writers re-encode these pixels as baseline JPEG, which every decoder (nvJPEG, libjpeg-turbo)
reads. An unreadable file is a DataError naming it.

Unlabelled photo collections (labels UNLABELLED, -1, and no classes; pretraining needs no labels):
a folder that holds images and no subfolders is read as one, since nothing in it could be a class
(it used to be an error, so no labelled folder changes meaning); a folder with subfolders keeps
reading them as classes, because folders named by date, camera or shard look exactly like class
folders. `unlabelled=True` (`--dataset images`) reads every image under the folder, subfolders
included, without labels. With root/train the split's folder is read the same way as train/.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import DataError, one_line
from ..files import data_root
from .arrays import UNLABELLED, ArrayDataset, channel_stats
from .splits import SPLITS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_imagefolder(split, data_dir=None, image_size=None, unlabelled=False) -> ArrayDataset:
    """root/<class>/*.{jpg,jpeg,png}; with root/train (and root/test) the split picks the subfolder,
    otherwise the split is ignored. mean/std are computed from the training images. Unlabelled
    folders: see the module docstring."""
    if (
        isinstance(image_size, bool)
        or image_size is not None
        and (not isinstance(image_size, int) or image_size < 1)
    ):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not (data_dir or os.environ.get("FASTSSL_DATA")):
        raise DataError("imagefolder needs a folder: pass --data-dir (or set $FASTSSL_DATA)")
    root = data_root(data_dir)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    if os.path.isdir(os.path.join(root, "train")):
        train_images, train_labels, classes = _read_folder(
            os.path.join(root, "train"), image_size, unlabelled
        )
        if split == "train":
            images, labels = train_images, train_labels
        else:
            if not os.path.isdir(os.path.join(root, split)):
                raise DataError(f"{root} has train/ but no {split}/ folder")
            images, labels, _ = _read_folder(
                os.path.join(root, split), image_size, unlabelled or not classes, classes
            )
    else:
        images, labels, classes = _read_folder(root, image_size, unlabelled)
        train_images = images
    mean, std = channel_stats(train_images)
    return ArrayDataset(images, labels, classes, "images" if unlabelled else "imagefolder", mean, std)


def folder_files(folder, unlabelled=False, classes=None):
    """(paths, labels, classes) of one folder: class subfolders (labels index `classes`, which
    defaults to the folder's own), or, for a folder of images without subfolders or with
    `unlabelled`, every image under it with label UNLABELLED and no classes."""
    if unlabelled or not _subfolders(folder) and image_paths(folder):
        paths = image_paths(folder)
        if not paths:
            raise DataError(f"{folder}: no images (.jpg, .jpeg, .png)")
        if classes:
            raise DataError(f"{folder}: images without class folders, but the training split has classes")
        return paths, np.full(len(paths), UNLABELLED, np.int64), []
    files = class_files(folder)
    classes = classes or list(files)
    if not set(files) <= set(classes):
        raise DataError(
            f"{folder}: class folders {sorted(set(files) - set(classes))} are not in the training split"
        )
    paths = [p for c in files for p in files[c]]
    labels = np.asarray([classes.index(c) for c in files for _ in files[c]], np.int64)
    return paths, labels, classes


def _subfolders(folder):
    return [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]


def image_paths(folder):
    """Every image under `folder`, subfolders included, in sorted walk order."""
    files = []
    for d, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        files += [
            os.path.join(d, n)
            for n in sorted(names)
            if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
        ]
    return files


def class_files(root):
    """{class name: sorted image paths} for root/<class>/**/*.{jpg,jpeg,png}, classes sorted by name."""
    classes = sorted(_subfolders(root))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/*.jpg|png) and no images")
    out = {}
    for c in classes:
        files = image_paths(os.path.join(root, c))
        if not files:
            raise DataError(f"{os.path.join(root, c)}: no images (.jpg, .jpeg, .png)")
        out[c] = files
    return out


def open_rgb(path, image_size):
    """One image file -> uint8 (H, W, 3); with image_size S: shorter side resized to S (bilinear), centre
    S x S crop."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes fully, so truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({one_line(e)})") from None
    if image_size is not None:  # torchvision's Resize(S) + CenterCrop(S), same sizes and rounding
        w, h = img.size
        short, long = min(w, h), max(w, h)
        long = int(image_size * long / short)
        w, h = (image_size, long) if w <= h else (long, image_size)
        img = img.resize((w, h), Image.BILINEAR)
        top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
        img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img)


def _read_folder(root, image_size, unlabelled=False, classes=None):
    paths, labels, classes = folder_files(root, unlabelled, classes)
    images = []
    for path in paths:
        img = open_rgb(path, image_size)
        if images and img.shape != images[0].shape:
            raise DataError(
                f"{path}: size {img.shape[1]}x{img.shape[0]} differs from the first image's "
                f"{images[0].shape[1]}x{images[0].shape[0]}; pass image_size to resize them all"
            )
        images.append(img)
    return np.stack(images), labels, classes


def resized_shape(height, width, max_resolution):
    """(h, w) after shrinking so that the longer side is at most max_resolution (None: unchanged)."""
    if max_resolution is None or max(height, width) <= max_resolution:
        return height, width
    scale = max_resolution / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


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
        img = open_rgb(self.paths[i], None)
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


def scan(root, split="train", max_resolution=None, unlabelled=False) -> ImageFiles:
    """The files of `split` under `root` (see the module docstring); DataError naming what is wrong."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if max_resolution is not None and (isinstance(max_resolution, bool) or int(max_resolution) < 1):
        raise DataError(f"max_resolution must be a positive number of pixels, got {max_resolution!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist")
    classes = None
    folder = root
    if os.path.isdir(os.path.join(root, "train")):
        _, _, classes = folder_files(os.path.join(root, "train"), unlabelled)
        unlabelled = unlabelled or not classes  # the split's folder is read as train/ is
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DataError(f"{root} has train/ but no {split}/ folder")
    paths, labels, classes = folder_files(folder, unlabelled, classes)
    resolution = None if max_resolution is None else int(max_resolution)
    name = "images" if unlabelled else "imagefolder"
    return ImageFiles(paths, labels, classes, split, root, resolution, name)
