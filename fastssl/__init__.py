"""fastssl: fast self-supervised pretraining. Commands: `python -m fastssl.<command> --help`
(pretrain, convert, knn, linear, supervised, experiment, report).

The pieces for a training loop of your own (docs/api.md, examples/custom_loop.py):

    import fastssl
    loader = fastssl.build("gpu", data, batch_size=512, device="cuda", seed=0)   # pipelines.build
    loss = fastssl.nt_xent(z1, z2, temperature=0.5)
    view = fastssl.simclr_view(images, fastssl.SimCLRRecipe(), generator, mean, std)

Each of them is imported on first use (`__getattr__` below): every `python -m fastssl.<command>`
imports this package first, and importing torch up front would cost each of them seconds, `--help`
included. Exporting one more name is one line in EXPORTS.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
EXPORTS = {
    "nt_xent": "fastssl.losses",
    "METHODS": "fastssl.methods",
    "load_backbone": "fastssl.weights",  # a trained backbone as a torchvision model
    "build": "pipelines",
    # batched augmentation (pipelines.augment): whole views, explicit per-sample parameters, single ops
    "SimCLRRecipe": "pipelines.augment",
    "simclr_view": "pipelines.augment",
    "crop_flip_view": "pipelines.augment",
    "eval_view": "pipelines.augment",
    "AugParams": "pipelines.augment",
    "sample_params": "pipelines.augment",
    "apply_params": "pipelines.augment",
    "resized_crop": "pipelines.augment",
    "hflip": "pipelines.augment",
    "reflect_crop": "pipelines.augment",
    "color_jitter": "pipelines.augment",
    "grayscale": "pipelines.augment",
    "gaussian_blur": "pipelines.augment",
    "normalize": "pipelines.augment",
}

__all__ = list(EXPORTS)


def __getattr__(name):
    if name not in EXPORTS:
        raise AttributeError(f"module 'fastssl' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value  # later look-ups find it without calling this function
    return value


def __dir__():
    return sorted({*globals(), *EXPORTS})
