"""One entrant's training run in a process of its own (so that its memory peak is its own):
`python -m benchmarks.race.run_one ENTRANT SPEC_JSON OUT` writes OUT/record.json."""

import dataclasses
import json
import os
import resource
import sys
import time

import torch

from fastssl.checkpoint import atomic_write_text

from . import ENTRANTS
from .spec import RaceSpec, device_of, parse_entrant


def main(argv=None):
    entrant, spec_json, out = argv if argv is not None else sys.argv[1:]
    spec = RaceSpec.from_json(spec_json)
    name, knobs = parse_entrant(entrant)
    device = device_of(spec)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(spec.seed)
    t0 = time.perf_counter()
    record = ENTRANTS[name].train(spec, knobs, out, device)
    record.update(
        {
            "entrant": entrant,
            "seed": spec.seed,
            "spec": dataclasses.asdict(spec),
            "process_s": time.perf_counter() - t0,
            # this process's own peak (ru_maxrss is KiB on Linux); worker processes are sampled by the parent
            "peak_rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda"
            else None,
            "mean": list(record["mean"]),
            "std": list(record["std"]),
            # other work on the machine skews CPU timings: the load when the run ended says how busy it was
            "load_average_1min": os.getloadavg()[0],
        }
    )
    atomic_write_text(os.path.join(out, "record.json"), json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
