"""Run-directory files: atomic checkpoints, and the exported torchvision-compatible backbone.

A run directory holds:
    config.json        the resolved config of the run
    metrics.jsonl      one JSON object per log interval / epoch
    last.pt, best.pt   full training state (model, optimiser, scheduler, RNG, epoch, config; after a
                       signal or --save-every-steps also `position`: epoch, step and running sums
                       inside the epoch being trained)
    .lock              held by the one process writing the directory (fastssl/lock.py)
    backbone.pt        plain `state_dict` of the backbone, torchvision `resnet18`/`resnet50` key
                       names (no `fc`: load into torchvision with strict=False or replace fc first)
    backbone.safetensors  the same tensors in the safetensors format (loads without unpickling)
    backbone.json      what the weights are: arch, stem, feature width, the training data's mean/std,
                       view side, method, dataset, commit, fastssl version (export_backbone's `meta`)

Every write goes to `<name>.tmp-<pid>` and is renamed into place; a dead writer's temporaries are
removed by the next run (remove_dead_temporaries). Models are always saved unwrapped: no `_orig_mod.` (torch.compile) or `module.` (DDP) prefixes.
"""

import io
import json
import os
import random

import numpy as np
import safetensors.torch
import torch

from pipelines import DataError
from pipelines.files import pid_alive, remove_dead_temporaries, sha256  # noqa: F401  (one implementation, shared)

from .models import BACKBONES, arch_of, load_torchvision_state_dict


def _tmp_name(path: str) -> str:
    # The pid in the name lets a later run tell a dead writer's leftover from a live one's file.
    return f"{path}.tmp-{os.getpid()}"


def atomic_write_bytes(path: str, data) -> None:
    """Write to a temporary name in the same directory, fsync, then rename: a crash never leaves a
    half-written file where a good one was. Disk full and other I/O errors become one DataError
    naming the file, with the temporary removed."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically (see atomic_write_bytes)."""
    # Serialised in memory first: torch.save into a file hides the OSError of a full disk behind a
    # RuntimeError from its zip writer.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile / DDP wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state(device=None) -> dict:
    """Host RNG states, plus the CUDA generator of `device` (this process's GPU) when it is one:
    under torchrun each rank saves and restores its own device, never the others'."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device=None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    device = torch.device(device) if device is not None else None
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index >= len(cuda):
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda, device)


def load(path: str, map_location="cpu") -> dict:
    """Load a file written by this module (or any torch.save'd dict, or a `.safetensors` file) with a
    one-line error on a missing, truncated or foreign file."""
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            obj = safetensors.torch.load_file(path, device=str(map_location))
        else:  # weights_only=False: our training checkpoints hold numpy/python RNG states.
            obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for truncated / non-torch files
        raise DataError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a state dict or fastssl checkpoint")
    return obj


def backbone_state_dict(path: str) -> tuple[dict, dict]:
    """Return (backbone state_dict, info) from any of: a run directory, a fastssl checkpoint
    (last.pt / best.pt), an exported backbone.pt or backbone.safetensors, or a torchvision-format
    ResNet-18 or ResNet-50 state_dict (e.g. ImageNet-supervised weights; .safetensors too). `info`
    says what was found (arch, stem, source: the file read)."""
    if os.path.isdir(path):
        for name in ("backbone.pt", "backbone.safetensors", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return backbone_state_dict(os.path.join(path, name))
        raise DataError(f"{path} holds neither backbone.pt, backbone.safetensors nor last.pt")
    obj = load(path)
    if "model" in obj and "config" in obj:  # a training checkpoint
        sd = {k[len("backbone.") :]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
        info = {
            "source": path,
            "kind": "checkpoint",
            "stem": obj["config"].get("stem", "cifar"),
            "epoch": obj.get("epoch"),
        }
    else:
        sd = obj.get("state_dict", obj)
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        conv1 = sd.get("conv1.weight")
        stem = "imagenet" if conv1 is not None and conv1.shape[-1] == 7 else "cifar"
        info = {"source": path, "kind": "state_dict", "stem": stem}
    if "conv1.weight" not in sd and not any(k.endswith("conv1.weight") for k in sd):
        raise DataError(f"{path} does not contain a ResNet backbone (no conv1.weight)")
    info["arch"] = arch_of(sd)
    if info["arch"] is None:
        raise DataError(f"{path} holds a ResNet of another depth; supported: {', '.join(BACKBONES)}")
    return sd, info


def export_backbone(backbone: torch.nn.Module, path: str, meta: dict | None = None) -> None:
    """Save the plain backbone state_dict (torchvision key names) to `path` (a .pt file). With
    `meta` (what the training run knows: data statistics, method, ...) also write the same tensors
    to <path without .pt>.safetensors and a description to <...>.json, each atomically."""
    # Pure tensors only, so torchvision's load_state_dict accepts the file as it is; the stem is
    # recovered from conv1's kernel size (3x3 CIFAR, 7x7 ImageNet).
    net = unwrap(backbone)
    sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_save(sd, path)
    if meta is None:
        return
    base = os.path.splitext(path)[0]
    # safetensors stores dense row-major tensors only; channels_last conv weights are repacked.
    data = safetensors.torch.save({k: v.contiguous() for k, v in sd.items()}, metadata={"format": "pt"})
    atomic_write_bytes(base + ".safetensors", data)
    # Written last: a backbone.json names weights already in place.
    about = {"arch": arch_of(sd), "stem": net.stem, "feature_dim": net.feature_dim, **meta}
    atomic_write_text(base + ".json", json.dumps(about, indent=2))


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics file. A last line cut off by a kill mid-append is dropped (it never
    finished); any other line that is not a JSON object means a damaged file: DataError."""
    if not os.path.lexists(path):
        return []
    if not os.path.isfile(path):
        raise DataError(f"{path} is not a regular file; move it away or start a new --out")
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            rec = None
        if not isinstance(rec, dict):
            if n == len(lines):  # no newline after it: an append that a kill interrupted
                break
            raise DataError(
                f"{path} line {n} is not a JSON record (damaged file); move it away or start a new --out"
            )
        records.append(rec)
    return records


TRAINING_KEYS = ("model", "optimizer", "schedule", "config", "epoch")


def load_training_state(path: str) -> dict:
    """A training checkpoint (last.pt), checked to hold what --resume needs; DataError otherwise."""
    state = load(path)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise DataError(f"{path} is not a fastssl training checkpoint (no {', '.join(missing)})")
    if not all(
        isinstance(state[k], dict) for k in ("model", "optimizer", "schedule", "config")
    ) or not isinstance(state["epoch"], int):
        raise DataError(
            f"{path} is a damaged training checkpoint (model/optimizer/schedule/config of the wrong type)"
        )
    if not state["optimizer"].get("param_groups") or not state["model"]:
        raise DataError(f"{path} holds no optimizer state or no weights; it cannot be resumed exactly")
    pos = state.get("position")
    if pos is not None and not (
        isinstance(pos, dict) and isinstance(pos.get("epoch"), int) and isinstance(pos.get("step"), int)
    ):
        raise DataError(f"{path} is a damaged training checkpoint (bad mid-epoch position)")
    return state


def load_network(path: str, stem: str | None = None, arch: str = "resnet18"):
    """(ResNet-18 or ResNet-50 backbone with fc = Identity, info) from anything
    `backbone_state_dict` accepts (the architecture is read from the weights), or path == "random"
    for a randomly initialised `arch` control (seed it with torch.manual_seed)."""
    if path == "random":
        if arch not in BACKBONES:
            raise DataError(f"unknown backbone {arch!r}; choose from {', '.join(BACKBONES)}")
        return BACKBONES[arch](stem=stem or "cifar"), {
            "source": "random",
            "kind": "random",
            "stem": stem or "cifar",
            "arch": arch,
        }
    sd, info = backbone_state_dict(path)
    model = BACKBONES[info["arch"]](stem=stem or info["stem"])
    load_into(model, sd, path)
    return model, info


def load_into(model: torch.nn.Module, sd: dict, source: str) -> None:
    """Copy a backbone state_dict (backbone_state_dict's) into `model`, one of BACKBONES or a
    torchvision ResNet with the same key names; DataError naming `source`, nothing loaded, when the
    weights do not fit (the other stem, missing or extra tensors)."""
    try:
        load_torchvision_state_dict(model, sd)
    except (ValueError, RuntimeError) as e:
        raise DataError(f"{source}: incompatible backbone weights: {str(e).splitlines()[0][:200]}") from None


def init_backbone(backbone: torch.nn.Module, path: str) -> dict:
    """--init: load the weights at `path` (anything backbone_state_dict accepts) into a new run's
    backbone. Returns what config.json records: the path given, the file read and its sha256."""
    sd, info = backbone_state_dict(path)
    want = arch_of(unwrap(backbone).state_dict())
    if info["arch"] != want:
        raise DataError(f"{info['source']} holds {info['arch']} weights; this run's backbone is {want}")
    load_into(backbone, sd, info["source"])
    return {"path": path, "file": os.path.abspath(info["source"]), "sha256": sha256(info["source"])}
