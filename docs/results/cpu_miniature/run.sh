#!/usr/bin/env bash
# The whole evaluation study in miniature, on a CPU: proves the wiring (pretrain -> linear probe and
# kNN on CIFAR-100 -> baselines -> report), not the science. Needs CIFAR-10 and CIFAR-100 in
# $FASTSSL_DATA (or ~/.cache/fastssl/data). Every model uses the ImageNet stem (7x7/2 conv +
# max-pool), 16x cheaper on 32x32 images than the CIFAR stem of the real study.
#   FASTSSL_DATA=DIR bash docs/results/cpu_miniature/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/results/cpu_miniature
runs=runs/cpu_miniature
mkdir -p "$runs"
t() { local t0=$SECONDS; "$@"; echo "$(( SECONDS - t0 )) s: $*" >> "$runs/times.txt"; }
: > "$runs/times.txt"

# 1. SimCLR on the CIFAR-10 sample: 3 data fractions x 2 seeds, each cell probed on CIFAR-100.
t python -m fastssl.experiment "$here/miniature.toml" --device cpu --no-progress
# 2. Stand-in for the ImageNet-supervised weights (not available offline): an untrained network in
#    torchvision's resnet18 format, loaded and probed exactly as the real weights would be.
python -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet18().state_dict(), '$runs/torchvision_resnet18_untrained.pth')"
probe="--dataset cifar100 --subset 5000 --epochs 30 --device cpu --no-progress --overwrite"
for s in 0 1; do
  t python -m fastssl.linear --backbone "$runs/torchvision_resnet18_untrained.pth" --resize 64 $probe --seed $s --out "$runs/linear_tv_format_s$s"
  # 3. From scratch on CIFAR-100 (5,000 training images, 3 epochs).
  t python -m fastssl.supervised --dataset cifar100 --subset 5000 --stem imagenet --epochs 3 --batch-size 128 \
      --warmup-epochs 0 --knn-every 1 --device cpu --no-compile --no-progress --seed $s --out "$runs/scratch_s$s" --overwrite
done
# 4. The untrained control with the same stem as the SimCLR backbones.
t python -m fastssl.linear --backbone random --stem imagenet $probe --seed 0 --out "$runs/linear_random"
# 5. One report over everything.
t python -m fastssl.report "$runs" --out "$here/report" --overwrite
cp "$runs/times.txt" "$here/times.txt"
