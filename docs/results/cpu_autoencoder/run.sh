#!/usr/bin/env bash
# Plain vs denoising autoencoder in miniature, on a CPU: the same ResNet-18 (ImageNet stem, 16x
# cheaper on 32x32 images than the CIFAR stem) pretrained 4 epochs on the 2,000-image CIFAR-10
# sample shipped with fastssl, kNN (k=200, t=0.1) on its 1,000 test images after epochs 2 and 4.
# The untrained network with the same stem is the control.
#   bash docs/results/cpu_autoencoder/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/results/cpu_autoencoder
runs=runs/cpu_autoencoder
mkdir -p "$runs"
common="--dataset cifar10-sample --stem imagenet --method autoencoder --epochs 4 --batch-size 128
        --optimizer adamw --lr 0.004 --warmup-epochs 0 --knn-every 2 --seed 0
        --device cpu --no-compile --no-progress --overwrite"
for noise in 0 0.5; do
  python -m fastssl.pretrain $common --ae-noise $noise --out "$runs/ae_noise$noise"
  cp "$runs/ae_noise$noise/summary.json" "$here/summary_noise$noise.json"
  cp "$runs/ae_noise$noise/metrics.jsonl" "$here/metrics_noise$noise.jsonl"
done
python -m fastssl.knn --backbone random --stem imagenet --dataset cifar10-sample --device cpu > "$here/knn_untrained.json"
