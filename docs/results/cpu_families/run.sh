#!/usr/bin/env bash
# The families study in miniature, on a CPU: checks the wiring (80/10/10 split -> autoencoder,
# SimCLR and Deep InfoMax pretrained on one backbone -> linear probe and kNN on the split's test
# part and on the official test split -> table -> report), not the science. Needs nothing but
# fastssl (the CIFAR-10 sample ships with it). Starts from an empty runs/families_cpu/.
#   bash docs/results/cpu_families/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/results/cpu_families
runs=runs/families_cpu
rm -rf "$runs"
t0=$SECONDS
python -m fastssl.experiment experiments/families_cpu.toml --no-progress
echo "$(( SECONDS - t0 )) s: python -m fastssl.experiment experiments/families_cpu.toml --no-progress" > "$here/times.txt"
# The untrained control on the same split, stem and probe: the floor the families are read against.
t0=$SECONDS
python -m fastssl.linear --backbone random --stem imagenet --dataset cifar10-sample --split 80/10/10 --epochs 10 \
    --batch-size 256 --lrs 0.1,1 --wds 0,1e-4 --device cpu --no-progress --out "$runs/linear_random"
echo "$(( SECONDS - t0 )) s: python -m fastssl.linear --backbone random (untrained control)" >> "$here/times.txt"
cp "$runs/results.md" "$runs/results.csv" "$here/"
python -m fastssl.report "$runs" --out "$here/report" --overwrite \
    --title "Families miniature on a CPU (wiring check, not a result)"
