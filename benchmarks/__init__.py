"""Benchmarks of fastssl: data-pipeline throughput, the NT-Xent loss and the training step.

    python -m benchmarks.throughput   # loader-only and end-to-end images/s per pipeline, MFU
    python -m benchmarks.nt_xent      # eager vs compiled loss: time and memory
    python -m benchmarks.step         # compile / channels_last / bf16 ablation of the step

Each writes <stem>.json, .csv, .md and .png into --out (see benchmarks/README.md).
"""
